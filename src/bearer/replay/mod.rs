//! Request bodies that the bearer-token layer can send a second time after a claims challenge.
//!
//! When Continuous Access Evaluation is on, a request may be answered with a 401 that asks for
//! a token with more claims; the layer then sends the same request again, once. To do that it
//! needs the body twice. [`RetryBody::prepare`] is called before the first send and hands back
//! the body to send now plus a [`Replay`] handle for the second send.
//!
//! * `Full<Bytes>` and `Empty<Bytes>` are cloned, which copies no data: they can always be
//!   replayed. (The first clone of a `Bytes` made from a `Vec` allocates its small shared
//!   header.)
//! * A `String` is cloned, which copies it, so only up to the limit: a longer one keeps no copy
//!   and cannot be replayed, as for a streaming body over the limit.
//! * Any other body can be wrapped in a [`ReplayBody`]. While the first attempt streams it, the
//!   wrapper keeps the data chunks (shared [`Bytes`], not copies) up to a byte limit. If the body
//!   is larger than the limit, or the response arrives before the body was fully sent, it cannot
//!   be replayed and the layer returns the 401 instead of sending a truncated body. Over HTTP/1 a
//!   body that yielded the length its request declares (`Content-Length`, else its exact
//!   `size_hint`) was sent whole: hyper's HTTP/1 client stops polling it there, and sends no
//!   trailers with a declared length. Over HTTP/2 (the response's version tells) a client reads
//!   the body to its end and sends whatever trailers it yields, announced or not, so only a body
//!   seen to end (or to yield its trailers) is whole: one answered between its last data and
//!   its end is not re-sent, even when the client has dropped it since (hyper does once the
//!   server resets the stream after its answer). So that a body which tells its end only on the
//!   poll after its last data (a stream, a channel) is seen to end, the wrapper makes that poll
//!   itself once the body has yielded its declared length (see [`ReplayBody`]). That works if
//!   the end is ready then: a channel whose sender was dropped with its last chunk, a reader
//!   bounded to its length (`AsyncReadExt::take`). One whose end comes later (a sender dropped
//!   afterwards, a file reader that finds its end on a later read) is, over HTTP/2, still
//!   answered with the 401 when the client gives up first.
//! * `BoxBody<Bytes, E>` and `UnsyncBoxBody<Bytes, E>` are wrapped in a [`ReplayBody`] and
//!   boxed again, so the type a client uses stays the same.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower_identity::bearer::{ReplayBody, RetryBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let body = ReplayBody::new(Full::new(Bytes::from_static(b"{\"name\":\"blob\"}")));
//! let (first, replay) = body.prepare(64 * 1024);
//!
//! // The first attempt sends `first`; here we read it the way a client would.
//! let sent = first.collect().await?.to_bytes();
//!
//! // Once the response has arrived, the same body can be sent again.
//! let again = replay.into_body()?.collect().await?.to_bytes();
//! assert_eq!(sent, again);
//! # Ok(()) }
//! ```

mod body;
mod buffer;
#[cfg(test)]
mod tests;

use std::error::Error;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Version};
use http_body::Body;
use http_body_util::{Empty, Full};

pub use body::ReplayBody;
use buffer::{Recorder, Recording, lock};

/// Request bodies the bearer layer can re-send after a claims challenge.
///
/// Implemented for `Full<Bytes>`, `Empty<Bytes>` and `String` (cloned; a `String` only within
/// the limit, as its clone is a copy), for [`ReplayBody`]
/// (recorded while the first attempt streams it), and for `BoxBody<Bytes, E>` and
/// `UnsyncBoxBody<Bytes, E>` (wrapped in a recording [`ReplayBody`] and boxed again). To make
/// any other body retryable, wrap it: `ReplayBody::new(body)`.
pub trait RetryBody: Body<Data = Bytes> + Send + 'static + Sized {
    /// Called once, before the first send. Returns the body to send now and a handle that can
    /// produce the same body again once the first attempt's response has arrived.
    ///
    /// `limit` is the most bytes of a body that may be copied or buffered for replay: a
    /// streaming body's recording, or a `String`'s clone. A body past it gets a handle that
    /// answers [`NotReplayable`].
    ///
    /// The body must not have been polled yet: a streaming body's frames read before this call
    /// are not recorded. (A [`ReplayBody`] notices and reports itself not replayable.)
    fn prepare(self, limit: usize) -> (Self, Replay<Self>);
}

/// A way to get the request body again for the one re-send.
///
/// Made by [`RetryBody::prepare`]. Dropping it stops the recording of the first attempt's body
/// (what was kept is freed as soon as the first body is dropped too).
pub struct Replay<B> {
    kind: ReplayKind<B>,
}

enum ReplayKind<B> {
    /// A clone made up front.
    Ready(B),
    /// Nothing kept, for this reason (a body that would have been copied past the limit).
    Refused(NotReplayable),
    /// A recording shared with the first attempt's body.
    Recorded {
        recorder: Arc<Mutex<Recorder>>,
        /// This handle's limit (a body prepared twice shares one recording).
        limit: usize,
        /// Turns the finished recording into the body type.
        build: fn(Recording) -> B,
    },
}

impl<B> Replay<B> {
    /// The body for the re-send, or why it cannot be re-sent.
    ///
    /// Call it after the first attempt's response head arrived. A streaming body can only be
    /// replayed if the first attempt sent all of it, within the limit given to
    /// [`prepare`](RetryBody::prepare), and a `String` only if it is within that limit;
    /// otherwise the answer is an error, never a shorter body.
    ///
    /// Not knowing the protocol, this takes a streaming body as whole only once it was seen to
    /// end: it reported `is_end_stream`, yielded its end or its trailers (a [`ReplayBody`] polls
    /// once more for that when its data reaches its exact `size_hint`). A client may stop
    /// polling a body at its declared length (hyper's HTTP/1 client does); to take such a body
    /// as whole when that is sound, use [`into_body_for`](Self::into_body_for) with the request's
    /// headers and the response's version.
    ///
    /// It keeps the trailers a [`ReplayBody`] fetched ahead, past the body's declared length,
    /// as if the request went over HTTP/2, which sends them; for one sent over HTTP/1, which
    /// sent none, use [`into_body_for`](Self::into_body_for), which leaves them out.
    pub fn into_body(self) -> Result<B, NotReplayable> {
        self.into_body_with(None)
    }

    /// [`into_body`](Self::into_body) for the request with these headers, answered with a
    /// response of this `version` (`Response::version`): over HTTP/1 a streaming body that
    /// yielded its declared length (`Content-Length`, else its exact `size_hint` when prepared;
    /// none with `Transfer-Encoding` or `Trailer`) was sent whole even if not seen to end,
    /// since an HTTP/1 client writes no more and hyper's stops polling it there; trailers a
    /// [`ReplayBody`] polled past that length, and never handed to the client, were not sent
    /// and are left out. Over HTTP/2 or
    /// later a client reads a body to its end and sends whatever trailers it yields, announced
    /// or not, so there only a body seen to end is whole, as for `into_body`.
    pub fn into_body_for(self, headers: &HeaderMap, version: Version) -> Result<B, NotReplayable> {
        self.into_body_with(Some((headers, version)))
    }

    /// Tells a recording the request's `Content-Length`, if it has one: a [`ReplayBody`] then
    /// looks for its end right after that many bytes, not only after its exact `size_hint`.
    /// Called before the first attempt is sent.
    pub(crate) fn expect_length(&self, headers: &HeaderMap) {
        if let ReplayKind::Recorded { recorder, .. } = &self.kind {
            if let Some(length) = buffer::content_length(headers) {
                if let Some(mut recorder) = lock(recorder) {
                    recorder.expected = Some(length);
                }
            }
        }
    }

    fn into_body_with(self, sent: Option<(&HeaderMap, Version)>) -> Result<B, NotReplayable> {
        match self.kind {
            ReplayKind::Ready(body) => Ok(body),
            ReplayKind::Refused(reason) => Err(reason),
            ReplayKind::Recorded {
                recorder,
                limit,
                build,
            } => {
                let recording = match lock(&recorder) {
                    Some(recorder) => recorder.recording(limit, sent)?,
                    // Something panicked while recording: what was kept cannot be trusted.
                    None => return Err(NotReplayable::new(Reason::Failed)),
                };
                Ok(build(recording))
            }
        }
    }

    /// Why the body cannot be re-sent, if that was settled as it was prepared (a `String` over
    /// the limit kept no copy). Cheap, for every CAE request; [`refusal`](Self::refusal) also
    /// asks the recording.
    #[inline]
    pub(crate) fn refused_at_prepare(&self) -> Option<&NotReplayable> {
        match &self.kind {
            ReplayKind::Refused(reason) => Some(reason),
            ReplayKind::Ready(_) | ReplayKind::Recorded { .. } => None,
        }
    }

    /// Why the body cannot be re-sent, if that is settled already: as it was prepared (a
    /// `String` over the limit kept no copy), or by its recording (more than the limit
    /// yielded or announced, a body that failed); `None` while a re-send may still be possible.
    pub(crate) fn refusal(&self) -> Option<NotReplayable> {
        match &self.kind {
            ReplayKind::Ready(_) => None,
            ReplayKind::Refused(reason) => Some(reason.clone()),
            ReplayKind::Recorded {
                recorder, limit, ..
            } => match lock(recorder) {
                Some(recorder) => recorder.refusal(*limit),
                None => Some(NotReplayable::new(Reason::Failed)),
            },
        }
    }

    fn ready(body: B) -> Self {
        Replay {
            kind: ReplayKind::Ready(body),
        }
    }

    fn refused(reason: NotReplayable) -> Self {
        Replay {
            kind: ReplayKind::Refused(reason),
        }
    }

    /// Wraps the body this handle makes: `wrap` for a ready clone, `build` for a recording.
    fn map<C>(self, wrap: fn(B) -> C, build: fn(Recording) -> C) -> Replay<C> {
        let kind = match self.kind {
            ReplayKind::Ready(body) => ReplayKind::Ready(wrap(body)),
            ReplayKind::Refused(reason) => ReplayKind::Refused(reason),
            ReplayKind::Recorded {
                recorder, limit, ..
            } => ReplayKind::Recorded {
                recorder,
                limit,
                build,
            },
        };
        Replay { kind }
    }
}

impl<B: fmt::Debug> fmt::Debug for Replay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ReplayKind::Ready(body) => f.debug_tuple("Replay::Ready").field(body).finish(),
            ReplayKind::Refused(reason) => f.debug_tuple("Replay::Refused").field(reason).finish(),
            ReplayKind::Recorded { limit, .. } => f
                .debug_struct("Replay::Recorded")
                .field("limit", limit)
                .finish_non_exhaustive(),
        }
    }
}

/// Why a body cannot be re-sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReplayable {
    reason: Reason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// More data bytes than the limit: the recording was dropped.
    OverLimit { limit: usize },
    /// More frames than the limit keeps records for (see `buffer::max_frames`).
    TooManyFrames { limit: usize },
    /// The body had not ended when the replay was asked for (the response came first, or the
    /// first attempt dropped the body half-way).
    Unfinished,
    /// The body yielded its declared length but was not seen to end, and the response came
    /// over HTTP/2 or later, whose clients read a body to its end (trailers may follow), or
    /// over a protocol not told (`Replay::into_body`).
    EndUnseen { protocol_known: bool },
    /// The body yielded an error, or the recording was poisoned by a panic.
    Failed,
    /// The body was polled before it was prepared, so the recording lacks its start.
    ReadBeforePrepare,
    /// A header field was too long to keep for the re-send (see `bearer/head.rs`).
    Head,
    /// A reqwest body that cannot be cloned (a stream).
    #[cfg(feature = "reqwest-middleware")]
    NotCloneable,
}

impl NotReplayable {
    fn new(reason: Reason) -> Self {
        NotReplayable { reason }
    }

    /// The request head could not be kept for the re-send.
    pub(crate) fn head() -> Self {
        Self::new(Reason::Head)
    }

    /// The reqwest request could not be cloned (its body is a stream).
    #[cfg(feature = "reqwest-middleware")]
    pub(crate) fn not_cloneable() -> Self {
        Self::new(Reason::NotCloneable)
    }

    /// The body was larger than the replay limit (in bytes, or in frames: one for every 128
    /// bytes of the limit, and 16 more), or a header field too long to keep.
    pub fn is_over_limit(&self) -> bool {
        matches!(
            self.reason,
            Reason::OverLimit { .. } | Reason::TooManyFrames { .. } | Reason::Head
        )
    }

    /// The whole body could not be recorded: the response arrived before the body ended (over
    /// HTTP/2 even when all its declared bytes were sent, as trailers may follow them), the
    /// body was dropped half-way, it failed with an error, or it was read before it was
    /// prepared.
    pub fn is_incomplete(&self) -> bool {
        matches!(
            self.reason,
            Reason::Unfinished
                | Reason::EndUnseen { .. }
                | Reason::Failed
                | Reason::ReadBeforePrepare
        )
    }
}

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Reason::OverLimit { limit } => write!(
                f,
                "the request body is larger than the {limit}-byte replay limit"
            ),
            Reason::TooManyFrames { limit } => write!(
                f,
                "the request body came in more frames than the {limit}-byte replay limit keeps \
                 ({}); send it in fewer, larger chunks",
                buffer::max_frames(limit)
            ),
            Reason::Unfinished => {
                f.write_str("the response arrived before the request body was fully sent")
            }
            Reason::EndUnseen { protocol_known } => {
                if protocol_known {
                    f.write_str(
                        "the response arrived before the request body ended: its declared \
                         length was yielded, but over HTTP/2 or later trailers may follow",
                    )?;
                } else {
                    f.write_str(
                        "the request body was not seen to end: its declared length was \
                         yielded, but unless it went over HTTP/1 trailers may follow \
                         (Replay::into_body_for takes the protocol)",
                    )?;
                }
                f.write_str(
                    "; a body that reports is_end_stream() with its last frame, as Full does, \
                     is re-sent",
                )
            }
            Reason::Failed => f.write_str("the request body failed before it was fully sent"),
            Reason::ReadBeforePrepare => {
                f.write_str("the request body was read before it was prepared for replay")
            }
            Reason::Head => f.write_str("a request header field is too long to keep for a re-send"),
            #[cfg(feature = "reqwest-middleware")]
            Reason::NotCloneable => {
                f.write_str("the request body is a stream, which reqwest cannot clone")
            }
        }
    }
}

impl Error for NotReplayable {}

impl RetryBody for Full<Bytes> {
    fn prepare(self, _limit: usize) -> (Self, Replay<Self>) {
        (self.clone(), Replay::ready(self))
    }
}

impl RetryBody for Empty<Bytes> {
    fn prepare(self, _limit: usize) -> (Self, Replay<Self>) {
        (self, Replay::ready(self))
    }
}

/// Cloned only within the limit: unlike `Full<Bytes>`'s, a `String`'s clone copies it.
impl RetryBody for String {
    fn prepare(self, limit: usize) -> (Self, Replay<Self>) {
        if self.len() > limit {
            let over = NotReplayable::new(Reason::OverLimit { limit });
            return (self, Replay::refused(over));
        }
        (self.clone(), Replay::ready(self))
    }
}
