//! The configuration compiled into what runs: the route table, per target
//! its mapping, connector and tenant's regions, and who may send and
//! operate ([`crate::access`]). `amtsbote check` builds exactly this and
//! reports every problem it finds at once; a reload swaps it whole, so it
//! also rotates keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use amtsbote_connector::{Connector, Context};

use crate::config::Config;
use crate::access::{Operators, Senders, Tenancy};
use crate::domain::{ArsPrefix, Region, TargetName};
use crate::mapping::{Mapping, MappingSource, PackageFormat};
use crate::retry::RetryPolicy;
use crate::routing::RouteTable;
use crate::seal::Sealer;
use crate::store::Store;

pub struct Target {
    pub name: TargetName,
    pub mapping: Arc<Mapping>,
    pub connector: Arc<dyn Connector>,
    pub concurrency: u16,
    pub retry: RetryPolicy,
    /// The regions of the target's tenant: it receives nothing else.
    /// `None` without tenants.
    pub regions: Option<Vec<ArsPrefix>>,
}

impl Target {
    /// Whether the target may receive a submission of `region` (see
    /// [`crate::access::Tenancy`]); a region that is not even an ARS or
    /// AGS is refused as well.
    pub fn admits(&self, region: &str) -> bool {
        match &self.regions {
            None => true,
            Some(prefixes) => Region::parse(region).is_ok_and(|region| prefixes.iter().any(|p| p.covers(&region))),
        }
    }
}

/// Every problem a configuration has, each naming the setting, file or
/// target it is about: `check` prints them all, `serve` refuses to start
/// with them, a reload keeps the running configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("configuration problems:\n  {}", .0.join("\n  "))]
pub struct ConfigProblems(pub Vec<String>);

impl std::ops::Deref for ConfigProblems {
    type Target = Vec<String>;

    fn deref(&self) -> &Vec<String> {
        &self.0
    }
}

impl From<Vec<String>> for ConfigProblems {
    fn from(problems: Vec<String>) -> Self {
        Self(problems)
    }
}

impl IntoIterator for ConfigProblems {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

pub struct Pipeline {
    pub routes: RouteTable,
    pub targets: BTreeMap<TargetName, Arc<Target>>,
    pub senders: Senders,
    pub operators: Operators,
    /// Seals what intake publishes, opens what workers take.
    pub sealer: Arc<Sealer>,
}

/// The pipeline in use; a reload swaps it whole, so that a submission is
/// routed and a delivery mapped by one consistent configuration.
pub type SharedPipeline = Arc<arc_swap::ArcSwap<Pipeline>>;

impl Pipeline {
    /// Compiles routes, mappings and connectors; on failure returns every
    /// problem, each naming the file or target it is about.
    pub fn build(config: &Config) -> Result<Self, ConfigProblems> {
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
        if let Some(settings) = &config.fit_connect {
            problems.extend(crate::fit_connect::settings::names_taken_by_senders(settings, config.senders.iter().map(|s| &s.name)));
        }
        if config.http.max_connections < crate::http::connections::MIN_CONNECTIONS {
            problems.push(format!("http.max_connections must be at least {}", crate::http::connections::MIN_CONNECTIONS));
        }
        if config.http.header_timeout.is_zero() {
            problems.push("http.header_timeout must be longer than 0s".into());
        }
        if config.http.intake_memory_mib.saturating_mul(1 << 20) < config.http.max_body_bytes {
            problems.push(format!(
                "http.intake_memory_mib: {} MiB cannot hold one body of http.max_body_bytes ({} bytes)",
                config.http.intake_memory_mib, config.http.max_body_bytes
            ));
        }
        if config.blobs.delivery_memory_mib == 0 {
            problems.push("blobs.delivery_memory_mib must be at least 1".into());
        }
        let senders = Senders::new(&config.senders, config.http.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some())).map_err(|p| problems.extend(p)).unwrap_or_default();
        let tenancy = Tenancy::new(
            &config.tenants,
            config.targets.iter().map(|(name, target)| (name, target.tenant.as_ref())),
            &config.routes,
            &config.operators,
        ).map_err(|p| problems.extend(p)).unwrap_or_default();
        let operators = Operators::new(&config.operators, &tenancy).map_err(|p| problems.extend(p)).unwrap_or_default();
        let sealer = Sealer::new(config.encryption.as_ref(), &Context::new(&config.base_dir))
            .map(Arc::new)
            .map_err(|p| problems.extend(p))
            .unwrap_or_default();
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
                    match Mapping::load(&config.mappings, &target.mapping) {
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
            let kind = target.connector.kind();
            let connector: Option<Arc<dyn Connector>> = if !target.connector.carries_folders()
                && mapping.as_ref().and_then(|m| m.package_format()) == Some(PackageFormat::Folder)
            {
                problems.push(format!(
                    "targets: {name}: the {kind} connector sends one document, but the mapping packs a folder; use `format: zip`"
                ));
                None
            } else {
                target
                    .connector
                    .build(&Context::new(&config.base_dir))
                    .map_err(|e| problems.push(format!("targets: {name}: connector {kind}: {e}")))
                    .ok()
            };
            if let (Some(mapping), Some(connector)) = (mapping, connector) {
                targets.insert(
                    name.clone(),
                    Arc::new(Target {
                        name: name.clone(),
                        mapping,
                        connector,
                        concurrency: target.concurrency.max(1),
                        retry: target.retry.clone(),
                        regions: tenancy.regions_of(name),
                    }),
                );
            }
        }
        if problems.is_empty() { Ok(Self { routes, targets, senders, operators, sealer }) } else { Err(ConfigProblems(problems)) }
    }
}

/// What `amtsbote check` verifies beyond [`Pipeline::build`]: every
/// mapping file under the mappings directory that no target uses (those
/// [`Pipeline::build`] loads) compiles too, with its code lists and
/// schemas.
pub fn check_unused_mappings(config: &Config) -> Vec<String> {
    let root = &config.mappings;
    let files = match crate::mapping::fixtures::mapping_files(root) {
        Ok(files) => files,
        Err(e) => return vec![format!("mappings: cannot read {}: {e}", root.display())],
    };
    let used: std::collections::HashSet<_> = config.targets.values().map(|t| root.join(&t.mapping)).collect();
    files
        .iter()
        .filter(|file| !used.contains(*file))
        .filter_map(|file| {
            let relative = file.strip_prefix(root).unwrap_or(file);
            Mapping::load(root, relative).err().map(|e| format!("mappings: {e}"))
        })
        .collect()
}

/// Every mapping version deliveries may still need: the current ones and,
/// from the store, those that deliveries in flight started with.
pub struct MappingVersions {
    store: Arc<dyn Store>,
    compiled: Mutex<HashMap<String, Arc<Mapping>>>,
}

impl MappingVersions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, compiled: Mutex::new(HashMap::new()) }
    }

    /// Keeps the pipeline's mappings (in the store, too) under their
    /// versions.
    pub async fn keep(&self, pipeline: &Pipeline) -> Result<(), crate::store::StoreError> {
        for target in pipeline.targets.values() {
            let mapping = &target.mapping;
            // Targets share mappings, and a reload keeps most versions.
            if self.compiled.lock().expect("versions lock").contains_key(mapping.version()) {
                continue;
            }
            let source = serde_json::to_string(mapping.source()).expect("a mapping source serializes");
            self.store.keep_mapping_version(mapping.version(), mapping.file(), &source).await?;
            self.compiled.lock().expect("versions lock").insert(mapping.version().to_owned(), mapping.clone());
        }
        Ok(())
    }

    /// The mapping of `version`, compiled from the kept source if need be;
    /// `None` if it is not known (or no longer compiles).
    pub async fn get(&self, version: &str) -> Option<Arc<Mapping>> {
        if let Some(m) = self.compiled.lock().expect("versions lock").get(version) {
            return Some(m.clone());
        }
        let source = self.store.mapping_version(version).await.ok()??;
        let source: MappingSource = serde_json::from_str(&source).ok()?;
        let mapping = Arc::new(Mapping::compile(source).ok()?);
        self.compiled.lock().expect("versions lock").insert(version.to_owned(), mapping.clone());
        Some(mapping)
    }
}
