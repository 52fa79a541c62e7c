//! The one lock helper both binaries use.
//!
//! A panic while a lock is held poisons it in std. The proxy and the control plane never
//! panic on input, and what their locks guard (counters, idle connections, a recording) stays
//! consistent at every unlock, so a poisoned lock is taken as it is rather than spreading the
//! panic to every later request.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, poisoned or not.
#[inline]
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock();
            panic!("poisoning on purpose");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
