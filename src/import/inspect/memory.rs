//! The memory xz decoders of all imports may hold together. Each decoder starts with a
//! reservation that fits `xz -6` files decoded on two threads, and grows to the per-import
//! ceiling only when its file asks for it (`xz -9` and larger dictionaries); what the pool
//! cannot give now is retried later, never taken past the total.

use std::fmt;
use std::sync::{Arc, Mutex};

/// What a decoder first reserves: enough for `xz -6 -T` (an 8 MiB dictionary and 24 MiB
/// blocks) on two threads.
pub const INITIAL_RESERVATION: u64 = 48 << 20;
/// The least a decoder starts with: one thread of `xz -6` needs about 9 MiB.
pub const SMALLEST_RESERVATION: u64 = 16 << 20;
/// The most one decoder may hold: `xz -9` needs 65 MiB; larger dictionaries are refused.
pub const MAX_PER_DECODER: u64 = 128 << 20;

/// A pool of decoder memory shared by the imports of one daemon.
#[derive(Clone)]
pub struct DecoderMemory {
    inner: Arc<Pool>,
}

struct Pool {
    total: u64,
    available: Mutex<u64>,
}

impl DecoderMemory {
    pub fn new(total: u64) -> Self {
        Self {
            inner: Arc::new(Pool {
                total,
                available: Mutex::new(total),
            }),
        }
    }

    pub fn total(&self) -> u64 {
        self.inner.total
    }

    /// What no decoder holds now.
    pub fn available(&self) -> u64 {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.inner
            .available
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Up to [`INITIAL_RESERVATION`], at least [`SMALLEST_RESERVATION`]; None when the pool
    /// has less than that left.
    pub fn reserve(&self) -> Option<Reservation> {
        let mut available = self.lock();
        let bytes = INITIAL_RESERVATION.min(*available);
        if bytes < SMALLEST_RESERVATION.min(self.inner.total) || bytes == 0 {
            return None;
        }
        *available -= bytes;
        Some(Reservation {
            pool: self.clone(),
            bytes,
        })
    }
}

impl Default for DecoderMemory {
    /// Two decoders at their first reservation and room to grow one of them.
    fn default() -> Self {
        Self::new(2 * INITIAL_RESERVATION + (MAX_PER_DECODER - INITIAL_RESERVATION))
    }
}

impl fmt::Debug for DecoderMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecoderMemory")
            .field("total", &self.inner.total)
            .field("available", &self.available())
            .finish()
    }
}

impl PartialEq for DecoderMemory {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for DecoderMemory {}

/// Memory one decoder holds; returned to the pool when dropped.
#[derive(Debug)]
pub struct Reservation {
    pool: DecoderMemory,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The pool it came from.
    pub fn pool(&self) -> DecoderMemory {
        self.pool.clone()
    }

    /// Grows the reservation to `wanted` (at most [`MAX_PER_DECODER`]); false when the pool
    /// cannot give that much now, or `wanted` is past the ceiling.
    pub fn grow_to(&mut self, wanted: u64) -> bool {
        if wanted > MAX_PER_DECODER {
            return false;
        }
        let more = wanted.saturating_sub(self.bytes);
        let mut available = self.pool.lock();
        if more > *available {
            return false;
        }
        *available -= more;
        self.bytes += more;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        *self.pool.lock() += self.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_take_more_than_the_pool_and_come_back_when_dropped() {
        let pool = DecoderMemory::new(200 << 20);
        let first = pool.reserve().unwrap();
        let mut second = pool.reserve().unwrap();
        let third = pool.reserve().unwrap();
        let fourth = pool.reserve().unwrap();
        assert_eq!(
            [first.bytes(), second.bytes(), third.bytes(), fourth.bytes()],
            [48 << 20; 4]
        );
        // 8 MiB left: less than the smallest reservation.
        assert!(pool.reserve().is_none());
        assert!(!second.grow_to(MAX_PER_DECODER), "80 MiB more, 8 left");
        drop(first);
        drop(third);
        assert!(second.grow_to(MAX_PER_DECODER));
        assert!(!second.grow_to(MAX_PER_DECODER + 1), "past the ceiling");
        assert_eq!(pool.available(), (200 << 20) - MAX_PER_DECODER - (48 << 20));
        drop(second);
        drop(fourth);
        assert_eq!(pool.available(), pool.total());
    }

    #[test]
    fn a_pool_smaller_than_the_smallest_reservation_still_serves_one_decoder() {
        let pool = DecoderMemory::new(8 << 20);
        let only = pool.reserve().unwrap();
        assert_eq!(only.bytes(), 8 << 20);
        assert!(pool.reserve().is_none());
    }
}
