//! [`within`]: a future cut off at an optional deadline.
//!
//! `match limit { Some(t) => timeout(t, fut).await, None => fut.await }` keeps `fut` twice in
//! the enclosing future's state (once per arm). The request path has two of these (request
//! and attempt timeouts); each is one [`within`] over a future pinned where it stands, so the
//! wrapper holds a pointer and a request's future does not grow with its deadlines.
//!
//! Why the size matters: every request's future is moved whole a few times (and boxed per
//! request, see `http::server`), and before the request path kept it small (7.0 KB, now 3.7)
//! a freed one could land in jemalloc's 8 KiB class and dirty the pages of the 8 KiB buffers
//! that idle connections hold. At 3.7 KB (a little more since it holds the HTTP/1 exchange of
//! `upstream::h1`) it stays clear of those buffers' class.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pin_project! {
    /// The future returned by [`within`].
    #[derive(Debug)]
    pub struct Within<F> {
        #[pin]
        inner: F,
        // Boxed: most requests have no deadline and pay nothing for one.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

/// `inner`'s output, or `None` when `deadline` passes first. Without a deadline it is `inner`.
#[inline(always)]
pub fn within<F: Future>(deadline: Option<Instant>, inner: F) -> Within<F> {
    Within {
        inner,
        sleep: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Some(out));
        }
        match this.sleep.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_off_only_when_there_is_one() {
        let slow = || tokio::time::sleep(Duration::from_secs(10));
        let soon = Some(Instant::now() + Duration::from_secs(1));
        assert_eq!(within(soon, slow()).await, None);
        assert_eq!(within(None, slow()).await, Some(()));
        let late = Some(Instant::now() + Duration::from_secs(60));
        assert_eq!(within(late, async { 7 }).await, Some(7));
    }
}
