//! amtsbote on several hosts: a RabbitMQ cluster, a PostgreSQL ledger, an
//! S3 bucket, and processes that share them (see the README, "Running on
//! several hosts").

use std::time::Duration;

use amtsbote::broker::{BrokerSettings, Endpoint, Topology};
use amtsbote::domain::TargetName;

use crate::helpers::{broker_url, unique_prefix};

/// Installations from before `quorum_group_size` declared their queues
/// without it; they declare them again on every connect, now with it,
/// which the broker would refuse for a queue that exists: such a queue is
/// left as it is.
#[tokio::test]
async fn queues_declared_without_a_group_size_are_declared_again_with_one() {
    let endpoint = Endpoint { url: broker_url().into(), nodes: Vec::new(), ca_file: None };
    let connection = amtsbote::broker::connect(&endpoint, "test-group-size").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let prefix = unique_prefix();
    let targets = [TargetName::parse("fv").unwrap()];
    Topology::new(&prefix).declare(&connection, &channel, &targets).await.unwrap();
    let settings = BrokerSettings { prefix: prefix.clone(), quorum_group_size: std::num::NonZeroU8::new(3), ..BrokerSettings::default() };
    Topology::of(&settings).declare(&connection, &channel, &targets).await.expect("declared again with a group size");
    Topology::of(&settings).declare_delay_ladder(&connection, &channel, &[Duration::from_secs(1)]).await.unwrap();
    Topology::of(&settings).declare_delay_ladder(&connection, &channel, &[Duration::from_secs(1)]).await.expect("and again");
    assert!(channel.status().connected(), "the probes' failures closed only their own channels");
    let topology = Topology::new(&prefix);
    for queue in [topology.work_queue(&targets[0]), topology.parking_queue(&targets[0]), topology.delay_queue(Duration::from_secs(1))] {
        channel.queue_delete(queue.as_str().into(), Default::default()).await.unwrap();
    }
}
