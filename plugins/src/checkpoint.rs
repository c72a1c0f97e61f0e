//! Checkpoint stores by URL scheme: `redis://` / `rediss://` (a key per
//! state) and `file://DIR` (a file per state, written atomically).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::checkpoint::CheckpointStore;
use flowpulse_core::redact::redact_url;
use redis::aio::ConnectionManager;

/// Opens the store a `[checkpoint] url` names.
pub async fn open(url: &str) -> Result<Arc<dyn CheckpointStore>, String> {
    if let Some(dir) = url.strip_prefix("file://") {
        return Ok(Arc::new(FileStore(PathBuf::from(dir))));
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let client = crate::redis_util::client(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(2);
        let manager = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| format!("cannot reach the checkpoint store {}: {e}", redact_url(url)))?;
        return Ok(Arc::new(RedisStore(manager)));
    }
    Err(format!(
        "unsupported checkpoint URL {} (use redis://, rediss:// or file://DIR)",
        redact_url(url)
    ))
}

struct RedisStore(ConnectionManager);

#[async_trait]
impl CheckpointStore for RedisStore {
    async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut conn = self.0.clone();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())
    }

    async fn save(&self, key: &str, bytes: &[u8]) -> Result<(), String> {
        let mut conn = self.0.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(bytes)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        let mut conn = self.0.clone();
        redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    }
}

struct FileStore(PathBuf);

impl FileStore {
    fn path(&self, key: &str) -> PathBuf {
        self.0.join(key.replace([':', '/'], "_"))
    }
}

#[async_trait]
impl CheckpointStore for FileStore {
    async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match tokio::fs::read(self.path(key)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn save(&self, key: &str, bytes: &[u8]) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let io = |e: std::io::Error| e.to_string();
        tokio::fs::create_dir_all(&self.0).await.map_err(io)?;
        let path = self.path(key);
        let tmp = path.with_extension("tmp");
        // Durable before visible: the data, then the rename, then the
        // directory entry, so a power loss leaves the old file or the new.
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        file.write_all(bytes).await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        tokio::fs::File::open(&self.0)
            .await
            .map_err(io)?
            .sync_all()
            .await
            .map_err(io)
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        match tokio::fs::remove_file(self.path(key)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    }
}
