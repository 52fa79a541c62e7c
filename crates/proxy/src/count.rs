//! A place in a shared count (connections open, streams in use), given back when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One place in `count`, for as long as it lives.
pub struct Counted(Arc<AtomicUsize>);

impl Counted {
    pub fn take(count: &Arc<AtomicUsize>) -> Counted {
        count.fetch_add(1, Ordering::AcqRel);
        Counted(count.clone())
    }

    /// A place, if fewer than `max` were taken (a place refused is given back at once).
    pub fn try_take(count: &Arc<AtomicUsize>, max: usize) -> Option<Counted> {
        let before = count.fetch_add(1, Ordering::AcqRel);
        let counted = Counted(count.clone());
        (before < max).then_some(counted)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_given_back_and_none_beyond_the_max() {
        let count = Arc::new(AtomicUsize::new(0));
        let a = Counted::try_take(&count, 2).unwrap();
        let b = Counted::try_take(&count, 2).unwrap();
        assert!(Counted::try_take(&count, 2).is_none());
        assert_eq!(
            count.load(Ordering::Acquire),
            2,
            "a refused place is given back"
        );
        drop(a);
        assert!(Counted::try_take(&count, 2).is_some());
        drop(b);
        assert_eq!(count.load(Ordering::Acquire), 0);
    }
}
