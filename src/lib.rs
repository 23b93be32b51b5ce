//! amtsbote carries applications from online services to the back offices
//! that process them.
//!
//! The flow, and the module that owns each step:
//!
//! * [`intake`]: the HTTP API. Validates a [`submission`] (ids from
//!   [`domain`]), picks its targets from the [`routing`] table, records it
//!   in the [`store`], publishes it once through the [`broker`] with a
//!   publisher confirm, and only then answers `202`. Errors are
//!   [`problem`] documents.
//!   Large attachments wait in the [`blobs`] store (the claim check);
//!   the message names them.
//! * [`broker`]: RabbitMQ topology (exchange, per-target work and parking
//!   queues) and confirmed publishing.
//! * [`worker`]: one consumer per target; renders the target's [`mapping`]
//!   (in a sandbox process, with the mapping version the delivery started
//!   with) and hands the payload to the target's connector (the
//!   `amtsbote-connector` crate defines the contract, `connectors/` holds
//!   the implementations); acknowledges only after delivery, a scheduled
//!   [`retry`] (a broker delay queue) or parking.
//! * [`parking`]: list, replay and discard parked deliveries, for the
//!   `amtsbote parked` command and the [`operator`] API.
//! * [`config`] is read at start and on SIGHUP; [`pipeline`] compiles it
//!   (routes, mappings, connectors) for `serve`, reloads and `check` alike.
//!   [`connectors`] lists the connector kinds a target can use.
//! * [`mapping`] also holds the fixture runner behind `amtsbote mappings
//!   test` and the sandbox behind `amtsbote mapping-sandbox`.
//! * [`access`] decides who may hand in, read and act on what (senders,
//!   tenants, operators); [`tls`] serves HTTPS and hands intake the
//!   client certificate a sender presented; [`connections`] bounds every
//!   HTTP connection (header timeout, a cap that closes idle ones first).
//! * [`budget`] bounds the memory of bodies at intake and of attachments
//!   in deliveries.
//! * [`app`] starts and stops everything; [`telemetry`] sets up logging
//!   and the optional OpenTelemetry trace export;
//!   [`demo`] runs the self-contained demonstration.

pub mod access;
pub mod admission;
pub mod app;
pub mod blobs;
pub mod broker;
pub mod budget;
pub mod config;
pub mod connectors;
pub mod demo;
pub mod domain;
pub mod http;
pub mod mapping;
pub mod message;
pub mod metrics;
pub mod monitor;
pub mod pipeline;
pub mod parking;
pub mod pem;
pub mod problem;
pub mod retry;
pub mod routing;
pub mod seal;
pub mod store;
pub mod submission;
pub mod telemetry;
pub mod worker;
pub mod yaml;
