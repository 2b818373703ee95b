//! The embedded broker: librdkafka's in-process mock cluster, so `vigil serve` runs with no
//! setup. It is a real Kafka-protocol listener on 127.0.0.1 (kcat and other clients can talk to
//! it) but it keeps everything in memory, and it has limits a real cluster does not:
//!
//! - topics must be created through [`MockCluster::create_topic`] (admin requests get no answer);
//! - each partition keeps only a few MiB (older segments are dropped), so outputs use lz4;
//! - transactions are not isolated;
//! - a consumer that leaves without saying so holds its partitions until its session times out,
//!   so Vigil lowers the session timeout on it.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use super::{StreamError, Topics};

/// A running embedded cluster; dropping it stops it.
pub struct Embedded {
    cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
    brokers: i32,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl Embedded {
    /// Starts a cluster of `brokers` brokers and creates `topics` with `partitions` each.
    pub fn start(brokers: i32, topics: &Topics, partitions: i32) -> Result<Embedded, StreamError> {
        let cluster = MockCluster::new(brokers)?;
        for t in topics.all() {
            cluster.create_topic(t, partitions, 1)?;
        }
        let bootstrap = cluster.bootstrap_servers();
        Ok(Embedded {
            cluster,
            bootstrap,
            brokers,
        })
    }

    /// Creates one more topic.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), StreamError> {
        Ok(self.cluster.create_topic(topic, partitions, 1)?)
    }

    /// Makes the next requests of kind `api` fail, one per error, in order (fault injection:
    /// tests of how the pipeline survives a broker refusing it).
    pub fn fail_requests(
        &self,
        api: rdkafka::types::RDKafkaApiKey,
        errors: &[rdkafka::types::RDKafkaRespErr],
    ) {
        self.cluster.request_errors(api, errors);
    }

    /// Makes every broker answer each request `delay` late (fault injection: a broker slow
    /// or away for a while); `Duration::ZERO` ends it.
    pub fn round_trip_time(&self, delay: std::time::Duration) -> Result<(), StreamError> {
        for id in 1..=self.brokers {
            self.cluster.broker_round_trip_time(id, delay)?;
        }
        Ok(())
    }

    /// The `host:port,…` list clients connect to.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}
