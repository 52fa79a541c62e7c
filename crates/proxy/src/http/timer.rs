//! A coarse timer for hyper's HTTP/1 header-read deadline.
//!
//! hyper arms a new sleep each time it waits for a request head on a keep-alive connection,
//! and drops it as soon as the head arrives, so the sleep almost never fires. With tokio's
//! timer, every request then paid for an allocation, an insert into and a removal from the
//! timer wheel, and a wheel that every park of the runtime had to consult: about 700
//! instructions per request under callgrind, for a deadline measured in seconds.
//!
//! A [`CoarseTimer`] sleep is a slot in a list instead: arming it is a push, dropping it frees
//! the slot. One ticker task, running only while some sleep is armed, looks at the list every
//! [`TICK`] and wakes the sleeps whose deadline has passed. A deadline fires at most one tick
//! late, and never early.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// How often armed deadlines are checked.
pub const TICK: Duration = Duration::from_millis(250);

/// hyper's [`Timer`], with coarse sleeps. Cloning shares the list.
#[derive(Clone, Default)]
pub struct CoarseTimer {
    list: Arc<Mutex<List>>,
}

impl std::fmt::Debug for CoarseTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoarseTimer").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct List {
    slots: Vec<Slot>,
    free: Vec<usize>,
    armed: usize,
    /// Whether the ticker task runs; it stops when nothing is armed.
    ticking: bool,
}

#[derive(Default)]
struct Slot {
    armed: bool,
    fired: bool,
    deadline: Option<Instant>,
    waker: Option<Waker>,
}

fn lock(list: &Mutex<List>) -> MutexGuard<'_, List> {
    weft_api::sync::lock(list)
}

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(CoarseSleep {
            list: self.list.clone(),
            deadline,
            slot: None,
        })
    }
}

/// A sleep that takes a slot in the list on its first poll and frees it when dropped.
struct CoarseSleep {
    list: Arc<Mutex<List>>,
    deadline: Instant,
    slot: Option<usize>,
}

impl Sleep for CoarseSleep {}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut list = lock(&this.list);
        let index = match this.slot {
            Some(index) => index,
            None => {
                let index = list.arm(this.deadline);
                this.slot = Some(index);
                if !list.ticking {
                    list.ticking = true;
                    tokio::spawn(tick(this.list.clone()));
                }
                index
            }
        };
        let slot = &mut list.slots[index];
        if slot.fired {
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if let Some(index) = self.slot {
            lock(&self.list).disarm(index);
        }
    }
}

impl List {
    fn arm(&mut self, deadline: Instant) -> usize {
        let slot = Slot {
            armed: true,
            fired: false,
            deadline: Some(deadline),
            waker: None,
        };
        self.armed += 1;
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = slot;
                index
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    fn disarm(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index)
            && slot.armed
        {
            *slot = Slot::default();
            self.free.push(index);
            self.armed -= 1;
        }
    }

    /// Marks the armed slots whose deadline has passed as fired, and returns their wakers.
    fn expire(&mut self, now: Instant) -> Vec<Waker> {
        let mut wake = Vec::new();
        for slot in &mut self.slots {
            if slot.armed && !slot.fired && slot.deadline.is_some_and(|d| d <= now) {
                slot.fired = true;
                wake.extend(slot.waker.take());
            }
        }
        wake
    }
}

/// Wakes expired sleeps every [`TICK`] while any sleep is armed.
async fn tick(list: Arc<Mutex<List>>) {
    loop {
        tokio::time::sleep(TICK).await;
        let wake = {
            let mut list = lock(&list);
            if list.armed == 0 {
                list.ticking = false;
                // Forget the slots of a burst now over.
                list.slots.clear();
                list.free.clear();
                return;
            }
            list.expire(Instant::now())
        };
        for waker in wake {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sleep_fires_after_its_deadline_and_not_before() {
        let timer = CoarseTimer::default();
        let start = Instant::now();
        timer.sleep(Duration::from_millis(300)).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300), "fired early: {took:?}");
    }

    #[tokio::test]
    async fn dropped_sleeps_free_their_slots_and_the_ticker_stops() {
        let timer = CoarseTimer::default();
        let mut sleeps: Vec<_> = (0..100)
            .map(|_| timer.sleep(Duration::from_secs(60)))
            .collect();
        let mut cx = Context::from_waker(Waker::noop());
        for s in &mut sleeps {
            assert!(s.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(lock(&timer.list).armed, 100);
        drop(sleeps);
        assert_eq!(lock(&timer.list).armed, 0);
        // A slot freed is reused.
        let mut again = timer.sleep(Duration::from_secs(60));
        assert!(again.as_mut().poll(&mut cx).is_pending());
        assert_eq!(lock(&timer.list).slots.len(), 100);
        drop(again);
        // With nothing armed, the ticker stops at its next tick.
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&timer.list).ticking {
            assert!(Instant::now() < deadline, "the ticker never stopped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(lock(&timer.list).slots.is_empty());
    }

    #[tokio::test]
    async fn a_short_sleep_among_long_ones_fires_alone() {
        let timer = CoarseTimer::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut long = timer.sleep(Duration::from_secs(60));
        assert!(long.as_mut().poll(&mut cx).is_pending());
        timer.sleep(Duration::from_millis(50)).await;
        assert!(long.as_mut().poll(&mut cx).is_pending());
    }
}
