//! [`ReplayBody`]: the body wrapper that records the first attempt and plays the recording.

use std::fmt;
use std::mem;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use pin_project_lite::pin_project;
use sync_wrapper::SyncWrapper;

use super::buffer::{Event, Phase, RecordedFrame, Recorder, Recording, lock, record};
use super::{Replay, ReplayKind, RetryBody};

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
    /// One exception to "exactly", while a [`Replay`] handle is kept: when a data frame brings
    /// what was yielded to the length the body is expected to have (its exact `size_hint` when
    /// prepared, or the request's `Content-Length` through the bearer layer) and the inner body
    /// does not report its end, the wrapper polls the inner body once more at once, to learn
    /// whether it ended. Many bodies (a stream, a channel) tell their end only on the poll after
    /// their last data, and a client may never make that poll: hyper's HTTP/2 client waits for
    /// send capacity first and gives up at a reset; its HTTP/1 client drops the body at its
    /// length. What that poll brings is yielded next, the frames staying the inner body's, in
    /// order; an end known this way makes `is_end_stream` true with the last data, and the
    /// `size_hint` counts data polled ahead. A body whose extra poll does something (reads past
    /// its length, logs its end) does it that much earlier, or at all under HTTP/1. A body
    /// whose end is not ready on that poll (`Pending`: a channel whose sender is dropped only
    /// later, a file reader) is polled by its caller as usual after, and its end is seen only
    /// if the caller polls on; bound it to its length, or drop a sender with its last chunk.
    /// Trailers polled ahead past the length an HTTP/1 client framed the body by, and never
    /// handed to it, were never sent (there is no room for them), and
    /// [`Replay::into_body_for`] leaves them out too.
    ///
    /// The body a [`Replay`] hands out yields the same data frames and trailers. Its `size_hint`
    /// is exact (so an HTTP/1 client sends `Content-Length`), except when the recording has
    /// trailers: then only the lower bound is set, so that HTTP/1 still uses chunked encoding,
    /// the only one that can carry trailers. Preparing a replayed body again is cheap and always
    /// succeeds: the recording is shared, not copied.
    pub struct ReplayBody<B>
    where
        B: Body,
    {
        #[pin]
        state: State<B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B>
    where
        B: Body,
    {
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
            // What the look-ahead at the expected length got, to yield next.
            ahead: Ahead<B::Error>,
        },
        /// The re-send: plays a finished recording.
        Replaying {
            recording: Recording,
        },
    }
}

/// What a recording body polled of its inner body ahead of its caller, once its data reached
/// the expected length (see [`ReplayBody`]). Small (24 bytes): what waits is boxed, as it
/// waits only in a CAE request's body, once, so that every other body stays the size it was.
pub(super) enum Ahead<E> {
    /// Nothing is waiting.
    Nothing,
    /// The inner body ended, and the recording knows it: every later poll yields the end.
    End,
    /// Trailers, recorded already (they are the body's last frame, and the recording is whole
    /// with them even if the caller never asks for them).
    Recorded(Box<Frame<Bytes>>),
    /// More data (a body longer than its hint) or an error: recorded as it is yielded, as it
    /// would have been without the look-ahead. `waiting` is the data's length, which the inner
    /// body's `size_hint` no longer counts. The wrapper keeps the body `Sync` whatever the
    /// error type (it is only ever reached through `&mut`).
    Unrecorded {
        waiting: u64,
        polled: SyncWrapper<Box<Result<Frame<Bytes>, E>>>,
    },
}

impl<E> Ahead<E> {
    fn unrecorded(polled: Result<Frame<Bytes>, E>) -> Self {
        let waiting = match &polled {
            Ok(frame) => frame.data_ref().map_or(0, |data| data.len() as u64),
            Err(_) => 0,
        };
        Ahead::Unrecorded {
            waiting,
            polled: SyncWrapper::new(Box::new(polled)),
        }
    }
}

impl<B: Body> ReplayBody<B> {
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
    fn recording(
        body: B,
        recorder: Arc<Mutex<Recorder>>,
        ahead: Ahead<B::Error>,
        limit: usize,
    ) -> (Self, Replay<Self>) {
        let replay = Replay {
            kind: ReplayKind::Recorded {
                recorder: Arc::clone(&recorder),
                limit,
                build: ReplayBody::replaying,
            },
        };
        let first = ReplayBody {
            state: State::Recording {
                body,
                recorder,
                ahead,
            },
        };
        (first, replay)
    }

    fn replaying(recording: Recording) -> Self {
        ReplayBody {
            state: State::Replaying { recording },
        }
    }
}

impl<B: Body + fmt::Debug> fmt::Debug for ReplayBody<B> {
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
            StateProj::Recording {
                mut body,
                recorder,
                ahead,
            } => {
                let polled = match mem::replace(ahead, Ahead::Nothing) {
                    Ahead::Nothing => body.as_mut().poll_frame(cx),
                    Ahead::End => {
                        *ahead = Ahead::End;
                        return Poll::Ready(None);
                    }
                    Ahead::Recorded(frame) => {
                        record(recorder, Event::TrailersYielded);
                        return Poll::Ready(Some(Ok(*frame)));
                    }
                    Ahead::Unrecorded { polled, .. } => Poll::Ready(Some(*polled.into_inner())),
                };
                // Nobody can read the recording once the `Replay` handle is gone.
                if Arc::strong_count(recorder) == 1 {
                    return polled;
                }
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
                if record(recorder, event) {
                    *ahead = look_ahead(body, recorder, cx);
                }
                polled
            }
            StateProj::Replaying { recording } => Poll::Ready(recording.next().map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Plain { body, .. } => body.is_end_stream(),
            State::Recording {
                body,
                recorder,
                ahead,
            } => {
                match ahead {
                    Ahead::Nothing => {}
                    Ahead::End => return true,
                    Ahead::Recorded(_) | Ahead::Unrecorded { .. } => return false,
                }
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
            State::Plain { body, .. } => body.size_hint(),
            State::Recording { body, ahead, .. } => match ahead {
                Ahead::Nothing => body.size_hint(),
                Ahead::End | Ahead::Recorded(_) => SizeHint::with_exact(0),
                Ahead::Unrecorded { waiting, .. } => {
                    // The inner body's hint no longer counts the data waiting here.
                    let inner = body.size_hint();
                    let mut hint = SizeHint::new();
                    hint.set_lower(inner.lower().saturating_add(*waiting));
                    if let Some(upper) = inner.upper() {
                        hint.set_upper(upper.saturating_add(*waiting));
                    }
                    hint
                }
            },
            State::Replaying { recording } => recording.size_hint(),
        }
    }
}

/// Polls `body` once more, right after the data that brought the recording to the expected
/// length, to learn whether that was its last: an end or trailers are recorded now (the
/// recording is whole even if the caller never polls again), anything else waits to be
/// yielded. On `Pending` the inner body holds `cx`'s waker, as if the caller had polled: the
/// caller, having just got data, polls again anyway (or drops the body), so no wakeup is
/// lost, and one that comes later is only an extra poll.
fn look_ahead<B: Body<Data = Bytes>>(
    body: Pin<&mut B>,
    recorder: &Mutex<Recorder>,
    cx: &mut Context<'_>,
) -> Ahead<B::Error> {
    match body.poll_frame(cx) {
        Poll::Pending => Ahead::Nothing,
        Poll::Ready(None) => {
            record(recorder, Event::End);
            Ahead::End
        }
        Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => match RecordedFrame::of(&frame) {
            Some(trailers) => {
                record(recorder, Event::TrailersAhead(trailers));
                Ahead::Recorded(Box::new(frame))
            }
            None => Ahead::unrecorded(Ok(frame)),
        },
        Poll::Ready(Some(other)) => Ahead::unrecorded(other),
    }
}

/// Prepared once: records while the first attempt streams. Prepared again while recording: the
/// new handle shares the recording, with its own limit. A replayed body: the new handle gets a
/// clone of the recording (no copying of data), always replayable. (`B::Error: Send`: an error
/// polled ahead waits in the body until it is yielded.)
impl<B> RetryBody for ReplayBody<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send,
{
    fn prepare(self, limit: usize) -> (Self, Replay<Self>) {
        match self.state {
            State::Plain { body, polled } => {
                let mut recorder = Recorder::new(limit);
                recorder.hint = body.size_hint().exact();
                recorder.expected = recorder.hint;
                if polled {
                    // Whatever was read before is missing from the recording.
                    recorder.phase = Phase::ReadBeforePrepare;
                } else if body.is_end_stream() {
                    // A body that is already at its end may never be polled (hyper does not).
                    recorder.phase = Phase::Complete;
                }
                ReplayBody::recording(body, Arc::new(Mutex::new(recorder)), Ahead::Nothing, limit)
            }
            State::Recording {
                body,
                recorder,
                ahead,
            } => {
                if let Some(mut shared) = lock(&recorder) {
                    shared.limit = shared.limit.max(limit);
                }
                // A body prepared again mid-stream keeps what it polled ahead.
                ReplayBody::recording(body, recorder, ahead, limit)
            }
            State::Replaying { recording } => {
                let again = ReplayBody::replaying(recording.clone());
                (ReplayBody::replaying(recording), Replay::ready(again))
            }
        }
    }
}

/// Wraps the body in a recording [`ReplayBody`] and boxes it again; the replay is boxed too.
/// (`E: Send`: the recording body, which may hold an error polled ahead, is boxed as `Send`.)
impl<E: Send + 'static> RetryBody for BoxBody<Bytes, E> {
    fn prepare(self, limit: usize) -> (Self, Replay<Self>) {
        fn replayed<E: Send + 'static>(recording: Recording) -> BoxBody<Bytes, E> {
            BoxBody::new(ReplayBody::<BoxBody<Bytes, E>>::replaying(recording))
        }
        let (first, replay) = ReplayBody::new(self).prepare(limit);
        (BoxBody::new(first), replay.map(BoxBody::new, replayed::<E>))
    }
}

/// Wraps the body in a recording [`ReplayBody`] and boxes it again; the replay is boxed too.
/// (`E: Send`: the recording body, which may hold an error polled ahead, is boxed as `Send`.)
impl<E: Send + 'static> RetryBody for UnsyncBoxBody<Bytes, E> {
    fn prepare(self, limit: usize) -> (Self, Replay<Self>) {
        fn replayed<E: Send + 'static>(recording: Recording) -> UnsyncBoxBody<Bytes, E> {
            UnsyncBoxBody::new(ReplayBody::<UnsyncBoxBody<Bytes, E>>::replaying(recording))
        }
        let (first, replay) = ReplayBody::new(self).prepare(limit);
        (
            UnsyncBoxBody::new(first),
            replay.map(UnsyncBoxBody::new, replayed::<E>),
        )
    }
}
