//! The ledger search as the operator API and the dashboard take it.

use axum::http::StatusCode;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::access::{Scope, within};
use crate::domain::{ArsPrefix, ServiceKey, TargetName};
use crate::http::problem::Problem;
use crate::store::{Cursor, SearchQuery, SubmissionState};
use crate::submission::FieldError;

/// A ledger search as the API and the dashboard take it. Every given
/// parameter must match; empty ones are ignored (as HTML forms send them).
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchParams {
    /// The sender's reference (`Aktenzeichen` of the online service).
    pub reference: Option<String>,
    /// LeiKa service key.
    pub service: Option<String>,
    /// ARS prefix: `05315` finds all of Köln.
    pub region: Option<String>,
    pub target: Option<String>,
    /// `received`, `accepted`, `delivered`, `parked`, `discarded` or `refused`.
    pub state: Option<String>,
    /// Received at or after: RFC 3339, or a date (`2026-11-24`, UTC).
    pub from: Option<String>,
    /// Received before; as `from`.
    pub to: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
}


impl SearchParams {
    /// The query within what an operator of `scope` sees.
    pub fn scoped(&self, scope: &Scope) -> Result<SearchQuery, Problem> {
        Ok(SearchQuery { within: within(scope), ..self.query()? })
    }

    fn query(&self) -> Result<SearchQuery, Problem> {
        let given = |value: &Option<String>| value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        let invalid = |parameter: &str, detail: String| {
            Problem::fields(StatusCode::BAD_REQUEST, "invalid-search", "Invalid Search", "invalid query parameter(s)", vec![
                FieldError { pointer: format!("#/{parameter}"), detail },
            ])
        };
        let service = given(&self.service)
            .map(|s| ServiceKey::parse(&s).map(|k| k.as_str().to_owned()).map_err(|e| invalid("service", e.0)))
            .transpose()?;
        let region = given(&self.region).map(|r| ArsPrefix::parse(&r).map(|_| r).map_err(|e| invalid("region", e.0))).transpose()?;
        let target = given(&self.target)
            .map(|t| TargetName::parse(&t).map(|_| t).map_err(|e| invalid("target", e.to_string())))
            .transpose()?;
        let state = given(&self.state)
            .map(|s| {
                SubmissionState::parse(&s).ok_or_else(|| {
                    invalid("state", "must be received, accepted, delivered, parked, discarded or refused".into())
                })
            })
            .transpose()?;
        let from = given(&self.from).map(|t| parse_time(&t).ok_or_else(|| invalid("from", TIME_HINT.into()))).transpose()?;
        let to = given(&self.to).map(|t| parse_time(&t).ok_or_else(|| invalid("to", TIME_HINT.into()))).transpose()?;
        let limit = self.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(invalid("limit", "must be 1 to 500".into()));
        }
        let after = given(&self.cursor)
            .map(|c| Cursor::decode(&c).ok_or_else(|| invalid("cursor", "not a cursor this API handed out".into())))
            .transpose()?;
        Ok(SearchQuery { reference: given(&self.reference), service, region, target, state, from, to, limit, after, within: None })
    }
}


const TIME_HINT: &str = "must be an RFC 3339 time (2026-11-24T09:00:00Z) or a date (2026-11-24, UTC)";


/// RFC 3339, `YYYY-MM-DDTHH:MM` (UTC, as an HTML `datetime-local`) or a
/// date (its start, UTC).
fn parse_time(text: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(at);
    }
    if let Ok(at) = time::PrimitiveDateTime::parse(text, time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]")) {
        return Some(at.assume_utc());
    }
    time::Date::parse(text, time::macros::format_description!("[year]-[month]-[day]"))
        .ok()
        .map(|date| date.midnight().assume_utc())
}

