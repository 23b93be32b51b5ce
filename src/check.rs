//! `amtsbote check`: all that can be verified of a configuration without
//! delivering anything — the pipeline compiles (routes, mappings with
//! their code lists and schemas, connectors, access), mappings no target
//! uses compile too, the broker's CA file and the HTTPS certificate load,
//! a bucket's settings hold, FIT-Connect destinations' keys load — and,
//! when asked to probe, whether the broker, the blob store, FIT-Connect
//! and every target answer.

use amtsbote_connector::Context;

use crate::blobs::BlobStore;
use crate::config::Config;
use crate::pipeline::{ConfigProblems, Pipeline};

/// A configuration that passed every check.
pub struct Checked {
    pub pipeline: Pipeline,
    pub routes: usize,
    /// What is allowed but worth saying (plaintext on the broker).
    pub notes: Vec<&'static str>,
    broker: crate::broker::Endpoint,
    broker_url: String,
    bucket: Option<BlobStore>,
    fit_connect: Option<crate::fit_connect::FitConnect>,
}

/// One part of the installation asked whether it answers.
#[derive(Debug)]
pub struct Probe {
    /// What was probed: `broker <url>`, `blob store` or a target's name.
    pub part: String,
    pub outcome: Result<(), String>,
}

/// Checks `config`; every problem at once.
pub fn check(config: &Config) -> Result<Checked, ConfigProblems> {
    let mut problems = crate::pipeline::check_unused_mappings(config);
    problems.extend(config.broker.endpoint().ca_file_problem());
    if let Some(tls) = &config.http.tls {
        problems.extend(crate::http::tls::server_config(tls).err().map(|e| e.to_string()));
    }
    // Only a bucket is checked: opening a directory would create it.
    let bucket = match config.blobs.s3 {
        Some(_) => BlobStore::open(&config.blobs, &Context::new(&config.base_dir)).map_err(|e| problems.push(e.to_string())).ok(),
        None => None,
    };
    let fit_connect = config.fit_connect.as_ref().map(|settings| {
        let (fit_connect, unusable) = crate::fit_connect::FitConnect::build(
            settings,
            &Context::new(&config.base_dir),
            config.http.submission_limits().attachment_bytes,
        );
        problems.extend(unusable.iter().map(ToString::to_string));
        fit_connect
    });
    let pipeline = Pipeline::build(config).map_err(|built| problems.extend(built));
    match pipeline {
        Ok(pipeline) if problems.is_empty() => {
            let notes = if pipeline.sealer.is_sealing() { Vec::new() } else { vec![crate::seal::PLAINTEXT_WARNING] };
            Ok(Checked {
                pipeline,
                routes: config.routes.len(),
                notes,
                broker: config.broker.endpoint(),
                broker_url: config.broker.display_url(),
                bucket,
                fit_connect,
            })
        }
        _ => Err(ConfigProblems(problems)),
    }
}

impl Checked {
    /// Connects to the broker, the blob store (a bucket) and every target,
    /// and logs in, delivering nothing; one answer per part.
    pub async fn probe(&self) -> Vec<Probe> {
        let mut probes = Vec::new();
        match crate::broker::connect(&self.broker, "amtsbote-check").await {
            Ok(connection) => {
                probes.push(Probe { part: format!("broker {}", self.broker_url), outcome: Ok(()) });
                let _ = connection.close(200, "checked".into()).await;
            }
            Err(e) => probes.push(Probe { part: "broker".into(), outcome: Err(e.to_string()) }),
        }
        if let Some(bucket) = &self.bucket {
            probes.push(Probe { part: "blob store".into(), outcome: bucket.check().await.map_err(|e| e.to_string()) });
        }
        if let Some(fit_connect) = &self.fit_connect {
            for (name, outcome) in fit_connect.probe().await {
                probes.push(Probe { part: format!("FIT-Connect destination {name}"), outcome });
            }
        }
        for (name, target) in &self.pipeline.targets {
            probes.push(Probe { part: name.to_string(), outcome: target.connector.probe().await.map_err(|e| e.to_string()) });
        }
        probes
    }
}
