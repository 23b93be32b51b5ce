//! HTTP connections to intake, the operator API and the dashboard: the
//! accept loop, and what bounds each connection before a handler sees it.
//!
//! * **Header timeout** (`http.header_timeout`, default 10 s): a client
//!   has that long to send a request's headers, counted from the
//!   connection's start or the end of the previous response, so it also
//!   closes idle keep-alive connections. A request that sends its headers
//!   one byte a second is closed after it, as is a connection that sends
//!   nothing. (Bodies are bounded by `http.body_timeout` in intake.)
//! * **Connection cap** (`http.max_connections`, default 1000): one more
//!   connection is taken by closing the longest-open connection that has no
//!   request in a handler (idle, or still sending its headers); if every
//!   connection is busy, the new one is closed at once. So idle and slow
//!   connections cannot keep a client with a request out, and the files
//!   they take stay bounded whatever the network sends.
//! * **Open files**: at start the process raises its soft open-file limit
//!   to the hard one, and lowers the cap if the limit leaves fewer than
//!   [`RESERVED_FILES`] for everything else (broker, ledger, blobs,
//!   sandboxes, connectors): deliveries never run out of files because of
//!   intake's connections. TLS handshakes are bounded apart from this (see
//!   [`crate::http::tls`]).
//!
//! A failed accept (too many open files, say) is logged once when it
//! starts and once when it ends, and makes `/readyz` say not ready while it
//! lasts, as a cap full of busy connections does. HTTP/1.1 only: the TLS
//! listener offers nothing else, and plain-text HTTP/2 is not served.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::metrics::Metrics;
use crate::http::tls::{Peer, TlsListener};

/// The smallest `http.max_connections` allowed.
pub const MIN_CONNECTIONS: usize = 16;

/// Open files kept for everything but intake's connections: broker
/// connections, the ledger, blob files of deliveries in progress, sandbox
/// pipes, connectors' connections, TLS handshakes.
pub const RESERVED_FILES: u64 = 512;

/// How long a server stopping waits for its connections to finish their
/// requests (intake answers 503 by then) before it closes them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A source of connections.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection, or why none could be taken (the loop reports it
    /// and goes on).
    fn next(&mut self) -> impl Future<Output = std::io::Result<(Self::Io, Peer)>> + Send;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;

    async fn next(&mut self) -> std::io::Result<(Self::Io, Peer)> {
        let (stream, addr) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Peer { addr, client_certificate: None }))
    }
}

impl Accept for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

    async fn next(&mut self) -> std::io::Result<(Self::Io, Peer)> {
        TlsListener::next(self).await
    }
}

/// How the connections are bounded (from `http`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits for `max_connections` wanted, after raising the soft
    /// open-file limit as far as the hard one allows: the cap is lowered
    /// (with a warning) if the limit leaves fewer than [`RESERVED_FILES`]
    /// for the rest of the process.
    pub fn within_open_files(max_connections: usize, header_timeout: Duration) -> Self {
        let files = raise_open_file_limit();
        let room = usize::try_from(files.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX).max(MIN_CONNECTIONS);
        if max_connections > room {
            tracing::warn!(event = "connection_cap_lowered", wanted = max_connections, cap = room, open_files = files,
                "the open-file limit leaves room for fewer connections than http.max_connections; raise `ulimit -n`");
        }
        Self { max_connections: max_connections.min(room), header_timeout }
    }
}

/// Raises the soft open-file limit to the hard one (as Go's runtime does);
/// returns the limit in force.
fn raise_open_file_limit() -> u64 {
    #[cfg(unix)]
    // SAFETY: getrlimit and setrlimit with a valid, fully initialised
    // struct; they affect only this process.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    }
    #[cfg(not(unix))]
    u64::MAX
}

/// Whether the listener takes connections now, for `/readyz`.
#[derive(Debug, Default)]
pub struct ListenerHealth {
    /// Since when accepting fails (too many open files, ...).
    failing_since: Mutex<Option<Instant>>,
    /// The cap is full of connections with requests in progress.
    saturated: AtomicBool,
}

impl ListenerHealth {
    pub fn accepting(&self) -> bool {
        self.failing_since.lock().expect("not poisoned").is_none() && !self.saturated.load(Ordering::Relaxed)
    }

    /// A connection closed or a request finished, so the next connection
    /// finds room (an idle one can be closed for it). Without this a
    /// readiness probe on a kept-alive connection would see the cap full
    /// until the next accept.
    fn room_freed(&self) {
        self.saturated.store(false, Ordering::Relaxed);
    }

    fn accept_failed(&self, error: &std::io::Error) {
        let mut since = self.failing_since.lock().expect("not poisoned");
        if since.is_none() {
            *since = Some(Instant::now());
            tracing::error!(event = "accept_failing", error = %error, "intake cannot accept connections");
        }
    }

    fn accepted(&self) {
        let mut since = self.failing_since.lock().expect("not poisoned");
        if let Some(at) = since.take() {
            tracing::warn!(event = "accept_recovered", failed_for_ms = at.elapsed().as_millis() as u64, "intake accepts connections again");
        }
    }
}

/// One open connection, as the cap sees it.
#[derive(Default)]
struct Connection {
    /// Requests of this connection in a handler.
    busy: AtomicUsize,
    /// Asked to close to make room.
    evicting: AtomicBool,
    evict: Notify,
}

#[derive(Default)]
struct Registry {
    next: u64,
    /// By age: the smallest key is the longest open.
    open: BTreeMap<u64, Arc<Connection>>,
}

impl Registry {
    /// Asks the longest-open connection without a request in a handler to
    /// close; false if every connection is busy.
    fn make_room(&self) -> bool {
        let idle = self.open.values().find(|c| c.busy.load(Ordering::SeqCst) == 0 && !c.evicting.load(Ordering::SeqCst));
        match idle {
            Some(connection) => {
                connection.evicting.store(true, Ordering::SeqCst);
                connection.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Counts a request of a connection as in a handler while it lives.
struct Busy(Arc<Connection>);

impl Busy {
    fn new(connection: &Arc<Connection>) -> Self {
        connection.busy.fetch_add(1, Ordering::SeqCst);
        Self(connection.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `app` on `listener` within `limits` until `stop`; then lets the
/// requests in progress finish (up to [`DRAIN_TIMEOUT`]) and closes the
/// rest. Handlers see the [`Peer`] of their connection as
/// `ConnectInfo<Peer>`.
pub async fn serve<L: Accept>(
    mut listener: L,
    app: axum::Router,
    limits: ConnectionLimits,
    health: Arc<ListenerHealth>,
    metrics: Arc<Metrics>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let (draining_tx, draining) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.next() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (io, peer) = match accepted {
            Ok(accepted) => {
                health.accepted();
                accepted
            }
            Err(error) => {
                health.accept_failed(&error);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let connection = {
            let mut registry = registry.lock().expect("not poisoned");
            let room = registry.open.len() < limits.max_connections || registry.make_room();
            health.saturated.store(!room, Ordering::Relaxed);
            if !room {
                metrics.http_connections_refused.inc();
                // Closed at once: a full cap of busy connections costs a
                // new client nothing but this.
                continue;
            }
            let connection = Arc::new(Connection::default());
            let id = registry.next;
            registry.next += 1;
            registry.open.insert(id, connection.clone());
            (id, connection)
        };
        metrics.http_connections.inc();
        let (registry, metrics, app, draining, health) = (registry.clone(), metrics.clone(), app.clone(), draining.clone(), health.clone());
        connections.spawn(async move {
            let (id, connection) = connection;
            serve_connection(io, peer, app, &connection, &health, limits.header_timeout, draining, &metrics).await;
            registry.lock().expect("not poisoned").open.remove(&id);
            health.room_freed();
            metrics.http_connections.dec();
        });
    }
    // New connections are refused from now on; requests in progress
    // finish, idle connections close.
    drop(listener);
    let _ = draining_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(event = "connections_closed", open = connections.len(), "connections still open at the drain timeout are closed");
        connections.abort_all();
    }
    Ok(())
}

#[expect(clippy::too_many_arguments, reason = "one connection's parts and the listener's observers, each used once")]
async fn serve_connection<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    peer: Peer,
    app: axum::Router,
    connection: &Arc<Connection>,
    health: &Arc<ListenerHealth>,
    header_timeout: Duration,
    mut draining: watch::Receiver<bool>,
    metrics: &Metrics,
) {
    let info = ConnectInfo(peer);
    let handling = connection.clone();
    let health = health.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(info.clone());
        let busy = Busy::new(&handling);
        let app = app.clone();
        let health = health.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(busy);
            health.room_freed();
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut graceful = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result
                    && e.is_timeout()
                {
                    metrics.http_header_timeouts.inc();
                }
                return;
            }
            _ = connection.evict.notified() => {
                // Only without a request in a handler: otherwise it stays,
                // and the next connection makes room elsewhere.
                if connection.busy.load(Ordering::SeqCst) == 0 {
                    metrics.http_connections_evicted.inc();
                    return;
                }
                connection.evicting.store(false, Ordering::SeqCst);
            }
            changed = draining.changed(), if !graceful => {
                if changed.is_err() || *draining.borrow() {
                    graceful = true;
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_rest_of_the_process() {
        let limits = ConnectionLimits::within_open_files(usize::MAX, Duration::from_secs(10));
        let files = raise_open_file_limit();
        assert!(limits.max_connections as u64 + RESERVED_FILES <= files.max(MIN_CONNECTIONS as u64 + RESERVED_FILES), "{limits:?}");
        assert_eq!(ConnectionLimits::within_open_files(MIN_CONNECTIONS, Duration::from_secs(10)).max_connections, MIN_CONNECTIONS);
    }

    #[test]
    fn readiness_follows_failing_accepts_and_a_full_cap() {
        let health = ListenerHealth::default();
        assert!(health.accepting());
        health.accept_failed(&std::io::Error::from_raw_os_error(24));
        assert!(!health.accepting(), "too many open files: not ready");
        health.accepted();
        assert!(health.accepting());
        health.saturated.store(true, Ordering::Relaxed);
        assert!(!health.accepting(), "every connection busy: not ready");
        health.room_freed();
        assert!(health.accepting(), "a request finished or a connection closed: ready again");
    }

    #[test]
    fn room_is_made_by_the_longest_open_connection_without_a_request() {
        let mut registry = Registry::default();
        for id in 0..3 {
            registry.open.insert(id, Arc::new(Connection::default()));
        }
        let _busy = Busy::new(&registry.open[&0]);
        assert!(registry.make_room());
        assert!(registry.open[&1].evicting.load(Ordering::SeqCst), "the oldest idle one");
        assert!(!registry.open[&0].evicting.load(Ordering::SeqCst), "never one with a request in a handler");
        assert!(registry.make_room());
        assert!(registry.open[&2].evicting.load(Ordering::SeqCst));
        assert!(!registry.make_room(), "all busy or asked already");
    }
}
