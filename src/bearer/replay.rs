//! Request bodies that the bearer-token layer can send a second time after a claims challenge.
//!
//! When Continuous Access Evaluation is on, a request may be answered with a 401 that asks for
//! a token with more claims; the layer then sends the same request again, once. To do that it
//! needs the body twice. [`RetryBody::prepare`] is called before the first send and hands back
//! the body to send now plus a [`Replay`] handle for the second send.
//!
//! * Bodies that are cheap to clone (`Full<Bytes>`, `Empty<Bytes>`, `String`) are cloned: they
//!   can always be replayed.
//! * Any other body can be wrapped in a [`ReplayBody`]. While the first attempt streams it, the
//!   wrapper keeps the data chunks (shared [`Bytes`], not copies) up to a byte limit. If the body
//!   is larger than the limit, or the response arrives before the body was fully sent, it cannot
//!   be replayed and the layer returns the 401 instead of sending a truncated body.
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

use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::mem;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{Empty, Full};
use pin_project_lite::pin_project;

/// Request bodies the bearer layer can re-send after a claims challenge.
///
/// Implemented for `Full<Bytes>`, `Empty<Bytes>` and `String` (cloned), for [`ReplayBody`]
/// (recorded while the first attempt streams it), and for `BoxBody<Bytes, E>` and
/// `UnsyncBoxBody<Bytes, E>` (wrapped in a recording [`ReplayBody`] and boxed again). To make
/// any other body retryable, wrap it: `ReplayBody::new(body)`.
pub trait RetryBody: Body<Data = Bytes> + Send + 'static + Sized {
    /// Called once, before the first send. Returns the body to send now and a handle that can
    /// produce the same body again once the first attempt's response has arrived.
    ///
    /// `limit` is the most bytes a streaming body may be buffered for replay.
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
    /// [`prepare`](RetryBody::prepare); otherwise the answer is an error, never a shorter body.
    pub fn into_body(self) -> Result<B, NotReplayable> {
        match self.kind {
            ReplayKind::Ready(body) => Ok(body),
            ReplayKind::Recorded {
                recorder,
                limit,
                build,
            } => {
                let recording = match lock(&recorder) {
                    Some(recorder) => recorder.recording(limit)?,
                    // Something panicked while recording: what was kept cannot be trusted.
                    None => return Err(NotReplayable::new(Reason::Failed)),
                };
                Ok(build(recording))
            }
        }
    }

    fn ready(body: B) -> Self {
        Replay {
            kind: ReplayKind::Ready(body),
        }
    }

    /// Wraps the body this handle makes: `wrap` for a ready clone, `build` for a recording.
    fn map<C>(self, wrap: fn(B) -> C, build: fn(Recording) -> C) -> Replay<C> {
        let kind = match self.kind {
            ReplayKind::Ready(body) => ReplayKind::Ready(wrap(body)),
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
    /// The body had not ended when the replay was asked for (the response came first, or the
    /// first attempt dropped the body half-way).
    Unfinished,
    /// The body yielded an error, or the recording was poisoned by a panic.
    Failed,
    /// The body was polled before it was prepared, so the recording lacks its start.
    ReadBeforePrepare,
}

impl NotReplayable {
    fn new(reason: Reason) -> Self {
        NotReplayable { reason }
    }

    /// The body was larger than the replay limit.
    pub fn is_over_limit(&self) -> bool {
        matches!(self.reason, Reason::OverLimit { .. })
    }

    /// The whole body could not be recorded: the response arrived before the body ended, the
    /// body was dropped half-way, it failed with an error, or it was read before it was
    /// prepared.
    pub fn is_incomplete(&self) -> bool {
        matches!(
            self.reason,
            Reason::Unfinished | Reason::Failed | Reason::ReadBeforePrepare
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
            Reason::Unfinished => {
                f.write_str("the response arrived before the request body was fully sent")
            }
            Reason::Failed => f.write_str("the request body failed before it was fully sent"),
            Reason::ReadBeforePrepare => {
                f.write_str("the request body was read before it was prepared for replay")
            }
        }
    }
}

impl Error for NotReplayable {}

pin_project! {
    /// A body wrapper that records what it streams (up to a limit) so it can be replayed once.
    ///
    /// Wrap any body in it to make it retryable: `ReplayBody::new(body)`. Until it is
    /// [prepared](RetryBody::prepare) it only passes the inner body through. Once prepared, it
    /// still yields exactly the inner body's frames, in order, with the inner body's
    /// `size_hint` and `is_end_stream`, and keeps a clone of each data chunk (a reference-counted
    /// [`Bytes`], not a copy) and the trailers for the [`Replay`] handle, as long as the data
    /// stays within the limit. Past the limit it drops what it kept and keeps nothing more; the
    /// first attempt still gets every byte.
    ///
    /// The body a [`Replay`] hands out yields the same data frames and trailers. Its `size_hint`
    /// is exact (so an HTTP/1 client sends `Content-Length`), except when the recording has
    /// trailers: then only the lower bound is set, so that HTTP/1 still uses chunked encoding,
    /// the only one that can carry trailers. Preparing a replayed body again is cheap and always
    /// succeeds: the recording is shared, not copied.
    pub struct ReplayBody<B> {
        #[pin]
        state: State<B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B> {
        /// Not prepared yet: a plain pass-through.
        Plain {
            #[pin]
            body: B,
            // Whether a frame was asked for: then a recording would miss the start.
            polled: bool,
        },
        /// The first attempt: pass-through that records into the shared recorder.
        Recording {
            #[pin]
            body: B,
            recorder: Arc<Mutex<Recorder>>,
        },
        /// The re-send: plays a finished recording.
        Replaying {
            recording: Recording,
        },
    }
}

impl<B> ReplayBody<B> {
    /// Wraps `body`. Nothing is recorded until the body is [prepared](RetryBody::prepare).
    pub fn new(body: B) -> Self {
        ReplayBody {
            state: State::Plain {
                body,
                polled: false,
            },
        }
    }

    /// The first attempt's body, recording into `recorder`, and a handle on the recording.
    fn recording(body: B, recorder: Arc<Mutex<Recorder>>, limit: usize) -> (Self, Replay<Self>) {
        let replay = Replay {
            kind: ReplayKind::Recorded {
                recorder: Arc::clone(&recorder),
                limit,
                build: ReplayBody::replaying,
            },
        };
        let first = ReplayBody {
            state: State::Recording { body, recorder },
        };
        (first, replay)
    }

    fn replaying(recording: Recording) -> Self {
        ReplayBody {
            state: State::Replaying { recording },
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            State::Plain { body, .. } => f.debug_tuple("ReplayBody::Plain").field(body).finish(),
            State::Recording { body, .. } => {
                f.debug_tuple("ReplayBody::Recording").field(body).finish()
            }
            State::Replaying { recording } => f
                .debug_struct("ReplayBody::Replaying")
                .field("frames", &recording.frames.len())
                .field("remaining", &recording.remaining)
                .finish(),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ReplayBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().state.project() {
            StateProj::Plain { body, polled } => {
                *polled = true;
                body.poll_frame(cx)
            }
            StateProj::Recording { mut body, recorder } => {
                let polled = body.as_mut().poll_frame(cx);
                // Nobody can read the recording once the `Replay` handle is gone.
                if Arc::strong_count(recorder) > 1 {
                    let event = match &polled {
                        Poll::Pending => return polled,
                        Poll::Ready(None) => Event::End,
                        Poll::Ready(Some(Err(_))) => Event::Failed,
                        Poll::Ready(Some(Ok(frame))) => match RecordedFrame::of(frame) {
                            // Trailers are the last frame of a body: hyper's HTTP/2 sender
                            // does not poll again after them, so they end the recording.
                            Some(frame) => Event::Frame {
                                end: body.is_end_stream()
                                    || matches!(frame, RecordedFrame::Trailers(_)),
                                frame,
                            },
                            None => Event::Failed,
                        },
                    };
                    record(recorder, event);
                }
                polled
            }
            StateProj::Replaying { recording } => Poll::Ready(recording.next().map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Plain { body, .. } => body.is_end_stream(),
            State::Recording { body, recorder } => {
                let end = body.is_end_stream();
                // A caller may stop polling once this is true (hyper does), so this is where
                // the recording learns it is complete.
                if end && Arc::strong_count(recorder) > 1 {
                    record(recorder, Event::End);
                }
                end
            }
            State::Replaying { recording } => recording.frames.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Plain { body, .. } | State::Recording { body, .. } => body.size_hint(),
            State::Replaying { recording } => recording.size_hint(),
        }
    }
}

/// Prepared once: records while the first attempt streams. Prepared again while recording: the
/// new handle shares the recording, with its own limit. A replayed body: the new handle gets a
/// clone of the recording (no copying of data), always replayable.
impl<B: Body<Data = Bytes> + Send + 'static> RetryBody for ReplayBody<B> {
    fn prepare(self, limit: usize) -> (Self, Replay<Self>) {
        match self.state {
            State::Plain { body, polled } => {
                let mut recorder = Recorder::new(limit);
                if polled {
                    // Whatever was read before is missing from the recording.
                    recorder.phase = Phase::ReadBeforePrepare;
                } else if body.is_end_stream() {
                    // A body that is already at its end may never be polled (hyper does not).
                    recorder.phase = Phase::Complete;
                }
                ReplayBody::recording(body, Arc::new(Mutex::new(recorder)), limit)
            }
            State::Recording { body, recorder } => {
                if let Some(mut shared) = lock(&recorder) {
                    shared.limit = shared.limit.max(limit);
                }
                ReplayBody::recording(body, recorder, limit)
            }
            State::Replaying { recording } => {
                let again = ReplayBody::replaying(recording.clone());
                (ReplayBody::replaying(recording), Replay::ready(again))
            }
        }
    }
}

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

impl RetryBody for String {
    fn prepare(self, _limit: usize) -> (Self, Replay<Self>) {
        (self.clone(), Replay::ready(self))
    }
}

/// Wraps the body in a recording [`ReplayBody`] and boxes it again; the replay is boxed too.
impl<E: 'static> RetryBody for BoxBody<Bytes, E> {
    fn prepare(self, limit: usize) -> (Self, Replay<Self>) {
        fn replayed<E: 'static>(recording: Recording) -> BoxBody<Bytes, E> {
            BoxBody::new(ReplayBody::<BoxBody<Bytes, E>>::replaying(recording))
        }
        let (first, replay) = ReplayBody::new(self).prepare(limit);
        (BoxBody::new(first), replay.map(BoxBody::new, replayed::<E>))
    }
}

/// Wraps the body in a recording [`ReplayBody`] and boxes it again; the replay is boxed too.
impl<E: 'static> RetryBody for UnsyncBoxBody<Bytes, E> {
    fn prepare(self, limit: usize) -> (Self, Replay<Self>) {
        fn replayed<E: 'static>(recording: Recording) -> UnsyncBoxBody<Bytes, E> {
            UnsyncBoxBody::new(ReplayBody::<UnsyncBoxBody<Bytes, E>>::replaying(recording))
        }
        let (first, replay) = ReplayBody::new(self).prepare(limit);
        (
            UnsyncBoxBody::new(first),
            replay.map(UnsyncBoxBody::new, replayed::<E>),
        )
    }
}

/// One frame of a recording.
#[derive(Clone, Debug)]
enum RecordedFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl RecordedFrame {
    /// `None` for a frame kind this module does not know (http-body may add some).
    fn of(frame: &Frame<Bytes>) -> Option<Self> {
        if let Some(data) = frame.data_ref() {
            Some(RecordedFrame::Data(data.clone()))
        } else {
            frame
                .trailers_ref()
                .map(|trailers| RecordedFrame::Trailers(trailers.clone()))
        }
    }
}

/// What happened on one poll of the first attempt's body.
enum Event {
    Frame { frame: RecordedFrame, end: bool },
    End,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Recording,
    Complete,
    OverLimit,
    Failed,
    ReadBeforePrepare,
}

/// State shared by the first attempt's body and its [`Replay`] handle(s).
struct Recorder {
    /// Most data bytes kept: the largest limit of the handles sharing this recording.
    limit: usize,
    /// Data bytes the first attempt has yielded so far, kept or not.
    seen: usize,
    frames: VecDeque<RecordedFrame>,
    phase: Phase,
}

impl Recorder {
    fn new(limit: usize) -> Self {
        Recorder {
            limit,
            seen: 0,
            frames: VecDeque::new(),
            phase: Phase::Recording,
        }
    }

    /// Applies one event; returns frames to drop once the lock is released.
    fn apply(&mut self, event: Event) -> VecDeque<RecordedFrame> {
        if self.phase != Phase::Recording {
            return VecDeque::new();
        }
        match event {
            Event::Frame { frame, end } => {
                if let RecordedFrame::Data(data) = &frame {
                    self.seen = self.seen.saturating_add(data.len());
                    if self.seen > self.limit {
                        self.phase = Phase::OverLimit;
                        return mem::take(&mut self.frames);
                    }
                }
                self.frames.push_back(frame);
                if end {
                    self.phase = Phase::Complete;
                }
                VecDeque::new()
            }
            Event::End => {
                self.phase = Phase::Complete;
                VecDeque::new()
            }
            Event::Failed => {
                self.phase = Phase::Failed;
                mem::take(&mut self.frames)
            }
        }
    }

    /// The recording for a handle with `limit`, if it is complete and within that limit.
    fn recording(&self, limit: usize) -> Result<Recording, NotReplayable> {
        if self.seen > limit {
            return Err(NotReplayable::new(Reason::OverLimit { limit }));
        }
        match self.phase {
            Phase::Complete => Ok(Recording::new(self.frames.clone(), self.seen)),
            // Only reachable when this handle, with a larger limit, joined a recording that
            // had already exceeded the shared one: the data is gone.
            Phase::OverLimit => Err(NotReplayable::new(Reason::OverLimit { limit: self.limit })),
            Phase::Recording => Err(NotReplayable::new(Reason::Unfinished)),
            Phase::Failed => Err(NotReplayable::new(Reason::Failed)),
            Phase::ReadBeforePrepare => Err(NotReplayable::new(Reason::ReadBeforePrepare)),
        }
    }
}

/// Records one event. The lock covers only the field updates; dropped frames are freed after.
fn record(recorder: &Mutex<Recorder>, event: Event) {
    let discarded = match lock(recorder) {
        Some(mut recorder) => recorder.apply(event),
        // Poisoned: stop recording; `Replay::into_body` reports the body as not replayable.
        None => return,
    };
    drop(discarded);
}

/// The lock, or `None` if a panic poisoned it.
fn lock(recorder: &Mutex<Recorder>) -> Option<MutexGuard<'_, Recorder>> {
    recorder.lock().ok()
}

/// A finished recording, played by a replaying [`ReplayBody`].
#[derive(Clone, Debug)]
struct Recording {
    frames: VecDeque<RecordedFrame>,
    /// Data bytes not yet played.
    remaining: usize,
    /// Trailers frames not yet played.
    trailers: usize,
}

impl Recording {
    fn new(frames: VecDeque<RecordedFrame>, len: usize) -> Self {
        let trailers = frames
            .iter()
            .filter(|frame| matches!(frame, RecordedFrame::Trailers(_)))
            .count();
        Recording {
            frames,
            remaining: len,
            trailers,
        }
    }

    fn next(&mut self) -> Option<Frame<Bytes>> {
        let frame = self.frames.pop_front()?;
        Some(match frame {
            RecordedFrame::Data(data) => {
                self.remaining = self.remaining.saturating_sub(data.len());
                Frame::data(data)
            }
            RecordedFrame::Trailers(trailers) => {
                self.trailers = self.trailers.saturating_sub(1);
                Frame::trailers(trailers)
            }
        })
    }

    fn size_hint(&self) -> SizeHint {
        let remaining = u64::try_from(self.remaining).unwrap_or(u64::MAX);
        if self.trailers > 0 {
            // Not exact on purpose: with an exact length hyper's HTTP/1 client sends
            // `Content-Length` and drops the trailers.
            let mut hint = SizeHint::new();
            hint.set_lower(remaining);
            hint
        } else {
            SizeHint::with_exact(remaining)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::io;
    use std::marker::PhantomPinned;
    use std::pin::pin;

    use http::{HeaderValue, Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// One step of a [`Script`] body.
    #[derive(Clone, Debug)]
    enum Step {
        Data(&'static [u8]),
        /// Returns `Poll::Pending` once (and wakes itself), like a body waiting on I/O.
        Pending,
        Trailers(HeaderMap),
        Error,
    }

    pin_project! {
        /// A streaming body that plays a script. It is `!Unpin` on purpose.
        #[derive(Debug)]
        struct Script {
            steps: VecDeque<Step>,
            exact: Option<u64>,
            #[pin]
            _pinned: PhantomPinned,
        }
    }

    impl Script {
        fn new(steps: impl IntoIterator<Item = Step>) -> Self {
            Script {
                steps: steps.into_iter().collect(),
                exact: None,
                _pinned: PhantomPinned,
            }
        }

        fn with_exact_hint(mut self, len: u64) -> Self {
            self.exact = Some(len);
            self
        }
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            let this = self.project();
            let frame = match this.steps.pop_front() {
                None => return Poll::Ready(None),
                Some(Step::Pending) => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Some(Step::Data(data)) => {
                    if let Some(exact) = this.exact {
                        *exact -= data.len() as u64;
                    }
                    Ok(Frame::data(Bytes::from_static(data)))
                }
                Some(Step::Trailers(trailers)) => Ok(Frame::trailers(trailers)),
                Some(Step::Error) => Err(io::Error::other("the body broke")),
            };
            Poll::Ready(Some(frame))
        }

        fn is_end_stream(&self) -> bool {
            self.steps.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            self.exact.map(SizeHint::with_exact).unwrap_or_default()
        }
    }

    /// A frame as seen by whoever polls a body.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Data(Bytes),
        Trailers(HeaderMap),
    }

    /// Polls `body` to its end, keeping every frame, or stops at its first error.
    async fn frames<B: Body<Data = Bytes>>(body: B) -> Result<Vec<Seen>, B::Error> {
        let mut body = pin!(body);
        let mut seen = Vec::new();
        while let Some(frame) = body.as_mut().frame().await {
            let frame = frame?;
            match frame.into_data() {
                Ok(data) => seen.push(Seen::Data(data)),
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => seen.push(Seen::Trailers(trailers)),
                    Err(_) => panic!("unknown frame kind"),
                },
            }
        }
        Ok(seen)
    }

    fn trailers() -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
        trailers
    }

    /// 12 data bytes in three chunks with waits in between, then trailers.
    fn chunks_and_trailers() -> Script {
        Script::new([
            Step::Data(b"abcd"),
            Step::Pending,
            Step::Data(b"efgh"),
            Step::Pending,
            Step::Data(b"ijkl"),
            Step::Pending,
            Step::Trailers(trailers()),
        ])
    }

    /// 12 data bytes in three chunks with waits in between.
    fn chunks() -> Script {
        Script::new([
            Step::Data(b"abcd"),
            Step::Pending,
            Step::Data(b"efgh"),
            Step::Pending,
            Step::Data(b"ijkl"),
        ])
    }

    fn hint(body: &impl Body) -> (u64, Option<u64>) {
        let hint = body.size_hint();
        (hint.lower(), hint.upper())
    }

    async fn bytes_of<B: Body<Data = Bytes>>(body: B) -> Bytes
    where
        B::Error: fmt::Debug,
    {
        body.collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn full_body_replays_equal_bytes() {
        let (first, replay) = Full::new(Bytes::from_static(b"payload")).prepare(0);
        let again = replay.into_body().expect("replayable");
        assert_eq!(bytes_of(first).await, Bytes::from_static(b"payload"));
        assert_eq!(bytes_of(again).await, Bytes::from_static(b"payload"));
    }

    #[tokio::test]
    async fn empty_body_replays_empty() {
        let (first, replay) = Empty::<Bytes>::new().prepare(0);
        let again = replay.into_body().expect("replayable");
        assert!(bytes_of(first).await.is_empty());
        assert!(bytes_of(again).await.is_empty());
    }

    #[tokio::test]
    async fn string_body_replays_equal_bytes() {
        let (first, replay) = String::from("{\"a\":1}").prepare(0);
        let again = replay.into_body().expect("replayable");
        assert_eq!(bytes_of(first).await, bytes_of(again).await);
    }

    #[tokio::test]
    async fn replay_body_replays_data_frames_and_trailers_identically() {
        let (first, replay) = ReplayBody::new(chunks_and_trailers()).prepare(64);
        let sent = frames(first).await.expect("first attempt");
        assert_eq!(
            sent,
            vec![
                Seen::Data(Bytes::from_static(b"abcd")),
                Seen::Data(Bytes::from_static(b"efgh")),
                Seen::Data(Bytes::from_static(b"ijkl")),
                Seen::Trailers(trailers()),
            ]
        );
        let again = replay.into_body().expect("replayable");
        assert_eq!(frames(again).await.expect("replay"), sent);
    }

    #[tokio::test]
    async fn replay_size_hint_is_exact_and_end_stream_follows_the_frames() {
        let (first, replay) = ReplayBody::new(chunks()).prepare(64);
        frames(first).await.expect("first attempt");
        let mut again = pin!(replay.into_body().expect("replayable"));
        assert_eq!(hint(&*again), (12, Some(12)));
        assert!(!again.is_end_stream());
        for left in [8, 4, 0] {
            again.as_mut().frame().await.expect("frame").expect("data");
            assert_eq!(hint(&*again), (left, Some(left)));
        }
        assert!(again.is_end_stream());
        assert!(again.as_mut().frame().await.is_none());
    }

    #[tokio::test]
    async fn replay_with_trailers_has_an_inexact_size_hint_until_the_trailers_are_sent() {
        let (first, replay) = ReplayBody::new(chunks_and_trailers()).prepare(64);
        frames(first).await.expect("first attempt");
        let mut again = pin!(replay.into_body().expect("replayable"));
        assert_eq!(hint(&*again), (12, None));
        for _ in 0..3 {
            again.as_mut().frame().await.expect("frame").expect("data");
        }
        assert_eq!(hint(&*again), (0, None));
        assert!(!again.is_end_stream());
        let last = again
            .as_mut()
            .frame()
            .await
            .expect("frame")
            .expect("trailers");
        assert_eq!(last.into_trailers().ok(), Some(trailers()));
        assert_eq!(hint(&*again), (0, Some(0)));
        assert!(again.is_end_stream());
    }

    #[tokio::test]
    async fn recording_leaves_frames_size_hint_and_end_stream_of_the_first_attempt_untouched() {
        let plain = chunks_and_trailers().with_exact_hint(12);
        let (recording, _replay) =
            ReplayBody::new(chunks_and_trailers().with_exact_hint(12)).prepare(64);
        let (mut plain, mut recording) = (pin!(plain), pin!(recording));
        loop {
            assert_eq!(hint(&*plain), hint(&*recording));
            assert_eq!(plain.is_end_stream(), recording.is_end_stream());
            let expected = plain.as_mut().frame().await;
            let got = recording.as_mut().frame().await;
            match (expected, got) {
                (None, None) => break,
                (Some(Ok(expected)), Some(Ok(got))) => {
                    assert_eq!(expected.data_ref(), got.data_ref());
                    assert_eq!(expected.trailers_ref(), got.trailers_ref());
                }
                other => panic!("the recording diverged: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn over_limit_is_not_replayable_but_the_first_attempt_gets_every_byte() {
        let (first, replay) = ReplayBody::new(chunks_and_trailers()).prepare(10);
        let sent = frames(first).await.expect("first attempt");
        assert_eq!(sent.len(), 4, "all data frames and the trailers");
        let err = replay.into_body().expect_err("over the limit");
        assert!(err.is_over_limit());
        assert!(!err.is_incomplete());
        assert_eq!(
            err.to_string(),
            "the request body is larger than the 10-byte replay limit"
        );
    }

    #[tokio::test]
    async fn limit_equal_to_the_body_length_is_replayable() {
        let (first, replay) = ReplayBody::new(chunks()).prepare(12);
        frames(first).await.expect("first attempt");
        let again = replay.into_body().expect("exactly at the limit");
        assert_eq!(bytes_of(again).await, Bytes::from_static(b"abcdefghijkl"));
    }

    #[tokio::test]
    async fn one_byte_over_the_limit_is_not_replayable() {
        let (first, replay) = ReplayBody::new(chunks()).prepare(11);
        frames(first).await.expect("first attempt");
        assert!(
            replay
                .into_body()
                .expect_err("one byte over")
                .is_over_limit()
        );
    }

    #[tokio::test]
    async fn first_attempt_dropped_half_way_is_incomplete() {
        let (first, replay) = ReplayBody::new(chunks()).prepare(64);
        {
            let mut first = pin!(first);
            first.as_mut().frame().await.expect("frame").expect("data");
        }
        let err = replay.into_body().expect_err("half sent");
        assert!(err.is_incomplete());
        assert!(!err.is_over_limit());
        assert_eq!(
            err.to_string(),
            "the response arrived before the request body was fully sent"
        );
    }

    #[tokio::test]
    async fn replay_asked_for_before_the_body_was_polled_is_incomplete() {
        let (_first, replay) = ReplayBody::new(chunks()).prepare(64);
        assert!(replay.into_body().expect_err("not sent").is_incomplete());
    }

    #[tokio::test]
    async fn inner_error_frame_is_incomplete() {
        let body = Script::new([Step::Data(b"abcd"), Step::Pending, Step::Error]);
        let (first, replay) = ReplayBody::new(body).prepare(64);
        let err = frames(first)
            .await
            .expect_err("the first attempt sees the error");
        assert_eq!(err.to_string(), "the body broke");
        let err = replay.into_body().expect_err("failed body");
        assert!(err.is_incomplete());
        assert_eq!(
            err.to_string(),
            "the request body failed before it was fully sent"
        );
    }

    #[tokio::test]
    async fn empty_replay_body_replays_as_empty() {
        // Already at its end when prepared: hyper never polls such a body.
        let (_first, replay) = ReplayBody::new(Empty::<Bytes>::new()).prepare(0);
        let again = replay.into_body().expect("empty is replayable");
        assert!(again.is_end_stream());
        assert_eq!(hint(&again), (0, Some(0)));
        assert!(bytes_of(again).await.is_empty());

        // Learns it is empty only when polled.
        let (first, replay) = ReplayBody::new(Script::new([Step::Pending])).prepare(0);
        assert!(frames(first).await.expect("first attempt").is_empty());
        let again = replay.into_body().expect("empty is replayable");
        assert!(frames(again).await.expect("replay").is_empty());
    }

    #[tokio::test]
    async fn recording_completes_when_the_inner_body_reports_its_end_after_a_frame() {
        // A caller that stops polling once `is_end_stream` is true never sees `None`.
        let (first, replay) = ReplayBody::new(Script::new([Step::Data(b"only")])).prepare(64);
        let mut first = pin!(first);
        first.as_mut().frame().await.expect("frame").expect("data");
        assert!(first.is_end_stream());
        let again = replay.into_body().expect("complete");
        assert_eq!(bytes_of(again).await, Bytes::from_static(b"only"));
    }

    #[tokio::test]
    async fn body_read_before_it_was_prepared_is_not_replayable() {
        let mut body = ReplayBody::new(Full::new(Bytes::from_static(b"gone")));
        assert!(body.frame().await.is_some());
        assert!(body.is_end_stream());
        let (first, replay) = body.prepare(64);
        assert!(frames(first).await.expect("nothing left").is_empty());
        let err = replay.into_body().expect_err("the start is missing");
        assert!(err.is_incomplete());
        assert_eq!(
            err.to_string(),
            "the request body was read before it was prepared for replay"
        );
    }

    #[tokio::test]
    async fn replayed_body_can_be_prepared_again_whatever_the_limit() {
        let (first, replay) = ReplayBody::new(chunks_and_trailers()).prepare(64);
        let sent = frames(first).await.expect("first attempt");
        let (second, replay) = replay.into_body().expect("replayable").prepare(0);
        let third = replay.into_body().expect("a replayed body is replayable");
        assert_eq!(frames(second).await.expect("second"), sent);
        assert_eq!(frames(third).await.expect("third"), sent);
    }

    #[tokio::test]
    async fn body_prepared_twice_shares_the_recording_with_each_handle_own_limit() {
        let (first, generous) = ReplayBody::new(chunks()).prepare(64);
        let (first, strict) = first.prepare(5);
        frames(first).await.expect("first attempt");
        assert!(
            strict
                .into_body()
                .expect_err("over 5 bytes")
                .is_over_limit()
        );
        let again = generous.into_body().expect("within 64 bytes");
        assert_eq!(bytes_of(again).await, Bytes::from_static(b"abcdefghijkl"));
    }

    #[tokio::test]
    async fn poisoned_recording_is_not_replayable_and_the_first_attempt_is_unaffected() {
        let (first, replay) = ReplayBody::new(chunks_and_trailers()).prepare(64);
        let ReplayKind::Recorded { recorder, .. } = &replay.kind else {
            panic!("a ReplayBody is recorded");
        };
        let recorder = Arc::clone(recorder);
        let poisoner = std::thread::spawn(move || {
            let _guard = recorder.lock();
            panic!("poisoning the recorder on purpose");
        });
        assert!(poisoner.join().is_err());

        let sent = frames(first).await.expect("first attempt");
        assert_eq!(sent.len(), 4);
        assert!(replay.into_body().expect_err("poisoned").is_incomplete());
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_recording() {
        let (first, replay) = ReplayBody::new(chunks()).prepare(64);
        let ReplayKind::Recorded { recorder, .. } = &replay.kind else {
            panic!("a ReplayBody is recorded");
        };
        let recorder = Arc::downgrade(recorder);
        drop(replay);
        let mut first = pin!(first);
        let mut sent = 0;
        while let Some(frame) = first.as_mut().frame().await {
            frame.expect("data");
            sent += 1;
        }
        assert_eq!(sent, 3);
        let recorder = recorder.upgrade().expect("held by the first body");
        let recorder = lock(&recorder).expect("not poisoned");
        assert!(recorder.frames.is_empty(), "nothing kept for nobody");
        assert_eq!(recorder.phase, Phase::Recording);
    }

    #[tokio::test]
    async fn box_body_round_trip() {
        let body = BoxBody::new(chunks_and_trailers());
        let (first, replay) = body.prepare(64);
        let sent = frames(first).await.expect("first attempt");
        let again: BoxBody<Bytes, io::Error> = replay.into_body().expect("replayable");
        assert_eq!(frames(again).await.expect("replay"), sent);

        let (first, replay) = BoxBody::new(chunks()).prepare(11);
        frames(first).await.expect("first attempt");
        assert!(replay.into_body().expect_err("over").is_over_limit());
    }

    #[tokio::test]
    async fn unsync_box_body_round_trip() {
        let body = UnsyncBoxBody::new(chunks_and_trailers());
        let (first, replay) = body.prepare(64);
        let sent = frames(first).await.expect("first attempt");
        let again: UnsyncBoxBody<Bytes, io::Error> = replay.into_body().expect("replayable");
        assert_eq!(frames(again).await.expect("replay"), sent);
    }

    /// What a loopback server saw of one request.
    #[derive(Debug)]
    struct Received {
        content_length: Option<HeaderValue>,
        transfer_encoding: Option<HeaderValue>,
        body: Bytes,
        trailers: Option<HeaderMap>,
    }

    /// An HTTP/1 server on 127.0.0.1 that reads each request body in full, reports it and
    /// answers 401.
    async fn recording_server() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let collected = body.collect().await?;
                        let trailers = collected.trailers().cloned();
                        let _ = tx.send(Received {
                            content_length: parts
                                .headers
                                .get(http::header::CONTENT_LENGTH)
                                .cloned(),
                            transfer_encoding: parts
                                .headers
                                .get(http::header::TRANSFER_ENCODING)
                                .cloned(),
                            body: collected.to_bytes(),
                            trailers,
                        });
                        let mut response = Response::new(Empty::<Bytes>::new());
                        *response.status_mut() = StatusCode::UNAUTHORIZED;
                        Ok::<_, hyper::Error>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, rx)
    }

    type StreamingBody = ReplayBody<BoxBody<Bytes, io::Error>>;

    #[tokio::test]
    async fn hyper_client_resends_a_streamed_body_identically_with_content_length() {
        let (addr, mut received) = recording_server().await;
        let client: Client<_, StreamingBody> = Client::builder(TokioExecutor::new()).build_http();
        let uri = format!("http://{addr}/resource");

        let (first, replay) = ReplayBody::new(BoxBody::new(chunks())).prepare(64 * 1024);
        let response = client
            .request(Request::post(&uri).body(first).expect("request"))
            .await
            .expect("first attempt");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

        let again = replay.into_body().expect("the server read the whole body");
        let response = client
            .request(Request::post(&uri).body(again).expect("request"))
            .await
            .expect("second attempt");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

        let first = received.recv().await.expect("first request");
        let second = received.recv().await.expect("second request");
        assert_eq!(first.body, Bytes::from_static(b"abcdefghijkl"));
        assert_eq!(second.body, first.body);
        // The first attempt's length is unknown, so hyper streams it chunked; the replay knows
        // its length, so hyper sends Content-Length.
        assert_eq!(
            first.transfer_encoding.as_ref().map(|v| v.as_bytes()),
            Some(&b"chunked"[..])
        );
        assert_eq!(first.content_length, None);
        assert_eq!(second.transfer_encoding, None);
        assert_eq!(
            second.content_length.as_ref().map(|v| v.as_bytes()),
            Some(&b"12"[..])
        );
    }

    #[tokio::test]
    async fn hyper_client_resends_trailers_chunked() {
        let (addr, mut received) = recording_server().await;
        let client: Client<_, StreamingBody> = Client::builder(TokioExecutor::new()).build_http();
        let uri = format!("http://{addr}/resource");
        // HTTP/1 sends only the trailers the request announces.
        let request = |body| {
            Request::post(&uri)
                .header(http::header::TRAILER, "x-checksum")
                .body(body)
                .expect("request")
        };

        let (first, replay) =
            ReplayBody::new(BoxBody::new(chunks_and_trailers())).prepare(64 * 1024);
        client.request(request(first)).await.expect("first attempt");
        let again = replay.into_body().expect("the server read the whole body");
        client
            .request(request(again))
            .await
            .expect("second attempt");

        let first = received.recv().await.expect("first request");
        let second = received.recv().await.expect("second request");
        assert_eq!(first.body, Bytes::from_static(b"abcdefghijkl"));
        assert_eq!(first.trailers, Some(trailers()));
        assert_eq!(second.body, first.body);
        assert_eq!(second.trailers, first.trailers);
        assert_eq!(second.transfer_encoding, first.transfer_encoding);
        assert_eq!(second.content_length, None);
    }

    #[test]
    fn bodies_and_handles_are_send_and_replay_body_keeps_sync() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<ReplayBody<Script>>();
        sync::<ReplayBody<Script>>();
        send::<Replay<ReplayBody<Script>>>();
        send::<Replay<BoxBody<Bytes, Infallible>>>();
        sync::<NotReplayable>();
    }

    #[tokio::test]
    async fn trailers_end_the_recording_even_if_the_body_is_not_polled_again() {
        let (first, replay) = ReplayBody::new(chunks_and_trailers()).prepare(64);
        let mut first = std::pin::pin!(first);
        loop {
            let frame = std::future::poll_fn(|cx| first.as_mut().poll_frame(cx))
                .await
                .expect("a frame")
                .expect("no error");
            if frame.is_trailers() {
                break;
            }
        }
        // Not polled again, as hyper's HTTP/2 sender does after trailers.
        let again = replay.into_body().expect("replayable");
        let collected = again.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers()));
        assert_eq!(collected.to_bytes().len(), 12);
    }
}
