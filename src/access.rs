//! Who may do what.
//!
//! * **Senders** (online services) hand in submissions with an API key, and
//!   only for the regions (ARS prefixes) and services (LeiKa keys) they are
//!   allowed ([`Senders`]). A sender reads back only its own submissions.
//! * **Tenants** (municipalities, Kreise, a Land) own regions; every target
//!   of a tenant receives only submissions of the tenant's regions
//!   ([`Tenancy`]): checked when the configuration is loaded (no route may
//!   send another tenant's region to it) and again before each delivery.
//! * **Operators** see and act within their tenants ([`Scope`]); a
//!   [`Role::Viewer`] looks, a [`Role::Operator`] may also replay and
//!   discard.
//!
//! Keys and tokens are configured as SHA-256 hashes only ([`KeyHash`]),
//! so the configuration holds nothing that opens the door. They are
//! random 256-bit values (`amtsbote keys new` makes one), for which a plain
//! hash is as good as a slow one: there is nothing to guess.

use crate::routing::RouteConfig;
use crate::store::SubmissionStatus;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

use crate::domain::{ArsPrefix, Region, SenderName, ServiceKey, TargetName, TenantName};
use crate::http::problem::Problem;
use crate::submission::FieldError;
use crate::pem::CertificateFingerprint;

/// The SHA-256 of a key or token, configured as 64 hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.trim().as_bytes()).into())
    }

    pub fn parse(hex: &str) -> Option<Self> {
        crate::domain::unhex32(hex).map(Self)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", crate::domain::hex(&self.0[..4]))
    }
}

crate::domain::text_schema!(KeyHash, "^\\s*[0-9a-fA-F]{64}\\s*$");

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| {
            serde::de::Error::custom("must be the SHA-256 of a key as 64 hex digits (printf %s \"$KEY\" | sha256sum)")
        })
    }
}

/// 256 random bits from the operating system, as 64 hex digits: keys,
/// tokens, session ids.
pub fn random_hex32() -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system's random source works");
    crate::domain::hex(&bytes)
}

/// A fresh random key, as `amtsbote keys new` prints it, with its hash.
pub fn new_key() -> (String, String) {
    let key = random_hex32();
    let hash = crate::domain::hex(&KeyHash::of(&key).0);
    (key, hash)
}

/// Equal bytes, compared in full whatever differs first, so that the time
/// taken tells nothing about how much of a secret was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Holders of keys: finds whose a presented key is, comparing it with every
/// hash so that the time taken tells nothing about which one matched.
#[derive(Debug)]
pub struct KeyRing<T> {
    entries: Vec<(KeyHash, T)>,
}

impl<T> Default for KeyRing<T> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<T> KeyRing<T> {
    pub fn insert(&mut self, hash: KeyHash, holder: T) {
        self.entries.push((hash, holder));
    }

    pub fn find(&self, presented: &str) -> Option<&T> {
        let presented = KeyHash::of(presented);
        let mut found = None;
        for (hash, holder) in &self.entries {
            if constant_time_eq(&hash.0, &presented.0) {
                found = Some(holder);
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find_hash(&self, hash: &KeyHash) -> bool {
        self.entries.iter().any(|(h, _)| h == hash)
    }
}

/// The bearer token of a request, if it sent one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// 401 with the challenge RFC 6750 asks for.
pub fn unauthorized(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail).challenge("Bearer")
}

/// An online service allowed to hand in submissions.
#[derive(Debug)]
pub struct Sender {
    pub name: SenderName,
    regions: Vec<ArsPrefix>,
    /// `None`: every service.
    services: Option<BTreeSet<ServiceKey>>,
}

impl Sender {
    /// The fields of a submission this sender may not send, with why.
    pub fn refusals(&self, service: &ServiceKey, region: &Region) -> Vec<FieldError> {
        let mut refused = Vec::new();
        if self.services.as_ref().is_some_and(|allowed| !allowed.contains(service)) {
            refused.push(FieldError::new("#/service", format!("sender {} may not submit this service", self.name)));
        }
        if !self.regions.iter().any(|prefix| prefix.covers(region)) {
            let detail = match region {
                Region::Ags(_) if self.regions.iter().any(|p| (6..12).contains(&p.len())) => format!(
                    "sender {} may not submit for this region (an AGS does not tell the Gemeindeverband: send the 12-digit ARS)",
                    self.name
                ),
                _ => format!("sender {} may not submit for this region", self.name),
            };
            refused.push(FieldError::new("#/region", detail));
        }
        refused
    }
}

/// The configured senders, by API key and by client certificate.
#[derive(Debug, Default)]
pub struct Senders {
    ring: KeyRing<Arc<Sender>>,
    certificates: BTreeMap<CertificateFingerprint, Arc<Sender>>,
}

impl Senders {
    /// `client_ca`: whether `http.tls.client_ca` is set, without which no
    /// client certificate reaches intake.
    pub fn new(configs: &[SenderConfig], client_ca: bool) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut ring = KeyRing::default();
        let mut certificates = BTreeMap::new();
        let mut names = BTreeSet::new();
        for config in configs {
            if !names.insert(&config.name) {
                problems.push(format!("senders: {} is named twice", config.name));
            }
            if config.api_keys_sha256.is_empty() && config.client_certificates_sha256.is_empty() {
                problems.push(format!("senders: {} has neither api_keys_sha256 nor client_certificates_sha256", config.name));
            }
            if !config.client_certificates_sha256.is_empty() && !client_ca {
                problems.push(format!(
                    "senders: {} has client_certificates_sha256, but without http.tls.client_ca no client can present a certificate",
                    config.name
                ));
            }
            if config.regions.is_empty() {
                problems.push(format!("senders: {} has no regions (\"\" allows every region)", config.name));
            }
            let sender = Arc::new(Sender {
                name: config.name.clone(),
                regions: config.regions.clone(),
                services: config.services.as_ref().map(|s| s.iter().cloned().collect()),
            });
            for hash in &config.api_keys_sha256 {
                // One key, two senders: whose rights would it carry?
                if ring.find_hash(hash) {
                    problems.push(format!("senders: {}: an API key hash is configured twice", config.name));
                }
                ring.insert(hash.clone(), sender.clone());
            }
            for fingerprint in &config.client_certificates_sha256 {
                if certificates.insert(fingerprint.clone(), sender.clone()).is_some() {
                    problems.push(format!("senders: {}: client certificate {fingerprint} is configured twice", config.name));
                }
            }
        }
        if problems.is_empty() { Ok(Self { ring, certificates }) } else { Err(problems) }
    }

    /// The sender a request authenticates as, by its API key or by the
    /// client certificate of its connection (verified in the handshake).
    /// A request with both must name the same sender with each: of two
    /// identities, whose rights would apply?
    pub fn authenticate(&self, headers: &HeaderMap, certificate: Option<&CertificateFingerprint>) -> Result<Arc<Sender>, Problem> {
        if self.ring.is_empty() && self.certificates.is_empty() {
            return Err(unauthorized("no senders are configured (senders: in the config file), so intake takes nothing"));
        }
        let by_key = match bearer(headers) {
            Some(token) => Some(self.ring.find(token).ok_or_else(|| unauthorized("unknown API key"))?),
            None => None,
        };
        let by_certificate = certificate.and_then(|fingerprint| self.certificates.get(fingerprint));
        match (by_key, by_certificate) {
            (Some(key), Some(certificate)) if !Arc::ptr_eq(key, certificate) => Err(unauthorized(&format!(
                "the API key is {}'s, the client certificate {}'s: send one credential",
                key.name, certificate.name
            ))),
            (Some(sender), _) | (None, Some(sender)) => Ok(sender.clone()),
            (None, None) => Err(match certificate {
                Some(fingerprint) => unauthorized(&format!(
                    "the client certificate {fingerprint} is not registered for any sender (client_certificates_sha256)"
                )),
                None => unauthorized("send Authorization: Bearer <API key>, or a registered client certificate"),
            }),
        }
    }
}

/// Which tenant owns which regions and targets.
#[derive(Debug, Default)]
pub struct Tenancy {
    regions: BTreeMap<TenantName, Vec<ArsPrefix>>,
    owner: BTreeMap<TargetName, TenantName>,
}

impl Tenancy {
    /// Checks the tenants against the targets (each with the tenant it
    /// names), the routes and the operators; returns every problem.
    pub fn new<'a>(
        tenants: &BTreeMap<TenantName, TenantConfig>,
        targets: impl IntoIterator<Item = (&'a TargetName, Option<&'a TenantName>)>,
        routes: &[RouteConfig],
        operators: &[OperatorConfig],
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let regions: BTreeMap<TenantName, Vec<ArsPrefix>> =
            tenants.iter().map(|(name, tenant)| (name.clone(), tenant.regions.clone())).collect();
        for (name, tenant) in tenants {
            if tenant.regions.is_empty() {
                problems.push(format!("tenants: {name} has no regions"));
            }
        }
        let mut owner = BTreeMap::new();
        for (target, tenant) in targets {
            match tenant {
                Some(tenant) if !regions.contains_key(tenant) => {
                    problems.push(format!("targets: {target}: tenant {tenant} is not defined under tenants"));
                }
                Some(tenant) => {
                    owner.insert(target.clone(), tenant.clone());
                }
                None if !regions.is_empty() => {
                    problems.push(format!("targets: {target}: name its tenant (tenants are defined, so every target belongs to one)"));
                }
                None => {}
            }
        }
        let tenancy = Self { regions, owner };
        for (index, route) in routes.iter().enumerate() {
            for target in &route.targets {
                if let Some(tenant) = tenancy.owner.get(target)
                    && !tenancy.regions[tenant].iter().any(|outer| route.region.within(outer))
                {
                    problems.push(format!(
                        "routes: route {index} (service {}, region {:?}) sends to {target} of tenant {tenant}, whose regions ({}) do not include {:?}",
                        route.service.as_str(),
                        route.region.as_str(),
                        tenancy.regions[tenant].iter().map(|p| format!("{:?}", p.as_str())).collect::<Vec<_>>().join(", "),
                        route.region.as_str(),
                    ));
                }
            }
        }
        for operator in operators {
            for tenant in operator.tenants.iter().flatten() {
                if !tenancy.regions.contains_key(tenant) {
                    problems.push(format!("operators: {}: tenant {tenant} is not defined under tenants", operator.name));
                }
            }
        }
        if problems.is_empty() { Ok(tenancy) } else { Err(problems) }
    }

    /// The regions a target may receive submissions of; `None` if it
    /// belongs to no tenant (a configuration without tenants).
    pub fn regions_of(&self, target: &TargetName) -> Option<Vec<ArsPrefix>> {
        self.owner.get(target).map(|tenant| self.regions[tenant].clone())
    }

    /// What an operator of these tenants sees (`None`: every tenant).
    pub fn scope(&self, tenants: Option<&[TenantName]>) -> Scope {
        match tenants {
            None => Scope::Everything,
            Some(tenants) => Scope::Targets(
                self.owner.iter().filter(|(_, owner)| tenants.contains(owner)).map(|(target, _)| target.clone()).collect(),
            ),
        }
    }
}

/// The targets an operator sees, and through them the submissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Everything,
    Targets(BTreeSet<TargetName>),
}

impl Scope {
    pub fn sees(&self, target: &TargetName) -> bool {
        match self {
            Scope::Everything => true,
            Scope::Targets(targets) => targets.contains(target),
        }
    }

    /// Whether a target given by name (as stored in the ledger) is seen.
    pub fn sees_name(&self, target: &str) -> bool {
        match self {
            Scope::Everything => true,
            Scope::Targets(targets) => targets.iter().any(|t| t.as_str() == target),
        }
    }

    /// The targets seen, if not all.
    pub fn targets(&self) -> Option<&BTreeSet<TargetName>> {
        match self {
            Scope::Everything => None,
            Scope::Targets(targets) => Some(targets),
        }
    }
}

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees the dashboard, the ledger and parked deliveries.
    Viewer,
    /// Also replays and discards parked deliveries.
    Operator,
}

/// A signed-in operator.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The name recorded with every replay and discard.
    pub name: String,
    pub role: Role,
    pub scope: Scope,
}

impl Operator {
    /// Refuses a viewer an action that changes something.
    pub fn may_act(&self) -> Result<(), Problem> {
        match self.role {
            Role::Operator => Ok(()),
            Role::Viewer => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                format!("operator {} is a viewer: replay and discard need the operator role", self.name),
            )),
        }
    }
}

/// The configured operators, by token.
#[derive(Debug, Default)]
pub struct Operators {
    ring: KeyRing<Operator>,
}

impl Operators {
    pub fn new(configs: &[OperatorConfig], tenancy: &Tenancy) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut ring = KeyRing::default();
        for config in configs {
            // One token, two operators: which role would it get?
            if ring.find_hash(&config.token_sha256) {
                problems.push(format!("operators: {}: this token hash is configured for another operator too", config.name));
            }
            let operator =
                Operator { name: config.name.clone(), role: config.role, scope: tenancy.scope(config.tenants.as_deref()) };
            ring.insert(config.token_sha256.clone(), operator);
        }
        if problems.is_empty() { Ok(Self { ring }) } else { Err(problems) }
    }

    pub fn find(&self, token: &str) -> Option<&Operator> {
        self.ring.find(token)
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The operator a request authenticates as.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Operator, Problem> {
        if self.is_empty() {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "operator-api-disabled",
                "Operator API Disabled",
                "no operators are configured (operators: in the config file)",
            ));
        }
        let token = bearer(headers).ok_or_else(|| unauthorized("send Authorization: Bearer <operator token>"))?;
        self.find(token).cloned().ok_or_else(|| unauthorized("unknown operator token"))
    }
}

/// An operator of the HTTP API and the dashboard, identified by a bearer
/// token of which only the SHA-256 is configured: `amtsbote keys new`
/// makes a token and prints its hash.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// The name recorded with every replay and discard.
    pub name: String,
    /// Hex SHA-256 of the operator's token.
    pub token_sha256: KeyHash,
    /// `viewer` looks; `operator` may also replay and discard.
    pub role: Role,
    /// The tenants whose targets and submissions the operator sees.
    /// Omitted: every tenant (the platform's own operators).
    #[serde(default)]
    pub tenants: Option<Vec<TenantName>>,
}

/// An online service that hands in submissions.
///
/// ```yaml
/// senders:
///   - name: oaa-gewerbe-nrw
///     api_keys_sha256: ["9f86d0…"]   # several while a key is rotated
///     regions: ["05"]                # ARS prefixes; "" allows every region
///     services: ["99050012104000"]   # LeiKa keys; omitted: every service
/// ```
///
/// A sender authenticates with an API key (`Authorization: Bearer <key>`)
/// or, over `http.tls` with a `client_ca`, with a client certificate; it
/// needs at least one of the two. A request carrying both must name the
/// same sender with each.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SenderConfig {
    /// Recorded with each submission; a sender reads back only its own.
    pub name: SenderName,
    /// Hex SHA-256 of each API key the sender may use (`amtsbote keys
    /// new` makes one). To rotate, add the new key's hash, reload
    /// (SIGHUP), switch the sender over, then remove the old one.
    #[serde(default)]
    pub api_keys_sha256: Vec<KeyHash>,
    /// SHA-256 fingerprints of the client certificates the sender may
    /// present instead of an API key (`amtsbote keys fingerprint
    /// client.pem`, or `openssl x509 -noout -fingerprint -sha256`). Needs
    /// `http.tls.client_ca`, to which the certificates must chain. Rotate
    /// as keys: add the new one, reload, switch, remove the old one.
    #[serde(default)]
    pub client_certificates_sha256: Vec<crate::pem::CertificateFingerprint>,
    /// ARS prefixes of the regions the sender may submit for.
    pub regions: Vec<ArsPrefix>,
    /// LeiKa keys of the services the sender may submit; omitted: every
    /// service.
    #[serde(default)]
    pub services: Option<Vec<ServiceKey>>,
}

/// A tenant: the regions it owns.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// ARS prefixes (`05315` is Köln). Routes may send a tenant's targets
    /// only regions within these.
    pub regions: Vec<ArsPrefix>,
}

/// The names of the targets in `scope`, as the store filters by them.
pub fn within(scope: &Scope) -> Option<Vec<String>> {
    scope.targets().map(|targets| targets.iter().map(|t| t.as_str().to_owned()).collect())
}


/// A submission's status as an operator of `scope` may see it: only the
/// targets in scope, and only the events about them or about the
/// submission as a whole. `None` if it went to none of them.
pub fn scoped_status(mut status: SubmissionStatus, scope: &Scope) -> Option<SubmissionStatus> {
    if !status.targets.iter().any(|t| scope.sees_name(&t.target)) {
        return None;
    }
    status.targets.retain(|t| scope.sees_name(&t.target));
    // `routed` names the targets in its detail; those out of scope are
    // not shown either.
    status.timeline.retain(|e| e.target.as_deref().is_none_or(|t| scope.sees_name(t)));
    for event in &mut status.timeline {
        if event.event == "routed"
            && let Some(detail) = &event.detail
        {
            let seen: Vec<&str> = detail.split(", ").filter(|t| scope.sees_name(t)).collect();
            event.detail = Some(seen.join(", "));
        }
    }
    Some(status)
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_hash_is_64_hex_digits() {
        let (key, hash) = new_key();
        assert_eq!(key.len(), 64);
        assert_eq!(KeyHash::parse(&hash), Some(KeyHash::of(&key)));
        assert_eq!(KeyHash::parse("abc"), None);
        assert_eq!(KeyHash::parse(&"g".repeat(64)), None);
        assert_ne!(new_key().0, key, "keys are random");
    }

    #[test]
    fn a_key_ring_finds_the_holder() {
        let mut ring = KeyRing::default();
        ring.insert(KeyHash::of("one"), 1);
        ring.insert(KeyHash::of("two"), 2);
        assert_eq!(ring.find("two"), Some(&2));
        assert_eq!(ring.find(" one "), Some(&1));
        assert_eq!(ring.find("three"), None);
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively_by_scheme() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn a_sender_is_refused_what_it_may_not_send() {
        let sender = Sender {
            name: SenderName::parse("oaa").unwrap(),
            regions: vec![ArsPrefix::parse("05315").unwrap(), ArsPrefix::parse("0731500").unwrap()],
            services: Some([ServiceKey::parse("99050012104000").unwrap()].into()),
        };
        let gewerbe = ServiceKey::parse("99050012104000").unwrap();
        let other = ServiceKey::parse("99123456789000").unwrap();
        let koeln = Region::parse("053150000000").unwrap();
        let bonn = Region::parse("053140000000").unwrap();
        assert!(sender.refusals(&gewerbe, &koeln).is_empty());
        let pointers = |errors: Vec<FieldError>| errors.into_iter().map(|e| e.pointer).collect::<Vec<_>>();
        assert_eq!(pointers(sender.refusals(&gewerbe, &bonn)), ["#/region"]);
        assert_eq!(pointers(sender.refusals(&other, &bonn)), ["#/service", "#/region"]);
        let ags = sender.refusals(&gewerbe, &Region::parse("07315001").unwrap());
        assert!(ags[0].detail.contains("12-digit ARS"), "{ags:?}");
    }

    #[test]
    fn a_key_or_token_configured_twice_is_refused() {
        let hash = KeyHash::of("shared");
        let sender = |name: &str| SenderConfig {
            name: SenderName::parse(name).unwrap(),
            api_keys_sha256: vec![hash.clone()],
            client_certificates_sha256: Vec::new(),
            regions: vec![ArsPrefix::parse("").unwrap()],
            services: None,
        };
        let problems = Senders::new(&[sender("a"), sender("b")], false).unwrap_err();
        assert!(problems[0].contains("configured twice"), "{problems:?}");
        let operator = |name: &str, role| OperatorConfig { name: name.into(), token_sha256: hash.clone(), role, tenants: None };
        let problems = Operators::new(&[operator("viewer", Role::Viewer), operator("admin", Role::Operator)], &Tenancy::default()).unwrap_err();
        assert!(problems[0].contains("another operator"), "{problems:?}");
    }

    #[test]
    fn a_sender_authenticates_by_key_or_by_certificate_and_both_must_agree() {
        let certificate = |text: &[u8]| CertificateFingerprint::of(text);
        let sender = |name: &str, key: Option<&str>, certificates: Vec<CertificateFingerprint>| SenderConfig {
            name: SenderName::parse(name).unwrap(),
            api_keys_sha256: key.map(KeyHash::of).into_iter().collect(),
            client_certificates_sha256: certificates,
            regions: vec![ArsPrefix::parse("").unwrap()],
            services: None,
        };
        let senders = Senders::new(&[sender("by-key", Some("key-a"), vec![]), sender("by-cert", None, vec![certificate(b"b")])], true).unwrap();
        let with_key = |key: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
            headers
        };
        let name = |result: Result<Arc<Sender>, Problem>| result.map(|s| s.name.to_string()).map_err(|p| p.detail);
        assert_eq!(name(senders.authenticate(&with_key("key-a"), None)), Ok("by-key".into()));
        assert_eq!(name(senders.authenticate(&HeaderMap::new(), Some(&certificate(b"b")))), Ok("by-cert".into()));
        // An unregistered certificate does not stand in the way of a key.
        assert_eq!(name(senders.authenticate(&with_key("key-a"), Some(&certificate(b"x")))), Ok("by-key".into()));
        let refused = |result| name(result).unwrap_err();
        assert!(refused(senders.authenticate(&with_key("key-a"), Some(&certificate(b"b")))).contains("send one credential"));
        assert!(refused(senders.authenticate(&with_key("wrong"), Some(&certificate(b"b")))).contains("unknown API key"));
        assert!(refused(senders.authenticate(&HeaderMap::new(), Some(&certificate(b"x")))).contains("not registered"));
        assert!(refused(senders.authenticate(&HeaderMap::new(), None)).contains("Bearer"));

        let problems = Senders::new(&[sender("by-cert", None, vec![certificate(b"b")])], false).unwrap_err();
        assert!(problems[0].contains("http.tls.client_ca"), "{problems:?}");
        let problems = Senders::new(&[sender("a", None, vec![certificate(b"b")]), sender("c", None, vec![certificate(b"b")])], true).unwrap_err();
        assert!(problems[0].contains("configured twice"), "{problems:?}");
        let problems = Senders::new(&[sender("a", None, vec![])], true).unwrap_err();
        assert!(problems[0].contains("neither"), "{problems:?}");
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;
    use crate::store::{DeliveryState, Event, SubmissionState, SubmissionStatus, TargetStatus};
    use uuid::Uuid;

    fn event(kind: &str, target: Option<&str>, detail: Option<&str>) -> Event {
        Event {
            at: "2026-11-24T09:00:00.000Z".into(),
            event: kind.into(),
            target: target.map(str::to_owned),
            attempt: None,
            mapping_version: None,
            detail: detail.map(str::to_owned),
            receipt: None,
            size: None,
            sha256: None,
            operator: None,
            duration_ms: None,
        }
    }

    fn target(name: &str) -> TargetStatus {
        TargetStatus {
            target: name.into(),
            state: DeliveryState::Delivered,
            attempts: 1,
            last_outcome: None,
            updated_at: "2026-11-24T09:00:01.000Z".into(),
            mapping_version: None,
            receipt: None,
        }
    }

    #[test]
    fn an_operator_sees_only_its_targets_of_a_submission() {
        let status = SubmissionStatus {
            id: Uuid::nil(),
            status: SubmissionState::Delivered,
            service: "99050012104000".into(),
            region: "053150000000".into(),
            reference: None,
            received_at: "2026-11-24T09:00:00.000Z".into(),
            size: None,
            sha256: None,
            sender: Some("oaa".into()),
            fit_connect: None,
            targets: vec![target("dms-land"), target("koeln-fv")],
            timeline: vec![
                event("received", None, None),
                event("routed", None, Some("dms-land, koeln-fv")),
                event("delivered", Some("dms-land"), Some("HTTP 201")),
                event("delivered", Some("koeln-fv"), Some("HTTP 201")),
            ],
        };
        let koeln = Scope::Targets([TargetName::parse("koeln-fv").unwrap()].into());
        let seen = scoped_status(status.clone(), &koeln).expect("it went to Köln");
        assert_eq!(seen.targets.iter().map(|t| t.target.as_str()).collect::<Vec<_>>(), ["koeln-fv"]);
        let events: Vec<(&str, Option<&str>)> = seen.timeline.iter().map(|e| (e.event.as_str(), e.detail.as_deref())).collect();
        assert_eq!(events, [("received", None), ("routed", Some("koeln-fv")), ("delivered", Some("HTTP 201"))]);
        let bonn = Scope::Targets([TargetName::parse("bonn-fv").unwrap()].into());
        assert!(scoped_status(status.clone(), &bonn).is_none(), "it did not go to Bonn");
        assert_eq!(scoped_status(status, &Scope::Everything).unwrap().timeline.len(), 4);
    }
}
