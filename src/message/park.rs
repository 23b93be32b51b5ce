//! Why a message was parked.

/// Why a message was parked. Texts name the problem, never form data.
#[derive(Debug, thiserror::Error)]
pub enum ParkReason {
    /// The message is not a submission amtsbote can read.
    #[error("{0}")]
    Undecodable(String),
    /// The target's mapping failed on this submission.
    #[error("{0}")]
    Mapping(String),
    /// The target refused the document (a permanent failure).
    #[error("{0}")]
    Rejected(String),
    /// Transient failures went on past the retry policy's `max_age`.
    #[error("{0}")]
    RetriesExhausted(String),
    /// The submission's region is not one of the target's tenant: no
    /// route should have sent it here, so it is held, not delivered.
    #[error("{0}")]
    OutsideTenant(String),
    /// The ledger does not know the submission, so nothing says that
    /// intake accepted it: held for an operator, whose replay delivers it.
    #[error("{0}")]
    UnknownSubmission(String),
}

impl ParkReason {
    /// Every [`kind`](Self::kind).
    pub const KINDS: [&'static str; 6] =
        ["undecodable", "mapping-error", "target-rejected", "retries-exhausted", "outside-tenant", "unknown-submission"];

    pub fn kind(&self) -> &'static str {
        match self {
            ParkReason::Undecodable(_) => "undecodable",
            ParkReason::Mapping(_) => "mapping-error",
            ParkReason::Rejected(_) => "target-rejected",
            ParkReason::RetriesExhausted(_) => "retries-exhausted",
            ParkReason::OutsideTenant(_) => "outside-tenant",
            ParkReason::UnknownSubmission(_) => "unknown-submission",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ParkReason;

    #[test]
    fn kinds_lists_every_kind() {
        let reasons = [
            ParkReason::Undecodable(String::new()),
            ParkReason::Mapping(String::new()),
            ParkReason::Rejected(String::new()),
            ParkReason::RetriesExhausted(String::new()),
            ParkReason::OutsideTenant(String::new()),
            ParkReason::UnknownSubmission(String::new()),
        ];
        assert_eq!(reasons.map(|r| r.kind()), ParkReason::KINDS);
    }
}
