//! Where stateful processors keep their state between runs.

use async_trait::async_trait;

/// A durable key → bytes store (Redis, a directory …).
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The bytes under `key`, if any.
    async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Replaces the bytes under `key` atomically.
    async fn save(&self, key: &str, bytes: &[u8]) -> Result<(), String>;
    /// Removes `key`.
    async fn delete(&self, key: &str) -> Result<(), String>;
}

/// The key of a component's state: scoped by pipeline name, component name
/// and partition, so pipelines and instances sharing a store never collide.
pub fn checkpoint_key(pipeline: &str, component: &str, partition: u32) -> String {
    format!("flowpulse:checkpoint:{pipeline}:{component}:{partition}")
}
