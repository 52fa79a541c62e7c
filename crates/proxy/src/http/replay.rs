//! Replaying a request body for a retry or a mirror.
//!
//! The first attempt's body streams as usual while a [`Recorder`] keeps a copy of up to
//! [`MAX_REPLAY`] bytes. Nothing waits for the body: a streaming request (a gRPC client
//! stream, say) flows as it comes. A retry can replay the body only if the first attempt read
//! it to its end within the limit; a larger body is simply not retried. [`TeeBody`] records
//! any body it wraps (`TeeBody<B>`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tokio::sync::Notify;

use weft_api::sync::lock;

use crate::errors::BoxError;

/// The largest body kept for replay.
pub const MAX_REPLAY: usize = 64 * 1024;

#[derive(Default)]
struct Recording {
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    complete: bool,
    /// Too large, failed, or abandoned: never replayable.
    spoiled: bool,
}

/// The recording, and the signal that it has settled, shared by the tee that writes it and the
/// retries and mirrors that read it.
#[derive(Default)]
struct Tape {
    recording: Mutex<Recording>,
    settled: Notify,
}

/// A copy of a request body as it streams past.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Tape>);

impl Recorder {
    /// A recorder of a body that is already known to be empty.
    pub fn empty() -> Recorder {
        let r = Recorder::default();
        r.lock().complete = true;
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        lock(&self.0.recording)
    }

    /// Wraps the original body so that it records as it streams.
    pub fn tee<B: http_body::Body>(&self, inner: B) -> TeeBody<B> {
        TeeBody {
            inner: Box::new(inner),
            recorder: self.clone(),
        }
    }

    /// The recorded body, when the whole of it was recorded.
    pub fn replay(&self) -> Option<ReplayBody> {
        let r = self.lock();
        (r.complete && !r.spoiled).then(|| ReplayBody {
            chunks: r.chunks.iter().cloned().collect(),
            trailers: r.trailers.clone(),
            len: r.len,
        })
    }

    /// Waits until the body has been recorded or cannot be, then [`Recorder::replay`].
    pub async fn settled(&self) -> Option<ReplayBody> {
        loop {
            let notified = self.0.settled.notified();
            {
                let r = self.lock();
                if r.complete || r.spoiled {
                    break;
                }
            }
            notified.await;
        }
        self.replay()
    }

    fn finish(&self) {
        self.lock().complete = true;
        self.0.settled.notify_waiters();
    }

    fn spoil(&self) {
        let mut r = self.lock();
        if !r.complete {
            r.spoiled = true;
            r.chunks.clear();
        }
        drop(r);
        self.0.settled.notify_waiters();
    }
}

/// The first attempt's body: the original, recorded on the way. (The original is boxed: the
/// proxy's body type holds a tee of itself.)
pub struct TeeBody<B: http_body::Body> {
    inner: Box<B>,
    recorder: Recorder,
}

impl<B> http_body::Body for TeeBody<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                let mut r = self.recorder.lock();
                if !r.spoiled {
                    if let Some(data) = frame.data_ref() {
                        r.len += data.len();
                        if r.len > MAX_REPLAY {
                            r.spoiled = true;
                            r.chunks.clear();
                        } else {
                            r.chunks.push(data.clone());
                        }
                    } else if let Some(trailers) = frame.trailers_ref() {
                        r.trailers = Some(trailers.clone());
                    }
                }
                let spoiled = r.spoiled;
                drop(r);
                if spoiled {
                    self.recorder.0.settled.notify_waiters();
                } else if self.inner.is_end_stream() {
                    // hyper stops polling a body that says it has ended.
                    self.recorder.finish();
                }
            }
            Poll::Ready(None) => self.recorder.finish(),
            Poll::Ready(Some(Err(_))) => self.recorder.spoil(),
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: http_body::Body> Drop for TeeBody<B> {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.recorder.finish();
        } else {
            // Dropped before its end: what was recorded is not the whole body.
            self.recorder.spoil();
        }
    }
}

/// A recorded body, sent again.
pub struct ReplayBody {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    len: usize,
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            self.len -= chunk.len();
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len as u64)
    }
}
