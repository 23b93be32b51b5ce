//! The intake envelope parser: any body either becomes a submission whose
//! queue message and form data read back, or is refused with field errors
//! that never quote the input.
#![no_main]

use amtsbote::submission::{InvalidSubmission, Limits, Submission};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    match Submission::parse(body, &Limits::default()) {
        Ok(submission) => {
            let message = submission.to_message(uuid::Uuid::nil(), time::OffsetDateTime::UNIX_EPOCH);
            let _: serde_json::Value = serde_json::from_slice(&message).expect("the queue message is JSON");
            assert!(submission.data_value().is_object());
        }
        Err(InvalidSubmission::Fields(errors)) => assert!(!errors.is_empty(), "a refusal names a field"),
        Err(InvalidSubmission::Malformed(_)) => {}
    }
});

