//! [`ReplayBody`]: the body wrapper that records the first attempt and plays the recording.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use pin_project_lite::pin_project;

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
                recorder.hint = body.size_hint().exact();
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
