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

/// The SET payload schema our events declare.
pub const SET_PAYLOAD_SCHEMA: &str = "https://schema.fitko.de/fit-connect/set-payload/1.2.2/set-payload.schema.json";
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
        "$schema": SET_PAYLOAD_SCHEMA,
        "jti": Uuid::new_v4(),
        "iss": destination,
        "iat": time::OffsetDateTime::now_utc().unix_timestamp(),
        "sub": format!("submission:{submission}"),
        "txn": format!("case:{case}"),
        "events": { event: payload },
    });
    key.sign("secevent+jwt", claims.to_string().as_bytes())
}
