//! Memory budgets: how many bytes of request bodies (intake) or of
//! attachments read back for deliveries (workers) are held at once,
//! counted in KiB permits of a semaphore.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    kib: u32,
}

/// Room taken from a [`MemoryBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reserved {
    _permits: OwnedSemaphorePermit,
}

impl MemoryBudget {
    pub fn mib(mib: usize) -> Self {
        let kib = u32::try_from(mib.saturating_mul(1024).min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX).max(1);
        Self { permits: Arc::new(Semaphore::new(kib as usize)), kib }
    }

    /// KiB for `bytes`; more than the whole budget takes all of it, so
    /// that one large item still gets through, alone.
    fn kib_for(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, self.kib)
    }

    /// Room for `bytes` now, or `None`.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reserved> {
        let permits = self.permits.clone().try_acquire_many_owned(self.kib_for(bytes)).ok()?;
        Some(Reserved { _permits: permits })
    }

    /// Room for `bytes`, once there is.
    pub async fn reserve(&self, bytes: u64) -> Reserved {
        let permits = self.permits.clone().acquire_many_owned(self.kib_for(bytes)).await;
        Reserved { _permits: permits.expect("a memory budget's semaphore is never closed") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_taken_and_given_back_and_a_giant_takes_all() {
        let budget = MemoryBudget::mib(1);
        let half = budget.try_reserve(512 * 1024).unwrap();
        assert!(budget.try_reserve(600 * 1024).is_none());
        let rest = budget.try_reserve(400 * 1024).unwrap();
        drop((half, rest));
        let giant = budget.try_reserve(50 << 20).expect("larger than the budget: all of it");
        assert!(budget.try_reserve(1).is_none());
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(giant);
        waiting.await.unwrap();
    }
}
