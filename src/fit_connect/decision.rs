//! The decisions a receiving system sends: Security Event Tokens (RFC
//! 8417) signed with the destination's key, `accept-submission` with the
//! authentication tags of what was accepted, `reject-submission` with the
//! problems.

use serde::Serialize;
use uuid::Uuid;

use super::problems::Problem;
use super::verify::AuthenticationTags;
use crate::jose::{JoseError, SigningKey};
use crate::store::Verdict;

/// The SET payload schema our events declare unless the delivery
/// service's own events name another 1.x version (a decision in a version
/// the service does not take is refused: 1.0.0 is, live).
pub const SET_PAYLOAD_SCHEMA: &str = "https://schema.fitko.de/fit-connect/set-payload/1.2.2/set-payload.schema.json";

/// Whether `uri` names a SET payload schema version our events fit (1.x).
pub fn is_set_payload_schema(uri: &str) -> bool {
    uri.strip_prefix("https://schema.fitko.de/fit-connect/set-payload/1.")
        .and_then(|rest| rest.strip_suffix("/set-payload.schema.json"))
        .and_then(|version| version.split_once('.'))
        .is_some_and(|(minor, patch)| !minor.is_empty() && !patch.is_empty() && (minor.to_owned() + patch).bytes().all(|b| b.is_ascii_digit()))
}
pub const ACCEPT_SUBMISSION: &str = "https://schema.fitko.de/fit-connect/events/accept-submission";
pub const REJECT_SUBMISSION: &str = "https://schema.fitko.de/fit-connect/events/reject-submission";

/// What an acceptance carries.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Acceptance<'a> {
    pub authentication_tags: &'a AuthenticationTags,
}

/// What a rejection carries.
#[derive(Serialize)]
pub struct Rejection<'a> {
    pub problems: &'a [Problem],
}

/// The signed event for a decision recorded with `payload` (the JSON of
/// an [`Acceptance`] or a [`Rejection`]).
pub fn event(
    schema: &str,
    key: &SigningKey,
    destination: Uuid,
    submission: Uuid,
    case: Uuid,
    verdict: Verdict,
    payload: &str,
) -> Result<String, JoseError> {
    let payload: serde_json::Value = serde_json::from_str(payload).map_err(|_| JoseError::Malformed("recorded decision"))?;
    let event = match verdict {
        Verdict::Accept => ACCEPT_SUBMISSION,
        Verdict::Reject => REJECT_SUBMISSION,
    };
    let claims = serde_json::json!({
        "$schema": schema,
        "jti": Uuid::new_v4(),
        "iss": destination,
        "iat": time::OffsetDateTime::now_utc().unix_timestamp(),
        "sub": format!("submission:{submission}"),
        "txn": format!("case:{case}"),
        "events": { event: payload },
    });
    key.sign("secevent+jwt", claims.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_1_x_set_payload_schemas_are_taken_over() {
        assert!(is_set_payload_schema(SET_PAYLOAD_SCHEMA));
        assert!(is_set_payload_schema("https://schema.fitko.de/fit-connect/set-payload/1.3.0/set-payload.schema.json"));
        for other in [
            "https://schema.fitko.de/fit-connect/set-payload/2.0.0/set-payload.schema.json",
            "https://schema.fitko.de/fit-connect/set-payload/1.x.0/set-payload.schema.json",
            "https://evil.example/fit-connect/set-payload/1.2.2/set-payload.schema.json",
            "https://schema.fitko.de/fit-connect/set-payload/1..2/set-payload.schema.json",
        ] {
            assert!(!is_set_payload_schema(other), "{other}");
        }
    }
}
