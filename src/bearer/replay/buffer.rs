//! The recording buffer shared by the first attempt's body and its [`Replay`](super::Replay)
//! handle(s): the frames kept, within the limit, and the finished recording a re-send plays.

use std::collections::VecDeque;
use std::mem;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRAILER, TRANSFER_ENCODING};
use http::{HeaderMap, Version};
use http_body::{Frame, SizeHint};

use super::{NotReplayable, Reason};

/// Frames a recording keeps besides one per [`FRAME_SHARE`] bytes of its limit. Each frame's
/// record takes about 100 bytes (a [`RecordedFrame`] is the size of its `HeaderMap`), so many
/// small frames would otherwise keep far more memory than the limit allows in data.
const FEW_FRAMES: usize = 16;

/// Bytes of the limit that allow one more frame: records then take at most about as much
/// memory as the data.
const FRAME_SHARE: usize = 128;

/// The most frames a recording under `limit` keeps.
pub(super) fn max_frames(limit: usize) -> usize {
    (limit / FRAME_SHARE).saturating_add(FEW_FRAMES)
}

/// One frame of a recording.
#[derive(Clone, Debug)]
pub(super) enum RecordedFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl RecordedFrame {
    /// `None` for a frame kind this module does not know (http-body may add some).
    pub(super) fn of(frame: &Frame<Bytes>) -> Option<Self> {
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
pub(super) enum Event {
    Frame {
        frame: RecordedFrame,
        end: bool,
    },
    /// Trailers the look-ahead polled, which the caller has not been handed yet.
    TrailersAhead(RecordedFrame),
    /// Those trailers handed to the caller.
    TrailersYielded,
    End,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Recording,
    Complete,
    OverLimit,
    TooManyFrames,
    Failed,
    ReadBeforePrepare,
}

/// State shared by the first attempt's body and its [`Replay`](super::Replay) handle(s).
pub(super) struct Recorder {
    /// Most data bytes kept: the largest limit of the handles sharing this recording.
    pub(super) limit: usize,
    /// Data bytes the first attempt has yielded so far, kept or not.
    seen: usize,
    pub(super) frames: VecDeque<RecordedFrame>,
    pub(super) phase: Phase,
    /// The body's exact size hint when it was prepared (see [`declared_length`]).
    pub(super) hint: Option<u64>,
    /// The data length at which the body is looked ahead of (see `ReplayBody`): the hint, or
    /// the request's `Content-Length` when the bearer layer tells it.
    pub(super) expected: Option<u64>,
    /// Whether the recording ends with trailers the look-ahead polled and the caller was not
    /// handed: an HTTP/1 client that stopped at the length never sent them.
    trailers_unsent: bool,
}

impl Recorder {
    pub(super) fn new(limit: usize) -> Self {
        Recorder {
            limit,
            seen: 0,
            frames: VecDeque::new(),
            phase: Phase::Recording,
            hint: None,
            expected: None,
            trailers_unsent: false,
        }
    }

    /// Applies one event; returns frames to drop once the lock is released.
    pub(super) fn apply(&mut self, event: Event) -> VecDeque<RecordedFrame> {
        if let Event::TrailersYielded = event {
            self.trailers_unsent = false;
            return VecDeque::new();
        }
        if self.phase != Phase::Recording {
            return VecDeque::new();
        }
        match event {
            Event::TrailersAhead(frame) => {
                let discarded = self.apply(Event::Frame { frame, end: true });
                self.trailers_unsent = self.phase == Phase::Complete;
                discarded
            }
            Event::TrailersYielded => VecDeque::new(),
            Event::Frame { frame, end } => {
                let data_len = match &frame {
                    RecordedFrame::Data(data) => Some(data.len()),
                    RecordedFrame::Trailers(_) => None,
                };
                self.seen = self.seen.saturating_add(data_len.unwrap_or(0));
                // An empty data frame carries nothing a re-send needs.
                let keep = data_len != Some(0);
                let too_many = keep && self.frames.len() >= max_frames(self.limit);
                if self.seen > self.limit || too_many {
                    self.phase = if too_many {
                        Phase::TooManyFrames
                    } else {
                        Phase::OverLimit
                    };
                    return mem::take(&mut self.frames);
                }
                if keep {
                    self.frames.push_back(frame);
                }
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

    /// Why a handle with `limit` can never replay this body, if that is settled already: more
    /// than the limit yielded (final: `seen` only grows), or announced by the exact size hint
    /// the body had when prepared, or a recording that ended without use. `None` while the
    /// body may still be sent whole within the limit (it may still be streaming).
    pub(super) fn refusal(&self, limit: usize) -> Option<NotReplayable> {
        let hinted_over = self
            .hint
            .is_some_and(|hint| u64::try_from(limit).is_ok_and(|limit| hint > limit));
        if self.seen > limit || hinted_over {
            return Some(NotReplayable::new(Reason::OverLimit { limit }));
        }
        let reason = match self.phase {
            Phase::Recording | Phase::Complete => return None,
            Phase::OverLimit => Reason::OverLimit { limit: self.limit },
            Phase::TooManyFrames => Reason::TooManyFrames { limit: self.limit },
            Phase::Failed => Reason::Failed,
            Phase::ReadBeforePrepare => Reason::ReadBeforePrepare,
        };
        Some(NotReplayable::new(reason))
    }

    /// Whether the data yielded so far is the expected length, the body not yet seen to end:
    /// then it is worth polling once more, to see the end (see `ReplayBody`).
    fn at_expected_length(&self) -> bool {
        self.phase == Phase::Recording
            && self
                .expected
                .is_some_and(|expected| u64::try_from(self.seen).is_ok_and(|seen| seen == expected))
    }

    /// The recording for a handle with `limit`, if it is complete and within that limit.
    /// `sent`, the request's headers and the response's version, may say how long the body is
    /// and whether that length ends it (see [`declared_length`]); without them only a body
    /// seen to end is whole.
    pub(super) fn recording(
        &self,
        limit: usize,
        sent: Option<(&HeaderMap, Version)>,
    ) -> Result<Recording, NotReplayable> {
        if self.seen > limit {
            return Err(NotReplayable::new(Reason::OverLimit { limit }));
        }
        if self.frames.len() > max_frames(limit) {
            return Err(NotReplayable::new(Reason::TooManyFrames { limit }));
        }
        match self.phase {
            Phase::Complete => {
                let mut frames = self.frames.clone();
                if self.trailers_unsent
                    && sent.is_some_and(|(headers, version)| {
                        stops_at_length(version)
                            && framed_length(headers, self.hint) == u64::try_from(self.seen).ok()
                    })
                {
                    // An HTTP/1 client framed the body by its length, sent that and no
                    // trailers (there is no room for them) and stopped; trailers polled past
                    // it (see `ReplayBody`) were never sent, and would turn the re-send
                    // chunked (a server wanting `Content-Length` answers 411) with trailers
                    // the first attempt lacked.
                    frames.retain(|frame| matches!(frame, RecordedFrame::Data(_)));
                }
                Ok(Recording::new(frames, self.seen))
            }
            // Only reachable when this handle, with a larger limit, joined a recording that
            // had already exceeded the shared one: the data is gone.
            Phase::OverLimit => Err(NotReplayable::new(Reason::OverLimit { limit: self.limit })),
            Phase::TooManyFrames => Err(NotReplayable::new(Reason::TooManyFrames {
                limit: self.limit,
            })),
            Phase::Recording => {
                let declared = declared_length(sent.map(|(headers, _)| headers), self.hint);
                if u64::try_from(self.seen).ok() != declared {
                    return Err(NotReplayable::new(Reason::Unfinished));
                }
                match sent {
                    // All the declared bytes are here: an HTTP/1 client writes no more (no
                    // trailers either) and stops polling the body there (hyper's drops it at
                    // once), so its end may never come.
                    Some((_, version)) if stops_at_length(version) => {
                        Ok(Recording::new(self.frames.clone(), self.seen))
                    }
                    // HTTP/2 (and later) reads the body past its declared length, to its end
                    // and trailers, even once the server has answered: bytes are not an end.
                    // Nor is the first body being gone: hyper drops it when the server resets
                    // the stream after answering (hyper's server does, dropping the body).
                    Some(_) => Err(NotReplayable::new(Reason::EndUnseen {
                        protocol_known: true,
                    })),
                    // The protocol untold: it may have been HTTP/2.
                    None => Err(NotReplayable::new(Reason::EndUnseen {
                        protocol_known: false,
                    })),
                }
            }
            Phase::Failed => Err(NotReplayable::new(Reason::Failed)),
            Phase::ReadBeforePrepare => Err(NotReplayable::new(Reason::ReadBeforePrepare)),
        }
    }
}

/// The body length a request declares, as hyper's HTTP/1 client takes it: none with a
/// `Transfer-Encoding` (chunked, read to its end), else its `Content-Length`, else the body's
/// exact size hint. None either when the request announces trailers (`Trailer`): they come
/// after the data, and a body cut at its length would lose them. Only an HTTP/1 client stops
/// at it ([`stops_at_length`]): over HTTP/2 trailers need not be announced.
fn declared_length(headers: Option<&HeaderMap>, hint: Option<u64>) -> Option<u64> {
    match headers {
        None => hint,
        Some(headers) if headers.contains_key(TRAILER) => None,
        Some(headers) => framed_length(headers, hint),
    }
}

/// The length by which hyper's HTTP/1 client frames a request body: none with a
/// `Transfer-Encoding` (chunked), else its `Content-Length`, else the body's exact size hint.
/// A `Trailer` header does not change it: hyper reads it only for a chunked body (1.x,
/// `proto/h1/role.rs`), and sends no trailers with a length.
fn framed_length(headers: &HeaderMap, hint: Option<u64>) -> Option<u64> {
    if headers.contains_key(TRANSFER_ENCODING) {
        return None;
    }
    match headers.get(CONTENT_LENGTH) {
        Some(_) => content_length(headers),
        None => hint,
    }
}

/// Whether a client that sent a request over `version` writes no more of its body than the
/// declared length: HTTP/1 does (a `Content-Length` body has no room for trailers), HTTP/2 and
/// later read the body to its end and send whatever trailers it yields, announced or not.
fn stops_at_length(version: Version) -> bool {
    matches!(
        version,
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    )
}

/// Records one event; true when the data now reaches the expected length, the end unseen
/// (see [`Recorder::at_expected_length`]). The lock covers only the field updates; dropped
/// frames are freed after.
pub(super) fn record(recorder: &Mutex<Recorder>, event: Event) -> bool {
    let (discarded, at_expected_length) = match lock(recorder) {
        Some(mut recorder) => {
            let discarded = recorder.apply(event);
            (discarded, recorder.at_expected_length())
        }
        // Poisoned: stop recording; `Replay::into_body` reports the body as not replayable.
        None => return false,
    };
    drop(discarded);
    at_expected_length
}

/// A request's `Content-Length`, if it has one that parses.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The lock, or `None` if a panic poisoned it.
pub(super) fn lock(recorder: &Mutex<Recorder>) -> Option<MutexGuard<'_, Recorder>> {
    recorder.lock().ok()
}

/// A finished recording, played by a replaying [`ReplayBody`](super::ReplayBody).
#[derive(Clone, Debug)]
pub(super) struct Recording {
    pub(super) frames: VecDeque<RecordedFrame>,
    /// Data bytes not yet played.
    pub(super) remaining: usize,
    /// Trailers frames not yet played.
    trailers: usize,
}

impl Recording {
    pub(super) fn new(frames: VecDeque<RecordedFrame>, len: usize) -> Self {
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

    pub(super) fn next(&mut self) -> Option<Frame<Bytes>> {
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

    pub(super) fn size_hint(&self) -> SizeHint {
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
