//! Creating a topic through the admin API (for tests, benchmarks and demos that need a
//! fresh topic of their own).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Why a topic could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The broker refused or could not be reached.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker refused to create the topic.
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
}

/// Creates `topic` with `partitions` partitions and replication factor 1, through the
/// admin API. An existing topic is an error.
///
/// # Errors
///
/// [`TopicError::Kafka`] when the admin client cannot be created or the broker cannot be
/// reached, [`TopicError::CreateTopic`] when the broker refuses the topic (it exists
/// already, or the partition count is invalid).
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics([&new], &options).await? {
        if let Err((topic, code)) = result {
            return Err(TopicError::CreateTopic { topic, code });
        }
    }
    Ok(())
}
