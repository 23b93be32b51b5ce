//! amtsbote carries applications from online services to the back offices
//! that process them.
//!
//! The flow, and the module that owns each step (ARCHITECTURE.md has the
//! layers, top to bottom, and which may import which):
//!
//! * [`http`]: the HTTP wing. [`http::intake`] authenticates a sender
//!   ([`access`]), reads and parses a [`submission`] (ids from
//!   [`domain`]) and hands it to [`admission`], the one path every source
//!   of submissions takes: it picks the targets from the [`routing`]
//!   table, records the submission in the [`store`], puts large
//!   attachments in the [`blobs`] store (the claim check), publishes the
//!   [`message`] once through the [`broker`] with a publisher confirm,
//!   and only then is the submission accepted (`202`). Errors are
//!   [`http::problem`] documents. Beside intake: [`http::operator`] (the
//!   operator API), [`http::dashboard`], [`http::health`] (`/metrics`,
//!   `/healthz`, `/readyz`); none imports another.
//! * [`fit_connect`]: the second source, FITKO's national delivery
//!   service: one poller per destination (woken by callbacks through
//!   [`http::fit_connect`]) fetches, decrypts and checks each submission
//!   ([`jose`] for JWE and JWS), admits it through [`admission`] and only
//!   then accepts it with a signed event, or rejects it; each decision is
//!   recorded in the [`store`] before it is sent.
//! * [`worker`]: one consumer per target; renders the target's [`mapping`]
//!   (in a sandbox process, with the mapping version the delivery started
//!   with) and hands the payload to the target's connector (the
//!   `amtsbote-connector` crate defines the contract, `connectors/` holds
//!   the implementations, [`connectors`] lists them); acknowledges only
//!   after delivery, a scheduled [`retry`] (a broker delay queue) or
//!   parking.
//! * [`parking`]: list, replay and discard parked deliveries, for the
//!   `amtsbote parked` command, the operator API and the dashboard.
//!   [`monitor`] samples queue depths and ledger activity for them.
//! * [`config`] is the file's root, read at start and on SIGHUP; every
//!   section is defined by the module it configures. [`pipeline`]
//!   compiles it (routes, mappings, connectors, access) for `serve`,
//!   reloads and [`check`] alike.
//! * [`seal`] encrypts bodies and blobs on their way; [`budget`] bounds
//!   the memory of bodies at intake and of attachments in deliveries;
//!   [`metrics`] defines every metric once; [`pem`] and [`yaml`] read
//!   files.
//! * [`app`] starts and stops everything; [`telemetry`] sets up logging
//!   and the optional OpenTelemetry trace export; [`demo`] runs the
//!   self-contained demonstration.

pub mod access;
pub mod admission;
pub mod app;
pub mod blobs;
pub mod broker;
pub mod budget;
pub mod check;
pub mod config;
pub mod connectors;
pub mod demo;
pub mod domain;
pub mod fit_connect;
pub mod http;
pub mod jose;
pub mod mapping;
pub mod message;
pub mod metrics;
pub mod monitor;
pub mod pipeline;
pub mod parking;
pub mod pem;
pub mod retry;
pub mod routing;
pub mod seal;
pub mod store;
pub mod submission;
pub mod telemetry;
pub mod worker;
pub mod yaml;
