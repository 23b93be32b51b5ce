//! Routes: which targets receive a submission, by service key and region.
//!
//! The longest ARS prefix wins, so a Kreis can serve all its municipalities
//! while one municipality overrides it. The broker does the fan-out: intake
//! publishes once to a topic exchange with a routing key that lists the
//! chosen targets (`gewerbe-koeln.dms-koeln`), and each target's queue is
//! bound with `#.<target>.#`. The bindings depend only on the targets, never
//! on the routes, so editing routes can not leave a stale binding behind
//! that would deliver to a target no route names any more.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::domain::{ArsPrefix, Region, ServiceKey, TargetName};
use crate::mapping::schema::SchemaError;

/// One line of the routing table.
///
/// ```yaml
/// routes:
///   - service: "99050012104000"   # LeiKa key
///     region: "05315"             # ARS prefix; "" covers every region
///     targets: [gewerbe-koeln, dms-koeln]
///     schema: schemas/gewerbeanmeldung.schema.json   # optional
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// LeiKa service key of the submissions this route takes.
    pub service: ServiceKey,
    /// ARS prefix (0 to 12 digits) of the regions this route covers.
    pub region: ArsPrefix,
    /// Names of the targets that each receive the submission.
    pub targets: Vec<TargetName>,
    /// A JSON Schema (e.g. the FIM data schema of the service) the form
    /// data must satisfy; intake answers 422 with the failing fields
    /// otherwise. Relative to the config file; `$ref`s to other files or
    /// URLs are refused.
    #[serde(default)]
    pub schema: Option<PathBuf>,
}

/// The targets a submission goes to, and the routing key that tells the
/// broker so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub region: ArsPrefix,
    pub targets: Vec<TargetName>,
    pub routing_key: String,
    pub schema: Option<InputSchema>,
}

/// A compiled JSON Schema for incoming form data.
#[derive(Clone)]
pub struct InputSchema {
    pub path: PathBuf,
    pub validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for InputSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InputSchema({})", self.path.display())
    }
}

impl PartialEq for InputSchema {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}
impl Eq for InputSchema {}

impl InputSchema {
    pub fn load(path: &std::path::Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|e| SchemaError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        let validator = crate::mapping::schema::json_schema(path, &text)?;
        Ok(Self { path: path.to_owned(), validator: Arc::new(validator) })
    }

    /// JSON pointers (below the form data) and value-free messages of the
    /// first problems; empty if the data is valid.
    pub fn problems(&self, data: &serde_json::Value) -> Vec<(String, String)> {
        crate::mapping::schema::json_problems(&self.validator, data)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("route {index}: service {service} and region {region:?} are already routed by route {first}")]
    Duplicate { index: usize, first: usize, service: String, region: String },
    #[error("route {index}: names no targets")]
    NoTargets { index: usize },
    #[error("route {index}: names target {target} twice")]
    RepeatedTarget { index: usize, target: String },
    #[error("route {index}: too many targets for one routing key ({len} bytes, at most 255)")]
    KeyTooLong { index: usize, len: usize },
    #[error("route {index}: {source}")]
    Schema { index: usize, source: SchemaError },
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// Per service, its routes ordered by prefix length, longest first.
    by_service: HashMap<ServiceKey, Vec<Route>>,
}

/// The binding pattern that makes a target's queue receive every routing
/// key that lists the target.
pub fn binding_pattern(target: &TargetName) -> String {
    format!("#.{target}.#")
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig]) -> Result<Self, RoutingError> {
        let mut table = Self::default();
        let mut seen: HashMap<(&ServiceKey, &ArsPrefix), usize> = HashMap::new();
        for (index, route) in routes.iter().enumerate() {
            if let Some(first) = seen.insert((&route.service, &route.region), index) {
                return Err(RoutingError::Duplicate {
                    index,
                    first,
                    service: route.service.as_str().into(),
                    region: route.region.as_str().into(),
                });
            }
            if route.targets.is_empty() {
                return Err(RoutingError::NoTargets { index });
            }
            let mut targets = route.targets.clone();
            targets.sort();
            if let Some(pair) = targets.windows(2).find(|w| w[0] == w[1]) {
                return Err(RoutingError::RepeatedTarget { index, target: pair[0].to_string() });
            }
            let routing_key = targets.iter().map(TargetName::as_str).collect::<Vec<_>>().join(".");
            if routing_key.len() > 255 {
                return Err(RoutingError::KeyTooLong { index, len: routing_key.len() });
            }
            let schema = route
                .schema
                .as_deref()
                .map(InputSchema::load)
                .transpose()
                .map_err(|source| RoutingError::Schema { index, source })?;
            table.by_service.entry(route.service.clone()).or_default().push(Route {
                region: route.region.clone(),
                targets: route.targets.clone(),
                routing_key,
                schema,
            });
        }
        for routes in table.by_service.values_mut() {
            routes.sort_by_key(|r| std::cmp::Reverse(r.region.len()));
        }
        Ok(table)
    }

    /// The route with the longest prefix that covers `region`, if any.
    pub fn resolve(&self, service: &ServiceKey, region: &Region) -> Option<&Route> {
        self.by_service.get(service)?.iter().find(|r| r.region.covers(region))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(service: &str, region: &str, targets: &[&str]) -> RouteConfig {
        RouteConfig {
            service: ServiceKey::parse(service).unwrap(),
            region: ArsPrefix::parse(region).unwrap(),
            targets: targets.iter().map(|t| TargetName::parse(t).unwrap()).collect(),
            schema: None,
        }
    }

    const GEWERBE: &str = "99050012104000";

    #[test]
    fn longest_prefix_wins() {
        let table = RouteTable::new(&[
            route(GEWERBE, "", &["land"]),
            route(GEWERBE, "05315", &["koeln-fv", "koeln-dms"]),
            route(GEWERBE, "053150000000", &["koeln-special"]),
            route(GEWERBE, "05", &["nrw"]),
        ])
        .unwrap();
        let s = ServiceKey::parse(GEWERBE).unwrap();
        let at = |r: &str| table.resolve(&s, &Region::parse(r).unwrap()).unwrap().routing_key.clone();
        assert_eq!(at("053150000000"), "koeln-special");
        assert_eq!(at("053150000001"), "koeln-dms.koeln-fv");
        assert_eq!(at("051110000000"), "nrw");
        assert_eq!(at("091620000000"), "land");
        assert_eq!(at("05315000"), "koeln-special", "AGS of Köln");
    }

    #[test]
    fn unrouted_service_has_no_route() {
        let table = RouteTable::new(&[route(GEWERBE, "05", &["nrw"])]).unwrap();
        let dogs = ServiceKey::parse("99102013104000").unwrap();
        assert!(table.resolve(&dogs, &Region::parse("053150000000").unwrap()).is_none());
        let s = ServiceKey::parse(GEWERBE).unwrap();
        assert!(table.resolve(&s, &Region::parse("091620000000").unwrap()).is_none());
    }

    #[test]
    fn rejects_ambiguous_tables() {
        let dup = RouteTable::new(&[route(GEWERBE, "05", &["a"]), route(GEWERBE, "05", &["b"])]);
        assert!(matches!(dup, Err(RoutingError::Duplicate { index: 1, first: 0, .. })));
        let twice = RouteTable::new(&[route(GEWERBE, "05", &["a", "a"])]);
        assert!(matches!(twice, Err(RoutingError::RepeatedTarget { .. })));
        assert!(matches!(RouteTable::new(&[route(GEWERBE, "05", &[])]), Err(RoutingError::NoTargets { .. })));
    }

    #[test]
    fn binding_pattern_matches_every_key_naming_the_target() {
        // The topic exchange semantics this relies on: `#` matches zero or
        // more words, so `#.b.#` matches `b`, `a.b`, `b.c` and `a.b.c`.
        assert_eq!(binding_pattern(&TargetName::parse("b").unwrap()), "#.b.#");
    }
}
