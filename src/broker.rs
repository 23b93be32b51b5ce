//! RabbitMQ: the topology amtsbote declares and the confirmed publisher.
//!
//! Topology (names under the configured prefix, default `amtsbote`):
//!
//! * `<prefix>.submissions`: durable topic exchange that intake publishes
//!   to, once per submission (see [`crate::routing`] for the keys).
//! * `<prefix>.target.<name>`: one durable quorum queue per target, bound
//!   with `#.<name>.#`. Its `x-delivery-limit` is set explicitly and what
//!   exceeds it is dead-lettered at-least-once into the parking queue, so a
//!   message that keeps crashing a worker ends up parked, never dropped.
//! * `<prefix>.parked.<name>`: durable quorum queue of what could not be
//!   delivered, with the reason in the headers.
//! * `<prefix>.delay` (headers exchange) and `<prefix>.delay.<level>`: the
//!   retry ladder of [`crate::retry::DELAY_LEVELS`], one quorum queue per
//!   level with one TTL, shared by all targets and declared by the workers. A message waits there and is
//!   dead-lettered (at-least-once) through the default exchange under its
//!   original routing key, which is its target's work queue.
//!
//! Every declaration is idempotent and repeated on every (re)connect, so a
//! broker that lost its definitions gets them back.

use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::RwLock;

use crate::domain::TargetName;

/// Redeliveries after which a message is parked instead of tried again.
/// A redelivery means no outcome was reached (a crash, a lost connection,
/// a shutdown past its deadline); failed attempts are retried through the
/// delay queues and do not count here.
pub const DELIVERY_LIMIT: i64 = 50;

/// The parking queue's own limit: listing parked messages returns them to
/// the queue, which counts as a redelivery. Set explicitly because
/// RabbitMQ 4 defaults quorum queues to 20 and drops what exceeds it when
/// no dead-letter target is set.
const PARKING_DELIVERY_LIMIT: i64 = 1_000_000_000;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest frame amtsbote proposes to the broker unless the URL names
/// one (`?frame_max=`); RabbitMQ's own default is 128 KiB. lapin keeps 32
/// frames of buffer each way per connection and zeroes them when the
/// connection opens: 8 MiB resident per connection at 128 KiB, 2 MiB here.
/// A message larger than a frame travels in several.
const FRAME_MAX: u32 = 32 * 1024;

/// How long intake waits for a publisher confirm before it answers 503
/// (a broker under memory or disk alarm blocks publishers).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest pause between two attempts to reach a lost broker.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Pauses between reconnect attempts: from 500 ms doubling to half of
/// [`MAX_RECONNECT_DELAY`]; jitter stretches each by up to as much again,
/// so that many workers do not reconnect in lockstep.
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> + Send {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(MAX_RECONNECT_DELAY / 2)
        .with_jitter()
        .without_max_times()
        .build()
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker ended the consumer (queue deleted or connection lost)")]
    ConsumerEnded,
    #[error("broker closed the channel for retries and parking")]
    ChannelClosed,
    #[error("broker did not confirm the message (nack)")]
    Nacked,
    #[error("broker did not confirm the message within {}s", CONFIRM_TIMEOUT.as_secs())]
    ConfirmTimeout,
    #[error("broker returned the message as unroutable: no queue is bound for routing key {0:?}")]
    Unroutable(String),
}

/// Names of exchanges and queues, and how the queues are replicated.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    /// Each quorum queue's initial number of replicas; `None` leaves it to
    /// the broker (all nodes of its cluster).
    quorum_group_size: Option<u8>,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned(), quorum_group_size: None }
    }

    /// The topology `settings` describe.
    pub fn of(settings: &BrokerSettings) -> Self {
        Self { prefix: settings.prefix.clone(), quorum_group_size: settings.quorum_group_size() }
    }

    pub fn exchange(&self) -> String {
        format!("{}.submissions", self.prefix)
    }

    pub fn work_queue(&self, target: &TargetName) -> String {
        format!("{}.target.{target}", self.prefix)
    }

    pub fn parking_queue(&self, target: &TargetName) -> String {
        format!("{}.parked.{target}", self.prefix)
    }

    pub fn delay_exchange(&self) -> String {
        format!("{}.delay", self.prefix)
    }

    pub fn delay_queue(&self, level: Duration) -> String {
        format!("{}.delay.{}", self.prefix, crate::message::delay_name(level))
    }

    /// Declares the exchange and, for each target, its queues and binding.
    /// `connection` is `channel`'s: with a quorum group size, each queue is
    /// probed on a channel of its own first (see [`Topology::declare_quorum`]).
    pub async fn declare<'a>(
        &self,
        connection: &Connection,
        channel: &Channel,
        targets: impl IntoIterator<Item = &'a TargetName>,
    ) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel.exchange_declare(self.exchange().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
        for target in targets {
            let parking = self.parking_queue(target);
            let mut args = FieldTable::default();
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(PARKING_DELIVERY_LIMIT));
            self.declare_quorum(connection, channel, &parking, args).await?;
            let mut args = dead_letter_to(&parking);
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
            let queue = self.work_queue(target);
            self.declare_quorum(connection, channel, &queue, args).await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.exchange().into(),
                    crate::routing::binding_pattern(target).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Declares the delay exchange and a queue for each of `levels` (the
    /// retry ladder); the workers, which publish retries, do this on every
    /// connect.
    pub async fn declare_delay_ladder(&self, connection: &Connection, channel: &Channel, levels: &[Duration]) -> Result<(), BrokerError> {
        let exchange = self.delay_exchange();
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel.exchange_declare(exchange.as_str().into(), ExchangeKind::Headers, durable, FieldTable::default()).await?;
        for &level in levels {
            let queue = self.delay_queue(level);
            // No dead-letter routing key: the message keeps the one it was
            // published with, its target's work queue.
            let mut args = dead_letter_to("");
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(level.as_millis() as i64));
            self.declare_quorum(connection, channel, &queue, args).await?;
            let binding = crate::message::delay_binding(level);
            channel
                .queue_bind(queue.as_str().into(), exchange.as_str().into(), "".into(), QueueBindOptions::default(), binding)
                .await?;
        }
        Ok(())
    }
}

/// Quorum-queue arguments that dead-letter at-least-once through the
/// default exchange, to `routing_key` or (when empty) to the message's own.
fn dead_letter_to(routing_key: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), long_string(""));
    if !routing_key.is_empty() {
        args.insert("x-dead-letter-routing-key".into(), long_string(routing_key));
    }
    args.insert("x-dead-letter-strategy".into(), long_string("at-least-once"));
    // At-least-once dead-lettering requires it.
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..Default::default() }
}

impl Topology {
    /// Declares a durable quorum queue with `args`. The broker refuses a
    /// declaration whose arguments differ from those the queue was created
    /// with, and the group size counts only at creation: with one set, a
    /// queue that exists (created before the setting, or by another
    /// process) is left as it is, and only a missing one is declared, with
    /// it. The probe runs on a channel of its own, which the broker closes
    /// when the queue is missing.
    async fn declare_quorum(&self, connection: &Connection, channel: &Channel, queue: &str, mut args: FieldTable) -> Result<(), BrokerError> {
        args.insert("x-queue-type".into(), long_string("quorum"));
        if let Some(size) = self.quorum_group_size {
            let probe = connection.create_channel().await?;
            let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
            if probe.queue_declare(queue.into(), passive, FieldTable::default()).await.is_ok() {
                let _ = probe.close(200, "probed".into()).await;
                return Ok(());
            }
            args.insert("x-quorum-initial-group-size".into(), AMQPValue::LongLongInt(i64::from(size)));
        }
        channel.queue_declare(queue.into(), durable_queue(), args).await?;
        Ok(())
    }
}

/// A text value of a queue argument.
fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Where the broker is, and which CA vouches for it.
#[derive(Clone)]
pub struct Endpoint {
    /// `amqp://` or `amqps://`, with credentials.
    pub url: SecretString,
    /// The nodes of a cluster, each tried in turn with the URL's
    /// credentials and vhost; empty: the URL's own host.
    pub nodes: Vec<BrokerNode>,
    /// PEM file of the CA that signed the broker's certificate (for
    /// `amqps://` with a private CA), besides the system's roots. Read on
    /// every connect, so a renewed CA needs no restart.
    pub ca_file: Option<PathBuf>,
}

impl Endpoint {
    /// What is wrong with `ca_file`, for `amtsbote check`: unreadable, or
    /// no PEM certificate in it.
    pub fn ca_file_problem(&self) -> Option<String> {
        let file = self.ca_file.as_ref()?;
        crate::pem::read_certificates("broker.ca_file", file).err().map(|e| e.to_string())
    }
}

/// The node a connection of this process reached last: the next connect
/// tries it first, then the others in turn. Processes start at different
/// nodes (by process id), which spreads them over a cluster.
static PREFERRED_NODE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

impl Endpoint {
    /// The URL of each node to try, in the order to try them.
    fn candidates(&self) -> Vec<(usize, SecretString)> {
        use std::sync::atomic::Ordering;
        if self.nodes.is_empty() {
            return vec![(0, self.url.clone())];
        }
        let count = self.nodes.len();
        let preferred = match PREFERRED_NODE.load(Ordering::Relaxed) {
            usize::MAX => std::process::id() as usize,
            node => node,
        } % count;
        (0..count)
            .map(|offset| (preferred + offset) % count)
            .map(|index| (index, node_url(self.url.expose_secret(), self.nodes[index].as_str()).into()))
            .collect()
    }
}

/// Opens a connection to the broker, or to the first node of its cluster
/// that answers, each bounded by a timeout so that an unreachable broker
/// is reported instead of waited for.
pub async fn connect(endpoint: &Endpoint, name: &str) -> Result<Connection, BrokerError> {
    let mut failures = Vec::new();
    for (index, url) in endpoint.candidates() {
        match connect_to(&url, endpoint.ca_file.as_deref(), name).await {
            Ok(connection) => {
                PREFERRED_NODE.store(index, std::sync::atomic::Ordering::Relaxed);
                return Ok(connection);
            }
            Err(reason) => failures.push(format!("{}: {reason}", redact_url(url.expose_secret()))),
        }
    }
    let url = match endpoint.nodes.len() {
        0 => redact_url(endpoint.url.expose_secret()),
        count => format!("cluster ({count} nodes)"),
    };
    Err(BrokerError::Unreachable { url, reason: failures.join("; ") })
}

async fn connect_to(url: &SecretString, ca_file: Option<&std::path::Path>, name: &str) -> Result<Connection, String> {
    let tls = match ca_file {
        None => OwnedTLSConfig::default(),
        Some(file) => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(std::fs::read_to_string(file).map_err(|e| format!("cannot read the CA file {}: {e}", file.display()))?),
        },
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
    // The parser's own message can quote the URL, password and all.
    let mut uri: lapin::uri::AMQPUri =
        url.expose_secret().parse().map_err(|_: String| "not an AMQP URL (amqp://user:password@host:port/vhost)".to_owned())?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    let connecting = Connection::connect_uri_with_config(uri, properties, tls, runtime);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())),
    }
}

/// `url` with its host and port replaced by `node` (`host:port`).
fn node_url(url: &str, node: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let userinfo = authority.rfind('@').map(|at| &authority[..=at]).unwrap_or("");
    format!("{scheme}://{userinfo}{node}{path}")
}

/// One node of a RabbitMQ cluster: `host:port`, checked when the
/// configuration is read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BrokerNode(String);

impl BrokerNode {
    pub fn parse(text: &str) -> Result<Self, String> {
        let problem = || format!("{text:?} is not a broker node such as rabbit-1.example.org:5672");
        let (host, port) = text.rsplit_once(':').ok_or_else(problem)?;
        let host_ok = !host.is_empty() && !host.contains(['/', '@', '?', '#', ' ']);
        if !host_ok || port.parse::<u16>().map_or(true, |port| port == 0) {
            return Err(problem());
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for BrokerNode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

crate::domain::text_schema!(BrokerNode, "^[^/@?# ]+:[0-9]{1,5}$");

/// The message id of a delivered message (the submission id), or `""`.
pub fn message_id(properties: &BasicProperties) -> String {
    properties.message_id().as_ref().map(|id| id.to_string()).unwrap_or_default()
}

/// A message to publish: persistent, with its id.
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub message_id: &'a str,
    pub headers: FieldTable,
    pub body: &'a [u8],
}

/// Publishes persistent messages with mandatory routing and waits for the
/// broker's confirm. `Ok` means the broker has the message in every queue
/// it was routed to.
pub async fn publish_confirmed(channel: &Channel, message: Outgoing<'_>) -> Result<(), BrokerError> {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(message.message_id.into())
        .with_headers(message.headers);
    let confirm = channel
        .basic_publish(
            message.exchange.into(),
            message.routing_key.into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            message.body,
            properties,
        )
        .await?
        .await?;
    match confirm {
        lapin::Confirmation::Ack(None) => Ok(()),
        lapin::Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(message.routing_key.to_owned())),
        lapin::Confirmation::Nack(_) | lapin::Confirmation::NotRequested => Err(BrokerError::Nacked),
    }
}

/// The intake's publisher: one connection and confirm channel, reopened
/// on demand after the broker went away.
pub struct Publisher {
    broker: Endpoint,
    topology: Topology,
    targets: Vec<TargetName>,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    /// Shared rather than cloned per publish: a lapin `Channel` is a
    /// dozen reference counts, one of these is one.
    link: Option<(Connection, Arc<Channel>)>,
    last_failure: Option<Instant>,
}

impl State {
    fn live_channel(&self) -> Option<Arc<Channel>> {
        let (connection, channel) = self.link.as_ref()?;
        (connection.status().connected() && channel.status().connected()).then(|| channel.clone())
    }
}

/// After a failed connect, requests fail fast for this long instead of
/// each trying to connect again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

impl Publisher {
    pub fn new(broker: Endpoint, topology: Topology, targets: Vec<TargetName>) -> Self {
        Self { broker, topology, targets, state: RwLock::new(State::default()) }
    }

    /// Publishes to the submissions exchange and waits for the confirm.
    pub async fn publish(&self, routing_key: &str, message_id: &str, headers: FieldTable, body: &[u8]) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        let exchange = self.topology.exchange();
        let outgoing = Outgoing { exchange: &exchange, routing_key, message_id, headers, body };
        let result = tokio::time::timeout(CONFIRM_TIMEOUT, publish_confirmed(&channel, outgoing))
            .await
            .unwrap_or(Err(BrokerError::ConfirmTimeout));
        if let Err(BrokerError::Amqp(_) | BrokerError::ConfirmTimeout) = &result {
            // The channel or connection is gone; the next request reconnects.
            self.forget(&channel).await;
        }
        result
    }

    /// Connects now if not connected (throttled after a failure); for
    /// readiness and to spare the first submission the connect.
    pub async fn ensure_connected(&self) -> Result<(), BrokerError> {
        self.channel().await.map(drop)
    }

    async fn channel(&self) -> Result<Arc<Channel>, BrokerError> {
        if let Some(channel) = self.state.read().await.live_channel() {
            return Ok(channel);
        }
        let mut state = self.state.write().await;
        // Another request may have reconnected while this one waited.
        if let Some(channel) = state.live_channel() {
            return Ok(channel);
        }
        if state.last_failure.is_some_and(|at| at.elapsed() < RECONNECT_PAUSE) {
            return Err(BrokerError::Unreachable {
                url: redact_url(self.broker.url.expose_secret()),
                reason: "connect failed moments ago".into(),
            });
        }
        match self.open().await {
            Ok((connection, channel)) => {
                tracing::info!(event = "broker_connected", role = "intake", "intake connected to the broker");
                let channel = Arc::new(channel);
                state.link = Some((connection, channel.clone()));
                state.last_failure = None;
                Ok(channel)
            }
            Err(e) => {
                tracing::warn!(event = "broker_unreachable", role = "intake", error = %e, "intake cannot reach the broker");
                state.link = None;
                state.last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    async fn open(&self) -> Result<(Connection, Channel), BrokerError> {
        let connection = connect(&self.broker, "amtsbote-intake").await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        self.topology.declare(&connection, &channel, &self.targets).await?;
        Ok((connection, channel))
    }

    async fn forget(&self, failed: &Channel) {
        let mut state = self.state.write().await;
        if state.link.as_ref().is_some_and(|(_, ch)| ch.id() == failed.id()) {
            state.link = None;
        }
    }

    pub async fn close(&self) {
        if let Some((connection, _)) = self.state.write().await.link.take() {
            let _ = connection.close(200, "shutdown".into()).await;
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// AMQP URL with credentials; prefer `AMTSBOTE_BROKER_URL` over the file.
    /// amtsbote proposes frames of 32 KiB, which keeps each connection's
    /// buffers at 2 MiB; `?frame_max=131072` proposes RabbitMQ's default.
    #[serde(default = "default_broker_url")]
    #[schemars(with = "String")]
    pub url: SecretString,
    /// Prefix of every exchange and queue amtsbote declares (default
    /// `amtsbote`), so several installations can share a vhost.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// PEM file of the CA that signed the broker's certificate, for
    /// `amqps://` to a broker with a private CA; the system's roots are
    /// trusted as well. Relative to the config file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The largest message the broker takes, in bytes (default 16 MiB,
    /// RabbitMQ 4's `max_message_size`; RabbitMQ 3 takes 128 MiB). A
    /// submission whose message would be larger (form data of many
    /// megabytes: large attachments travel outside it, see `blobs`) gets
    /// `413` instead of being refused by the broker.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// The nodes of a RabbitMQ cluster (`host:port` each), for amtsbote on
    /// several hosts: every connection goes to the first node that
    /// answers, starting with the one that answered last, and a lost
    /// connection is opened again to whichever answers then. The
    /// credentials and vhost come from `url`, whose own host is then not
    /// used. Empty (the default): the one broker at `url`.
    #[serde(default)]
    pub nodes: Vec<BrokerNode>,
    /// How many nodes hold each quorum queue when amtsbote creates it
    /// (RabbitMQ's `x-quorum-initial-group-size`). Default: RabbitMQ's
    /// own, every node of the cluster up to three. A queue stays available
    /// while a majority of its replicas is up: three survive the loss of
    /// one node, five of two. Only queues created after it is set get it;
    /// a queue that exists keeps its replicas (change them with
    /// `rabbitmq-queues grow` and `shrink`). Once set, keep it set: a
    /// queue created with it refuses declarations without it.
    #[serde(default)]
    pub quorum_group_size: Option<std::num::NonZeroU8>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: default_broker_url(),
            prefix: default_prefix(),
            ca_file: None,
            max_message_bytes: default_max_message_bytes(),
            nodes: Vec::new(),
            quorum_group_size: None,
        }
    }
}

fn default_broker_url() -> SecretString {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}

fn default_max_message_bytes() -> usize {
    16 << 20
}

fn default_prefix() -> String {
    "amtsbote".into()
}

impl BrokerSettings {
    /// The URL without credentials, for logs and messages.
    pub fn display_url(&self) -> String {
        redact_url(self.url.expose_secret())
    }

    pub fn endpoint(&self) -> crate::broker::Endpoint {
        crate::broker::Endpoint { url: self.url.clone(), nodes: self.nodes.clone(), ca_file: self.ca_file.clone() }
    }

    /// The initial replica count of new quorum queues, if amtsbote sets it.
    pub fn quorum_group_size(&self) -> Option<u8> {
        self.quorum_group_size.map(u8::from)
    }
}

/// `amqp://user:pass@host:5672/vhost` → `amqp://host:5672/vhost`.
pub fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_takes_the_place_of_the_urls_host_and_keeps_credentials_and_vhost() {
        let url = "amqps://user:p%40ss@lb.example.org:5671/amtsbote?heartbeat=30";
        assert_eq!(node_url(url, "rabbit-2:5672"), "amqps://user:p%40ss@rabbit-2:5672/amtsbote?heartbeat=30");
        assert_eq!(node_url("amqp://h:1", "n:2"), "amqp://n:2");
        assert_eq!(node_url("amqp://u:p@h:1/%2f", "n:2"), "amqp://u:p@n:2/%2f");
    }

    #[test]
    fn nodes_are_host_and_port() {
        assert!(BrokerNode::parse("rabbit-1.example.org:5672").is_ok());
        assert!(BrokerNode::parse("[::1]:5672").is_ok());
        for bad in ["rabbit-1", ":5672", "rabbit:0", "rabbit:99999", "user@rabbit:5672", "rabbit/x:5672"] {
            assert!(BrokerNode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_node_is_tried_once_starting_with_the_one_that_answered_last() {
        let endpoint = Endpoint {
            url: "amqp://u:p@ignored:1/%2f".into(),
            nodes: ["a:1", "b:2", "c:3"].iter().map(|n| BrokerNode::parse(n).unwrap()).collect(),
            ca_file: None,
        };
        PREFERRED_NODE.store(1, std::sync::atomic::Ordering::Relaxed);
        let order: Vec<String> = endpoint.candidates().into_iter().map(|(_, url)| url.expose_secret().to_owned()).collect();
        assert_eq!(order, ["amqp://u:p@b:2/%2f", "amqp://u:p@c:3/%2f", "amqp://u:p@a:1/%2f"]);
        let single = Endpoint { nodes: Vec::new(), ..endpoint };
        assert_eq!(single.candidates().len(), 1);
    }

}
