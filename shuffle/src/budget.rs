//! A byte budget with back-pressure: writers wait for room instead of
//! growing memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A fixed number of bytes shared by everything that buffers shuffle data.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    bytes: usize,
    permits: Arc<Semaphore>,
}

/// Bytes held from a [`MemoryBudget`]; returned when dropped.
#[derive(Debug)]
pub struct BudgetPermit {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
}

impl BudgetPermit {
    /// Bytes this permit holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl MemoryBudget {
    /// A budget of `bytes` (at least 1).
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes,
            permits: Arc::new(Semaphore::new(bytes)),
        }
    }

    /// Total size of the budget.
    pub fn capacity(&self) -> usize {
        self.bytes
    }

    /// Bytes not held by anyone.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Waits until `bytes` are free and holds them. A request larger than
    /// the whole budget holds the whole budget, so one oversized block can
    /// still pass, alone.
    pub async fn acquire(&self, bytes: usize) -> BudgetPermit {
        let n = bytes.clamp(1, self.bytes);
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(n as u32)
            .await
            .expect("the budget's semaphore is never closed");
        BudgetPermit {
            _permit: permit,
            bytes: n,
        }
    }

    /// Holds `bytes` if they are free now.
    pub fn try_acquire(&self, bytes: usize) -> Option<BudgetPermit> {
        let n = bytes.clamp(1, self.bytes);
        Arc::clone(&self.permits)
            .try_acquire_many_owned(n as u32)
            .ok()
            .map(|permit| BudgetPermit {
                _permit: permit,
                bytes: n,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writers_wait_for_room() {
        let budget = MemoryBudget::new(100);
        let a = budget.acquire(60).await;
        assert!(budget.try_acquire(50).is_none(), "over budget must wait");
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(50).await.bytes() })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        assert_eq!(waiter.await.unwrap(), 50);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn oversized_request_takes_whole_budget() {
        let budget = MemoryBudget::new(10);
        let p = budget.acquire(1_000).await;
        assert_eq!(p.bytes(), 10);
        assert_eq!(budget.available(), 0);
    }
}
