//! Integration tests: the real binary's library against a real RabbitMQ
//! (started by `scripts/test`) and real HTTP back offices on loopback.
//! One test binary keeps link time down.

mod cluster;
mod config_schema;
mod crashes;
mod dashboard;
mod delivery;
mod fit_connect;
mod demo;
mod helpers;
mod hostile;
mod intake;
mod large;
mod layers;
mod mappings;
mod observability;
mod openapi;
mod refusal;
mod replay;
mod retries;
mod s3;
mod scaling;
mod security;
