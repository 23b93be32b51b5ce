//! The configuration compiled into what runs: the route table and, per
//! target, its mapping and connector. `amtsbote check` builds exactly this
//! and reports every problem it finds at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use amtsbote_connector::Connector;
use amtsbote_connector_http::HttpConnector;

use crate::config::{Config, ConnectorConfig};
use crate::domain::TargetName;
use crate::mapping::Mapping;
use crate::retry::RetryPolicy;
use crate::routing::RouteTable;

pub struct Target {
    pub name: TargetName,
    pub mapping: Arc<Mapping>,
    pub connector: Arc<dyn Connector>,
    pub concurrency: u16,
    pub retry: RetryPolicy,
}

pub struct Pipeline {
    pub routes: RouteTable,
    pub targets: BTreeMap<TargetName, Arc<Target>>,
}

impl Pipeline {
    /// Compiles routes, mappings and connectors; on failure returns every
    /// problem, each naming the file or target it is about.
    pub fn build(config: &Config) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let routes = RouteTable::new(&config.routes)
            .map_err(|e| problems.push(format!("routes: {e}")))
            .unwrap_or_default();
        for (index, route) in config.routes.iter().enumerate() {
            for target in &route.targets {
                if !config.targets.contains_key(target) {
                    problems.push(format!("routes: route {index}: target {target} is not defined under targets"));
                }
            }
        }
        let mut mappings: BTreeMap<&std::path::Path, Arc<Mapping>> = BTreeMap::new();
        let mut targets = BTreeMap::new();
        for (name, target) in &config.targets {
            if target.concurrency == 0 {
                problems.push(format!("targets: {name}: concurrency must be at least 1"));
            }
            problems.extend(target.retry.problems().into_iter().map(|p| format!("targets: {name}: {p}")));
            let mapping = match mappings.get(target.mapping.as_path()) {
                Some(m) => Some(m.clone()),
                None => {
                    let path = config.mappings.join(&target.mapping);
                    match Mapping::load(&path, &path.display().to_string()) {
                        Ok(m) => {
                            let m = Arc::new(m);
                            mappings.insert(target.mapping.as_path(), m.clone());
                            Some(m)
                        }
                        Err(e) => {
                            problems.push(format!("targets: {name}: {e}"));
                            None
                        }
                    }
                }
            };
            let connector: Option<Arc<dyn Connector>> = match &target.connector {
                ConnectorConfig::Http(http) => match HttpConnector::new(http) {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        problems.push(format!("targets: {name}: connector http: {e}"));
                        None
                    }
                },
            };
            if let (Some(mapping), Some(connector)) = (mapping, connector) {
                targets.insert(
                    name.clone(),
                    Arc::new(Target { name: name.clone(), mapping, connector, concurrency: target.concurrency.max(1), retry: target.retry.clone() }),
                );
            }
        }
        if problems.is_empty() { Ok(Self { routes, targets }) } else { Err(problems) }
    }
}
