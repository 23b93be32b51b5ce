pub mod config;
pub mod domain;
pub mod mapping;
pub mod routing;
