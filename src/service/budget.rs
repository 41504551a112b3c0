//! The bytes all open ingests may buffer together (`max_ingest_buffer_bytes`): each upload
//! takes its share as its text arrives and gives it back when its ingest ends, so that many
//! uploads at once cannot exhaust the daemon's memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::error::{Result, ServiceError};

/// A pool of bytes shared by the open ingests.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    limit: usize,
    held: Arc<AtomicUsize>,
}

impl ByteBudget {
    /// Returns a pool of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: Arc::default(),
        }
    }

    /// Returns an empty share of the pool; it grows with [`Hold::grow`].
    pub fn hold(&self) -> Hold {
        Hold {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Returns the bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// One upload's share of a [`ByteBudget`], given back when dropped.
#[derive(Debug)]
pub struct Hold {
    budget: ByteBudget,
    bytes: usize,
}

impl Hold {
    /// Takes `n` more bytes, or refuses with [`ServiceError::BuffersFull`] when the pool
    /// would go over its limit.
    pub fn grow(&mut self, n: usize) -> Result<()> {
        let limit = self.budget.limit;
        self.budget
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(n).filter(|&total| total <= limit)
            })
            .map_err(|_| ServiceError::BuffersFull { limit })?;
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_share_the_limit_and_give_back_when_dropped() {
        let budget = ByteBudget::new(100);
        let mut a = budget.hold();
        a.grow(60).unwrap();
        let mut b = budget.hold();
        assert!(matches!(
            b.grow(50),
            Err(ServiceError::BuffersFull { limit: 100 })
        ));
        b.grow(40).unwrap();
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 40);
        b.grow(60).unwrap();
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
