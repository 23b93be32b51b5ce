//! The message that travels through the broker, defined in one place: its
//! body ([`Queued`], written by intake, and what a worker reads of it
//! before mapping), its headers (the names, the delivery [`History`], the
//! [`ReplayTicket`], what a republish carries on) and the reasons a
//! message is parked.
//!
//! A message is a submission: the envelope with amtsbote's id and receive
//! time added. Form data and attachment contents are copied through as
//! received, except that a large attachment is named by its blob
//! (`"blob": "<sha256>"`) instead of carried (see [`crate::blobs`]). The
//! headers are the only state of a retry. No other module names a header
//! or builds a message's field table.

mod body;
mod headers;
mod park;

pub use body::{Attachment, Purpose, Queued, StoredAttachment, stored_attachments};
pub use headers::{
    History, ReplayTicket, carry_headers, delay_binding, delay_name, for_parking, for_replay, for_retry, for_submission,
    header, parked_at, parked_reason, received_at, region, trace_context,
};
pub use park::ParkReason;
