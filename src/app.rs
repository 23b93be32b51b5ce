//! Startup and shutdown: builds the pipeline, opens the store, starts the
//! intake API and one worker per target, and stops them in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::blobs::{self, BlobStore};
use crate::broker::{Publisher, Topology};
use crate::budget::MemoryBudget;
use crate::config::Config;
use crate::admission::Admissions;
use crate::fit_connect::FitConnect;
use crate::http::intake::{self, Intake};
use crate::http::operator::{self, OperatorApi};
use crate::parking::ParkingLot;
use crate::mapping::sandbox::Sandbox;
use crate::pipeline::{ConfigProblems, MappingVersions, Pipeline, SharedPipeline};
use crate::http::dashboard::{self, Dashboard};
use crate::metrics::Metrics;
use crate::http::health::{self, Observed, Readiness};
use crate::monitor::Monitor;
use crate::store::{self, Store};
use crate::http::connections::{self, ConnectionLimits, ListenerHealth};
use crate::http::tls::TlsListener;
use crate::worker::Worker;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Pipeline(#[from] ConfigProblems),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot find the mapping sandbox program: {0}")]
    Sandbox(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] crate::http::tls::TlsError),
    #[error(transparent)]
    Blobs(#[from] crate::blobs::BlobError),
}

/// The FIT-Connect source, when configured, with what it shares.
struct Receiving {
    fit_connect: Arc<FitConnect>,
    shared: Arc<crate::fit_connect::Shared>,
}

/// What shutdown allows beyond the configured deadline for closing
/// connections, before it stops waiting for workers.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub struct Application {
    listener: TcpListener,
    /// With `http.tls`: serve HTTPS, with what the last (re)load read.
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    reloader: Reloader,
    intake: Arc<Intake>,
    operator: Arc<OperatorApi>,
    observed: Arc<Observed>,
    dashboard: Arc<Dashboard>,
    limits: ConnectionLimits,
    workers: Vec<Arc<Worker>>,
    receiving: Option<Receiving>,
    store: Arc<dyn Store>,
    blobs: BlobStore,
    sweep_every: Duration,
    retention: Duration,
    shutdown_deadline: Duration,
}

impl Application {
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let pipeline = Pipeline::build(config)?;
        if !pipeline.sealer.is_sealing() {
            tracing::warn!(event = "plaintext_on_broker", "{}", crate::seal::PLAINTEXT_WARNING);
        }
        let context = amtsbote_connector::Context::new(&config.base_dir);
        let store = store::open(&config.store, &context).await?;
        let blobs = BlobStore::open(&config.blobs, &context)?;
        blobs.check().await?;
        blobs.claim(&store.ledger_id().await?).await?;
        let delivery_memory = MemoryBudget::mib(config.blobs.delivery_memory_mib);
        let versions = Arc::new(MappingVersions::new(store.clone()));
        versions.keep(&pipeline).await?;
        let sandbox = Sandbox::new(config.sandbox.clone()).map_err(StartupError::Sandbox)?;
        let topology = Topology::of(&config.broker);
        let targets: Vec<_> = pipeline.targets.keys().cloned().collect();
        let pipeline: SharedPipeline = Arc::new(ArcSwap::from_pointee(pipeline));
        let publisher = Arc::new(Publisher::new(config.broker.endpoint(), topology.clone(), targets.clone()));
        let metrics = Arc::new(Metrics::new(&targets));
        let monitor = Arc::new(Monitor::new(config.broker.endpoint(), topology.clone(), targets.clone(), store.clone(), metrics.clone()));
        let parking = Arc::new(ParkingLot::new(&config.broker, config.targets.keys().cloned().collect(), store.clone()));
        let operator = Arc::new(OperatorApi { parking: parking.clone(), pipeline: pipeline.clone() });
        let recently_accepted = Arc::new(crate::store::RecentlyAccepted::default());
        let workers = pipeline
            .load()
            .targets
            .values()
            .map(|target| {
                Arc::new(Worker {
                    target: target.clone(),
                    pipeline: pipeline.clone(),
                    topology: topology.clone(),
                    broker: config.broker.endpoint(),
                    store: store.clone(),
                    sandbox: sandbox.clone(),
                    versions: versions.clone(),
                    metrics: metrics.clone(),
                    blobs: blobs.clone(),
                    delivery_memory: delivery_memory.clone(),
                    recently_accepted: recently_accepted.clone(),
                })
            })
            .collect();
        let admissions = Arc::new(Admissions {
            publisher,
            store: store.clone(),
            blobs: blobs.clone(),
            keep_above_bytes: config.blobs.keep_above_kib.saturating_mul(1024),
            max_message_bytes: config.broker.max_message_bytes,
            recently_accepted,
            metrics: metrics.clone(),
        });
        let receiving = config.fit_connect.as_ref().map(|settings| {
            let limits = config.http.submission_limits();
            // Problems are logged by `run`: the destination is down, the
            // rest of amtsbote works.
            let (fit_connect, _problems) =
                FitConnect::build(settings, &amtsbote_connector::Context::new(&config.base_dir), limits.attachment_bytes);
            let shared = crate::fit_connect::Shared {
                pipeline: pipeline.clone(),
                admissions: admissions.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                limits,
                max_jwe_bytes: config.http.max_body_bytes,
            };
            Receiving { fit_connect: Arc::new(fit_connect), shared: Arc::new(shared) }
        });
        let intake = Arc::new(Intake {
            pipeline: pipeline.clone(),
            admissions,
            draining: Arc::new(AtomicBool::new(false)),
            metrics: metrics.clone(),
            limits: config.http.submission_limits(),
            room: MemoryBudget::mib(config.http.intake_memory_mib),
            max_body_bytes: config.http.max_body_bytes,
            body_timeout: config.http.body_timeout,
        });
        let mut dashboard = Dashboard::new(parking, pipeline.clone(), monitor.clone(), config.http.tls.is_some());
        dashboard.fit_connect = receiving.as_ref().map(|r| r.fit_connect.clone());
        let dashboard = Arc::new(dashboard);
        let readiness = Readiness {
            draining: intake.draining.clone(),
            publisher: intake.admissions.publisher.clone(),
            store: store.clone(),
            listener: Arc::new(ListenerHealth::default()),
        };
        let observed = Arc::new(Observed { readiness, monitor, metrics });
        let limits = ConnectionLimits::within_open_files(config.http.max_connections, config.http.header_timeout);
        let tls = match &config.http.tls {
            Some(settings) => Some(Arc::new(ArcSwap::new(crate::http::tls::server_config(settings)?))),
            None => None,
        };
        let addr = config.http.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| StartupError::Listen { addr, source })?;
        let reloader = Reloader { pipeline, versions, tls: tls.clone(), fixed: Arc::new(fixed_settings(config)) };
        Ok(Self {
            listener,
            tls,
            reloader,
            intake,
            operator,
            observed,
            dashboard,
            limits,
            workers,
            receiving,
            store,
            blobs,
            sweep_every: config.blobs.sweep_every,
            retention: config.store.retention,
            shutdown_deadline: config.shutdown_deadline,
        })
    }

    /// A handle that applies a changed configuration while running.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The URL scheme clients use: `https` with `http.tls`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Serves until `shutdown` resolves: then intake answers 503, workers
    /// stop taking messages and finish what they hold (bounded by the
    /// shutdown deadline), and finally the HTTP server drains.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut workers = JoinSet::new();
        for worker in self.workers {
            workers.spawn(worker.run(stop_rx.clone(), self.shutdown_deadline));
        }
        let mut receivers = match &self.receiving {
            Some(receiving) => receiving.fit_connect.run(receiving.shared.clone(), stop_rx.clone()),
            None => JoinSet::new(),
        };
        let sweeping = tokio::spawn(blobs::sweep_periodically(self.blobs, self.store.clone(), self.sweep_every, stop_rx.clone()));
        let pruning = tokio::spawn(store::prune_periodically(self.store, self.retention, stop_rx.clone()));
        // Try the broker early so the first submission does not pay for it.
        let _ = self.intake.admissions.publisher.ensure_connected().await;

        let intake = self.intake.clone();
        // The server outlives the workers' drain, answering 503, so that
        // clients and load balancers hear "shutting down" rather than
        // "connection refused".
        let (server_stop_tx, server_stop) = tokio::sync::oneshot::channel::<()>();
        let (health, metrics) = (self.observed.readiness.listener.clone(), self.observed.metrics.clone());
        let mut app = intake::router(self.intake.clone())
            .merge(operator::router(self.operator))
            .merge(health::router(self.observed))
            .merge(dashboard::router(self.dashboard));
        if let Some(receiving) = &self.receiving {
            app = app.merge(crate::http::fit_connect::router(receiving.fit_connect.clone()));
        }
        let server = match self.tls {
            None => tokio::spawn(connections::serve(self.listener, app, self.limits, health, metrics, server_stop)),
            Some(tls) => {
                let listener = TlsListener::new(self.listener, tls)?;
                tokio::spawn(connections::serve(listener, app, self.limits, health, metrics, server_stop))
            }
        };
        tracing::info!(event = "started", "amtsbote is running");

        shutdown.await;
        tracing::info!(event = "stopping", "shutdown requested: refusing new submissions, finishing deliveries");
        intake.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        // Each worker bounds itself by the deadline; this only guards
        // against a close that hangs.
        let drained = tokio::time::timeout(self.shutdown_deadline + CLOSE_GRACE, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            workers.abort_all();
        }
        // A receiver stops after the submission in hand, whose admission
        // and decision are bounded by the broker's and FIT-Connect's
        // timeouts.
        if tokio::time::timeout(self.shutdown_deadline, async { while receivers.join_next().await.is_some() {} }).await.is_err() {
            receivers.abort_all();
        }
        let _ = pruning.await;
        let _ = sweeping.await;
        intake.admissions.publisher.close().await;
        let _ = server_stop_tx.send(());
        match server.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler works");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Applies a changed configuration file to the running amtsbote (on
/// SIGHUP): routes, route schemas, mappings, code lists, output schemas,
/// connectors and retry policies, senders, and the files of `http.tls`
/// (a renewed certificate). A configuration with any problem is
/// refused whole and the running one stays. Settings that need new
/// connections, listeners or workers (`http`, `broker`, `store`, `blobs`,
/// `sandbox`, `operators`, `shutdown_deadline`, the set of targets and
/// their `concurrency`) need a restart; a file that changes them is
/// refused too, so that what runs is always what the file says.
#[derive(Clone)]
pub struct Reloader {
    pipeline: SharedPipeline,
    versions: Arc<MappingVersions>,
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    fixed: Arc<Vec<(&'static str, String)>>,
}

impl Reloader {
    /// Builds the new pipeline and swaps it in; deliveries already in
    /// flight keep the mapping version they started with.
    pub async fn reload(&self, config: &Config) -> Result<(), ConfigProblems> {
        let changed: Vec<String> = fixed_settings(config)
            .iter()
            .zip(self.fixed.iter())
            .filter(|(new, old)| new.1 != old.1)
            .map(|(new, _)| format!("{}: changed, which needs a restart", new.0))
            .collect();
        if !changed.is_empty() {
            return Err(changed.into());
        }
        let pipeline = Pipeline::build(config)?;
        // The paths are fixed (`http`); what they hold may have been renewed.
        let tls = match (&self.tls, &config.http.tls) {
            (Some(_), Some(settings)) => Some(crate::http::tls::server_config(settings).map_err(|e| ConfigProblems(vec![e.to_string()]))?),
            _ => None,
        };
        self.versions.keep(&pipeline).await.map_err(|e| ConfigProblems(vec![format!("store: {e}")]))?;
        for target in pipeline.targets.values() {
            tracing::info!(event = "mapping_loaded", target = %target.name, mapping = target.mapping.file(),
                version = target.mapping.version(), "mapping in use");
        }
        self.pipeline.store(Arc::new(pipeline));
        if let (Some(current), Some(tls)) = (&self.tls, tls) {
            current.store(tls);
        }
        Ok(())
    }
}

/// The settings a reload cannot change, as comparable text (never shown:
/// the broker URL carries a password).
fn fixed_settings(config: &Config) -> Vec<(&'static str, String)> {
    let targets: Vec<String> = config.targets.iter().map(|(name, t)| format!("{name}:{}", t.concurrency)).collect();
    vec![
        ("http", format!("{:?}", config.http)),
        ("broker", format!("{} {:?}", config.broker.url.expose_secret(), config.broker)),
        ("store", format!("{:?} {:?}", config.store, config.store.postgres.as_ref().map(|postgres| postgres.url.expose_secret()))),
        ("blobs", format!("{:?}", config.blobs)),
        ("sandbox", format!("{:?}", config.sandbox)),
        ("shutdown_deadline", format!("{:?}", config.shutdown_deadline)),
        ("fit_connect", format!("{:?}", config.fit_connect)),
        ("targets (names and concurrency)", targets.join(",")),
    ]
}

/// Applies the configuration file again on every SIGHUP; problems are
/// logged and the running configuration stays.
pub async fn reload_on_hangup(path: std::path::PathBuf, reloader: Reloader) {
    #[cfg(unix)]
    {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!(event = "reload_unavailable", "cannot listen for SIGHUP; reloading is off");
            return;
        };
        while hangup.recv().await.is_some() {
            let result = match Config::load(&path) {
                Ok(config) => reloader.reload(&config).await,
                Err(e) => Err(ConfigProblems(vec![e.to_string()])),
            };
            match result {
                Ok(()) => tracing::info!(event = "reloaded", config = %path.display(), "configuration reloaded"),
                Err(problems) => {
                    for problem in problems.iter() {
                        tracing::error!(event = "reload_refused", config = %path.display(), problem = %problem,
                            "configuration refused; the running one stays");
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, reloader);
}
