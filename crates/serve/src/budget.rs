//! The decode-memory budget. A PNG under 1 MB can declare 7,900 × 7,900 pixels
//! and take half a GiB while it decodes, so a decoder slot alone does not
//! bound memory: before decoding, a request reserves what its image needs
//! (read from the header by `verger_image::decode_need`) from a weighted
//! semaphore holding the whole budget, in KiB (tokio's `acquire_many`
//! counts in `u32`). tokio's semaphore is fair, so a large image at the
//! head of the queue is not starved by a stream of small ones.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why no room was reserved.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// More than the whole budget: waiting would never help.
    #[error("the decode needs {need} bytes, over the whole budget of {budget} bytes")]
    OverBudget { need: u64, budget: u64 },
    /// The budget or every decoder stayed busy for the whole wait.
    #[error("no room to decode {need} bytes within {waited:?}")]
    Busy { need: u64, waited: Duration },
}

/// Memory and decoder slots, shared by every request.
pub struct DecodeBudget {
    memory: Arc<Semaphore>,
    total_kib: u32,
    decoders: Arc<Semaphore>,
    wait: Duration,
}

/// Held while one image decodes; dropping it gives the room back.
pub struct Reservation {
    _memory: OwnedSemaphorePermit,
    _decoder: OwnedSemaphorePermit,
}

impl DecodeBudget {
    /// `bytes` of decode memory and `decoders` parallel decodes; a request
    /// waits at most `wait` for both.
    pub fn new(bytes: u64, decoders: usize, wait: Duration) -> Self {
        let total_kib = u32::try_from(bytes / 1024)
            .unwrap_or(u32::MAX)
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        DecodeBudget {
            memory: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            decoders: Arc::new(Semaphore::new(decoders.max(1))),
            wait,
        }
    }

    /// The whole budget, bytes.
    pub fn total_bytes(&self) -> u64 {
        u64::from(self.total_kib) * 1024
    }

    /// Reserves `need` bytes and a decoder, waiting at most the configured
    /// time; a need over the whole budget is refused at once.
    pub async fn reserve(&self, need: u64) -> Result<Reservation, BudgetError> {
        let over = || BudgetError::OverBudget {
            need,
            budget: self.total_bytes(),
        };
        let kib = u32::try_from(need.div_ceil(1024)).map_err(|_| over())?;
        if kib > self.total_kib {
            return Err(over());
        }
        let both = async {
            let memory = Arc::clone(&self.memory)
                .acquire_many_owned(kib.max(1))
                .await;
            let decoder = Arc::clone(&self.decoders).acquire_owned().await;
            (memory, decoder)
        };
        match tokio::time::timeout(self.wait, both).await {
            Ok((Ok(memory), Ok(decoder))) => Ok(Reservation {
                _memory: memory,
                _decoder: decoder,
            }),
            // The semaphores are never closed; treat it as a full budget.
            Ok(_) | Err(_) => Err(BudgetError::Busy {
                need,
                waited: self.wait,
            }),
        }
    }

    /// Bytes reserved right now (for `/metrics`).
    pub fn reserved_bytes(&self) -> u64 {
        let free = self.memory.available_permits() as u64;
        (u64::from(self.total_kib) - free.min(u64::from(self.total_kib))) * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_need_over_the_whole_budget_is_refused_at_once() {
        let budget = DecodeBudget::new(1 << 20, 2, Duration::from_secs(3600));
        let err = budget.reserve((1 << 20) + 1).await.err().unwrap();
        assert!(matches!(err, BudgetError::OverBudget { .. }), "{err}");
        assert!(budget.reserve(1 << 20).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_makes_the_next_request_wait_then_give_up() {
        let budget = DecodeBudget::new(1 << 20, 4, Duration::from_secs(5));
        let held = budget.reserve(700 * 1024).await.unwrap();
        assert_eq!(budget.reserved_bytes(), 700 * 1024);
        // 700 KiB + 400 KiB > 1 MiB: waits the whole 5 s (paused clock), then Busy.
        let err = budget.reserve(400 * 1024).await.err().unwrap();
        assert!(matches!(err, BudgetError::Busy { .. }), "{err}");
        drop(held);
        assert_eq!(budget.reserved_bytes(), 0);
        assert!(budget.reserve(400 * 1024).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn decoders_are_limited_as_well_as_memory() {
        let budget = DecodeBudget::new(1 << 20, 1, Duration::from_secs(5));
        let held = budget.reserve(1024).await.unwrap();
        let err = budget.reserve(1024).await.err().unwrap();
        assert!(matches!(err, BudgetError::Busy { .. }), "{err}");
        drop(held);
        assert!(budget.reserve(1024).await.is_ok());
    }
}
