//! Checkpoint stores by URL scheme: `redis://` / `rediss://` (a key per
//! state) and `file://DIR` (a file per state, written atomically).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flowpulse_core::checkpoint::{CheckpointStore, Fence, StoreDescriptor, StoreError};
use flowpulse_core::redact::redact_url;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;

inventory::submit! { StoreDescriptor { scheme: "file", open: open_file } }
inventory::submit! { StoreDescriptor { scheme: "redis", open: open_redis } }
inventory::submit! { StoreDescriptor { scheme: "rediss", open: open_redis } }

/// Opens the store a `[checkpoint] url` names.
pub async fn open(url: &str) -> Result<Arc<dyn CheckpointStore>, StoreError> {
    flowpulse_core::checkpoint::open(url).await
}

fn open_file(url: &str) -> BoxFuture<'_, Result<Arc<dyn CheckpointStore>, StoreError>> {
    let dir = url.strip_prefix("file://").unwrap_or(url);
    Box::pin(async move { Ok(Arc::new(FileStore(PathBuf::from(dir))) as Arc<dyn CheckpointStore>) })
}

fn open_redis(url: &str) -> BoxFuture<'_, Result<Arc<dyn CheckpointStore>, StoreError>> {
    Box::pin(async move {
        let unavailable = |e: String| StoreError::Unavailable(e);
        let client = crate::redis_util::client(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(2);
        let manager = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| {
                unavailable(format!(
                    "cannot reach the checkpoint store {}: {e}",
                    redact_url(url)
                ))
            })?;
        Ok(Arc::new(RedisStore(manager)) as Arc<dyn CheckpointStore>)
    })
}

struct RedisStore(ConnectionManager);

fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Escapes the glob characters of a SCAN pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Most bytes of a checkpoint in one command. Sent as one SET, a checkpoint
/// of megabytes was copied three times into fresh buffers (the command, its
/// packed form, the connection's write buffer), and faulting in their pages
/// cost more than the copies: a tenth of a checkpointed catch-up's time.
/// Pieces this size reuse the same memory, and Redis serves other clients
/// (the reads) between them.
const WRITE_CHUNK: usize = 256 * 1024;

/// Suffix of the key a large value is staged under before it replaces `KEY`.
const STAGING_SUFFIX: &str = ":writing";

/// How long a staging key outlives its last write. A crash mid-write leaves
/// a stage nothing else deletes (a part's stage is named for a part id that
/// may never be written again), so it must expire; a whole write takes
/// milliseconds, and every retry starts the stage afresh.
const STAGING_TTL: Duration = Duration::from_secs(15 * 60);

/// Whether `key` is a stage (`KEY:writing`, or `KEY:writing:TOKEN` for a
/// fenced write, so that a stale owner's stage never mixes with the
/// owner's).
fn is_staging(key: &str) -> bool {
    key.ends_with(STAGING_SUFFIX) || key.contains(":writing:")
}

/// Checks the fence (KEYS[1]) against the token (ARGV[1]) and, if it is
/// still the latest, sets KEYS[2] to ARGV[2]. Returns -1 when written, else
/// the latest token.
const SET_FENCED: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return current end
redis.call('SET', KEYS[2], ARGV[2])
return -1
";

/// The same for a value staged under KEYS[3]: renamed onto KEYS[2] (and
/// made permanent), or deleted when the fence moved.
const RENAME_FENCED: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[3])
  return current
end
redis.call('RENAME', KEYS[3], KEYS[2])
redis.call('PERSIST', KEYS[2])
return -1
";

/// The same for deleting KEYS[2].
const DELETE_FENCED: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return current end
redis.call('DEL', KEYS[2])
return -1
";

/// Takes or renews a lease (KEYS[1]) for an owner (ARGV[1]) for ARGV[2]
/// ms if it is free or the owner's: nil. Held by another: its owner.
const LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return false
end
return holder
";

/// Deletes a lease (KEYS[1]) if its owner is ARGV[1].
const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What a fenced script's answer means.
fn fenced_outcome(fence: &Fence, answer: i64) -> Result<(), StoreError> {
    if answer < 0 {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            token: fence.token,
            current: answer as u64,
        })
    }
}

/// Stages `pieces` under `staging` in chunks of at most [`WRITE_CHUNK`].
async fn stage(
    conn: &mut ConnectionManager,
    staging: &str,
    pieces: &[&[u8]],
) -> Result<(), StoreError> {
    let mut chunk = Vec::with_capacity(WRITE_CHUNK);
    let mut first = true;
    for piece in pieces {
        let mut rest = *piece;
        while !rest.is_empty() {
            let take = rest.len().min(WRITE_CHUNK - chunk.len());
            chunk.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if chunk.len() == WRITE_CHUNK {
                send_chunk(conn, staging, &chunk, first).await?;
                chunk.clear();
                first = false;
            }
        }
    }
    if !chunk.is_empty() || first {
        send_chunk(conn, staging, &chunk, first).await?;
    }
    Ok(())
}

/// Writes `chunk` to `staging`: the first one replaces it (and sets its
/// expiry), the rest append (which keeps it).
async fn send_chunk(
    conn: &mut ConnectionManager,
    staging: &str,
    chunk: &[u8],
    first: bool,
) -> Result<(), StoreError> {
    let mut command = redis::cmd(if first { "SET" } else { "APPEND" });
    command.arg(staging).arg(chunk);
    if first {
        command.arg("PX").arg(STAGING_TTL.as_millis() as u64);
    }
    command
        .query_async::<redis::Value>(conn)
        .await
        .map(drop)
        .map_err(redis_error)
}

#[async_trait]
impl CheckpointStore for RedisStore {
    async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.0.clone();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn save(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.save_joined(key, &[bytes]).await
    }

    /// A value up to [`WRITE_CHUNK`] is one SET. A larger one is staged
    /// under `KEY:writing` (SET with an expiry, then APPENDs of at most
    /// `WRITE_CHUNK`), then RENAMEd onto `KEY` and PERSISTed in one
    /// transaction: a reader sees the old value or the new one, the
    /// checkpoint never expires, and a crash midway leaves only a stage
    /// that expires after [`STAGING_TTL`].
    async fn save_joined(&self, key: &str, pieces: &[&[u8]]) -> Result<(), StoreError> {
        let mut conn = self.0.clone();
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        if total <= WRITE_CHUNK {
            return redis::cmd("SET")
                .arg(key)
                .arg(pieces.concat())
                .query_async::<()>(&mut conn)
                .await
                .map_err(redis_error);
        }
        let staging = format!("{key}{STAGING_SUFFIX}");
        stage(&mut conn, &staging, pieces).await?;
        // RENAME carries the stage's expiry over to `KEY`; PERSIST in the
        // same transaction takes it off before anyone can see it.
        redis::pipe()
            .atomic()
            .cmd("RENAME")
            .arg(&staging)
            .arg(key)
            .ignore()
            .cmd("PERSIST")
            .arg(key)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.0.clone();
        redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.0.clone();
        let pattern = format!("{}*", glob_escape(prefix));
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            // A stage is not a checkpoint: it expires on its own.
            keys.extend(batch.into_iter().filter(|key| !is_staging(key)));
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    async fn take_fence(&self, fence_key: &str) -> Result<u64, StoreError> {
        let mut conn = self.0.clone();
        redis::cmd("INCR")
            .arg(fence_key)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    /// One script checks the fence and writes; a value over
    /// [`WRITE_CHUNK`] is staged first under a key of the writer's token.
    async fn save_fenced(
        &self,
        fence: &Fence,
        key: &str,
        pieces: &[&[u8]],
    ) -> Result<(), StoreError> {
        let mut conn = self.0.clone();
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        let answer: i64 = if total <= WRITE_CHUNK {
            redis::Script::new(SET_FENCED)
                .key(&fence.key)
                .key(key)
                .arg(fence.token)
                .arg(pieces.concat())
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?
        } else {
            let staging = format!("{key}{STAGING_SUFFIX}:{}", fence.token);
            stage(&mut conn, &staging, pieces).await?;
            redis::Script::new(RENAME_FENCED)
                .key(&fence.key)
                .key(key)
                .key(&staging)
                .arg(fence.token)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?
        };
        fenced_outcome(fence, answer)
    }

    async fn lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.0.clone();
        redis::Script::new(LEASE)
            .key(key)
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let mut conn = self.0.clone();
        redis::Script::new(RELEASE_LEASE)
            .key(key)
            .arg(owner)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(redis_error)
    }

    async fn delete_fenced(&self, fence: &Fence, key: &str) -> Result<(), StoreError> {
        let mut conn = self.0.clone();
        let answer: i64 = redis::Script::new(DELETE_FENCED)
            .key(&fence.key)
            .key(key)
            .arg(fence.token)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        fenced_outcome(fence, answer)
    }
}

struct FileStore(PathBuf);

/// Keys become file names: `:` and `/` are not safe in every file system.
fn file_name(key: &str) -> String {
    key.replace([':', '/'], "_")
}

impl FileStore {
    fn path(&self, key: &str) -> PathBuf {
        self.0.join(file_name(key))
    }

    /// Holds the lock of `fence_key` (an exclusive lock on its own file,
    /// held by other processes too) until the returned file is dropped.
    async fn lock(&self, fence_key: &str) -> Result<std::fs::File, StoreError> {
        tokio::fs::create_dir_all(&self.0).await?;
        let mut path = self.path(fence_key).into_os_string();
        path.push(".lock");
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("the lock task stopped: {e}")))?
    }

    /// Under the fence's lock: whether `fence.token` is still the latest.
    async fn check(&self, fence: &Fence) -> Result<(), StoreError> {
        let current = self.fence_of(&fence.key).await?;
        if current == fence.token {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                token: fence.token,
                current,
            })
        }
    }
}

#[async_trait]
impl CheckpointStore for FileStore {
    async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match tokio::fs::read(self.path(key)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn save(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        crate::durable::write_atomic(&self.path(key), bytes).await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // File names lost the `:`s of their keys: compare in that form and
        // give back names that map to the same files.
        let wanted = file_name(prefix);
        let mut entries = match tokio::fs::read_dir(&self.0).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut keys = Vec::new();
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(&wanted) {
                if !rest.ends_with(".tmp") && !rest.ends_with(".lock") {
                    keys.push(format!("{prefix}{rest}"));
                }
            }
        }
        Ok(keys)
    }

    async fn take_fence(&self, fence_key: &str) -> Result<u64, StoreError> {
        let _lock = self.lock(fence_key).await?;
        let next = self.fence_of(fence_key).await? + 1;
        crate::durable::write_atomic(&self.path(fence_key), next.to_string().as_bytes()).await?;
        Ok(next)
    }

    async fn save_fenced(
        &self,
        fence: &Fence,
        key: &str,
        pieces: &[&[u8]],
    ) -> Result<(), StoreError> {
        let _lock = self.lock(&fence.key).await?;
        self.check(fence).await?;
        self.save(key, &pieces.concat()).await
    }

    async fn delete_fenced(&self, fence: &Fence, key: &str) -> Result<(), StoreError> {
        let _lock = self.lock(&fence.key).await?;
        self.check(fence).await?;
        self.delete(key).await
    }

    /// The lease file holds `EXPIRY_MS OWNER`, read and written under its lock.
    async fn lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let _lock = self.lock(key).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Some(bytes) = self.load(key).await? {
            let text = String::from_utf8_lossy(&bytes);
            if let Some((expiry, holder)) = text.split_once(' ') {
                let live = expiry.parse::<u64>().is_ok_and(|e| e > now);
                if live && holder != owner {
                    return Ok(Some(holder.to_owned()));
                }
            }
        }
        let value = format!("{} {owner}", now + ttl.as_millis() as u64);
        self.save(key, value.as_bytes()).await?;
        Ok(None)
    }

    async fn release_lease(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let _lock = self.lock(key).await?;
        if let Some(bytes) = self.load(key).await? {
            if String::from_utf8_lossy(&bytes)
                .split_once(' ')
                .map(|(_, h)| h)
                == Some(owner)
            {
                self.delete(key).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_store_lists_keys_by_prefix_and_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore(dir.path().to_owned());
        store.save("a:b:part:1", b"one").await.unwrap();
        store.save("a:b:part:22", b"two").await.unwrap();
        store.save("a:c", b"other").await.unwrap();
        let mut keys = store.keys_with_prefix("a:b:part:").await.unwrap();
        keys.sort();
        assert_eq!(keys, vec!["a:b:part:1", "a:b:part:22"]);
        store.delete(&keys[0]).await.unwrap();
        assert_eq!(store.load("a:b:part:1").await.unwrap(), None);
        assert_eq!(
            store.load("a:c").await.unwrap().as_deref(),
            Some(&b"other"[..])
        );
    }

    #[test]
    fn scan_patterns_escape_glob_characters() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
