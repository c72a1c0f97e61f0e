//! End-to-end acknowledgement.
//!
//! A source hands every batch an [`AckHandle`]. Every record derived from the
//! batch carries a clone of it; whoever finishes with a record drops its clone
//! (a sink once its write is durable, a filter at once). When the last clone is
//! gone, the source's [`AckReceipt`] resolves with the batch's fate, and only
//! then does the source acknowledge upstream (XACK, a committed file offset …).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The fate of a batch once every record derived from it is finished with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    /// Every sink that received records of the batch took them.
    Delivered,
    /// At least one sink failed to take records of the batch; the source
    /// should not acknowledge it upstream (it will be delivered again).
    Failed,
}

struct AckInner {
    failed: AtomicBool,
    notify: Mutex<Option<oneshot::Sender<BatchStatus>>>,
}

impl Drop for AckInner {
    fn drop(&mut self) {
        let status = if self.failed.load(Ordering::Acquire) {
            BatchStatus::Failed
        } else {
            BatchStatus::Delivered
        };
        let sender = match self.notify.get_mut() {
            Ok(slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(sender) = sender {
            // The source may have stopped waiting (shutdown); nothing to do then.
            let _ = sender.send(status);
        }
    }
}

/// A cheap clonable token whose last clone, when dropped, reports the batch's
/// fate to the source that created it.
#[derive(Clone)]
pub struct AckHandle(Arc<AckInner>);

impl std::fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckHandle")
            .field("failed", &self.0.failed.load(Ordering::Relaxed))
            .finish()
    }
}

impl AckHandle {
    /// Creates a handle and the receipt its source awaits.
    pub fn new() -> (AckHandle, AckReceipt) {
        let (tx, rx) = oneshot::channel();
        let inner = AckInner {
            failed: AtomicBool::new(false),
            notify: Mutex::new(Some(tx)),
        };
        (AckHandle(Arc::new(inner)), AckReceipt(rx))
    }

    /// Marks the batch as failed: its source will not acknowledge it.
    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }
}

/// Resolves once every clone of its [`AckHandle`] has been dropped.
#[derive(Debug)]
pub struct AckReceipt(oneshot::Receiver<BatchStatus>);

impl AckReceipt {
    /// The batch's fate if it is known already, without waiting.
    pub fn try_status(&mut self) -> Option<BatchStatus> {
        match self.0.try_recv() {
            Ok(status) => Some(status),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(BatchStatus::Failed),
        }
    }
}

impl std::future::Future for AckReceipt {
    type Output = BatchStatus;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<BatchStatus> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|result| result.unwrap_or(BatchStatus::Failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn receipt_resolves_only_after_last_clone_is_dropped() {
        let (handle, mut receipt) = AckHandle::new();
        let clone = handle.clone();
        drop(handle);
        assert!(futures::poll!(&mut receipt).is_pending());
        drop(clone);
        assert_eq!(receipt.await, BatchStatus::Delivered);
    }

    #[test]
    fn try_status_tells_the_fate_once_known() {
        let (handle, mut receipt) = AckHandle::new();
        assert_eq!(receipt.try_status(), None);
        drop(handle);
        assert_eq!(receipt.try_status(), Some(BatchStatus::Delivered));
    }

    #[tokio::test]
    async fn one_failing_clone_fails_the_batch() {
        let (handle, receipt) = AckHandle::new();
        let clone = handle.clone();
        clone.fail();
        drop(clone);
        drop(handle);
        assert_eq!(receipt.await, BatchStatus::Failed);
    }
}
