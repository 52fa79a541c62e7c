//! The link between an HTTP/1 connection's loop (`server::h1`) and the body of the request in
//! flight on it: the connection and its read buffer behind one mutex, which the loop takes
//! between requests and the body's reader takes while it reads.
//!
//! [`RequestBody`] is one of the proxy's body variants, so it sits below the body type and the
//! loop above it: this file knows nothing of either.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWrite;

use crate::errors::BoxError;
use crate::http::h1::{CodecError, Fill, Framing, poll_decode};
use crate::io::Conn;

/// What the client is told before it sends a body it announced with `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the connection's loop and the body of its current request share.
pub struct Link {
    pub io: Conn,
    pub read: BytesMut,
    pub read_size: usize,
    /// The request body still to read, for request number `generation`.
    pub body: Framing,
    pub generation: u64,
    /// `100 Continue` owed to the client before its body is read: how much of it has been
    /// written (its whole length: written, not yet flushed).
    pub continue_owed: Option<usize>,
}

impl Fill for Link {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.read
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        crate::io::poll_fill(&mut self.io, &mut self.read, &mut self.read_size, cx)
    }
}

impl Link {
    /// Writes the `100 Continue` the client waits for, if it is owed.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some(done) = self.continue_owed {
            if done < CONTINUE.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &CONTINUE[done..]))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                self.continue_owed = Some(done + n);
            } else {
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                self.continue_owed = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A link as the loop and a request body hold it.
pub type LinkRef = Arc<Mutex<Link>>;

/// Takes the link, poisoned or not.
pub fn lock(link: &Mutex<Link>) -> MutexGuard<'_, Link> {
    weft_api::sync::lock(link)
}

/// A request body, read from the client's connection by whoever polls it.
pub struct RequestBody {
    link: LinkRef,
    generation: u64,
}

impl RequestBody {
    /// The body of request number `generation` on `link`.
    pub fn new(link: LinkRef, generation: u64) -> RequestBody {
        RequestBody { link, generation }
    }
}

/// A request body the client did not send as it said it would.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("the client closed the connection inside the request body")]
    Closed,
    #[error("malformed request body: {0}")]
    Malformed(&'static str),
    #[error("reading the request body: {0}")]
    Io(std::io::Error),
    #[error("the request is over: its body can no longer be read")]
    Over,
}

impl From<CodecError> for RequestBodyError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) => RequestBodyError::Io(e),
            CodecError::Closed => RequestBodyError::Closed,
            CodecError::Malformed(what) => RequestBodyError::Malformed(what),
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut link = lock(&self.link);
        if link.generation != self.generation {
            return Poll::Ready(Some(Err(RequestBodyError::Over.into())));
        }
        if let Err(e) = ready!(link.poll_continue(cx)) {
            return Poll::Ready(Some(Err(RequestBodyError::Io(e).into())));
        }
        let mut framing = link.body;
        let frame = poll_decode(&mut framing, &mut *link, cx);
        link.body = match frame {
            // A broken body is over: nothing more is read for it.
            Poll::Ready(Some(Err(_))) => Framing::Done,
            _ => framing,
        };
        frame.map(|f| f.map(|r| r.map_err(|e| RequestBodyError::from(e).into())))
    }

    fn is_end_stream(&self) -> bool {
        // A body whose request is over has not ended: it was cut off.
        let link = lock(&self.link);
        link.generation == self.generation && link.body == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        let link = lock(&self.link);
        match link.body {
            _ if link.generation != self.generation => SizeHint::default(),
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
