use std::convert::Infallible;
use std::io;
use std::marker::PhantomPinned;
use std::pin::pin;

use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use pin_project_lite::pin_project;

use super::buffer::{Phase, lock};
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
        // Whether it tells its end only by a poll that yields it, as a stream does.
        ends_late: bool,
        #[pin]
        _pinned: PhantomPinned,
    }
}

impl Script {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Script {
            steps: steps.into_iter().collect(),
            exact: None,
            ends_late: false,
            _pinned: PhantomPinned,
        }
    }

    /// Never reports `is_end_stream`: its end is known only once a poll yields it.
    fn ending_late(mut self) -> Self {
        self.ends_late = true;
        self
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
                    *exact = exact.saturating_sub(data.len() as u64);
                }
                Ok(Frame::data(Bytes::from_static(data)))
            }
            Some(Step::Trailers(trailers)) => Ok(Frame::trailers(trailers)),
            Some(Step::Error) => Err(io::Error::other("the body broke")),
        };
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        !self.ends_late && self.steps.is_empty()
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

/// 8 data bytes, as its exact hint says, then trailers: a body that tells its end (the
/// trailers) only on the poll after its last data.
fn eight_bytes_then_trailers() -> Script {
    Script::new([
        Step::Data(b"abcd"),
        Step::Data(b"efgh"),
        Step::Trailers(trailers()),
    ])
    .with_exact_hint(8)
    .ending_late()
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

/// A `String`'s clone copies it: kept within the limit, and past it not kept at all, while
/// the first attempt still gets it whole (a `Full<Bytes>` is replayable whatever the limit,
/// see above: its clone copies nothing).
#[tokio::test]
async fn string_body_replays_equal_bytes_within_the_limit_only() {
    let text = "{\"a\":1}";
    let (first, replay) = String::from(text).prepare(text.len());
    let again = replay.into_body().expect("replayable");
    assert_eq!(bytes_of(first).await, bytes_of(again).await);

    let (first, replay) = String::from(text).prepare(text.len() - 1);
    let err = replay.into_body().expect_err("past the limit");
    assert!(err.is_over_limit(), "{err}");
    assert_eq!(bytes_of(first).await, text.as_bytes());
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

/// Frames are kept within the limit too: their records would otherwise outweigh the data
/// (about 100 bytes for each one-byte frame). Empty data frames are not kept at all.
#[tokio::test]
async fn many_small_frames_are_bounded_and_empty_ones_not_kept() {
    let limit = 1024;
    let most = super::buffer::max_frames(limit);
    assert_eq!(most, 24, "one a 128 bytes of the limit, and 16 more");
    let body = |empty: usize, one_byte: usize| {
        let steps = std::iter::repeat_n(Step::Data(b""), empty)
            .chain(std::iter::repeat_n(Step::Data(b"x"), one_byte));
        ReplayBody::new(Script::new(steps)).prepare(limit)
    };

    let (first, replay) = body(100_000, most);
    frames(first).await.expect("first attempt");
    let again = replay
        .into_body()
        .expect("as many frames as the limit keeps");
    assert_eq!(bytes_of(again).await, Bytes::from("x".repeat(most)));

    let (first, replay) = body(0, most + 1);
    assert_eq!(frames(first).await.expect("first attempt").len(), most + 1);
    let err = replay.into_body().expect_err("one frame too many");
    assert!(err.is_over_limit(), "{err}");
    assert_eq!(
        err.to_string(),
        "the request body came in more frames than the 1024-byte replay limit keeps (24); send \
         it in fewer, larger chunks"
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
async fn a_body_that_yielded_its_declared_length_is_whole_without_being_polled_to_its_end() {
    // Not at its end after the data (a `Pending` follows, and another for the look-ahead at
    // the declared length to meet), as a stream never knows; a client writing a declared
    // length (hyper's HTTP/1) stops polling once it has that many bytes.
    let script = || {
        Script::new([
            Step::Data(b"abcd"),
            Step::Data(b"efgh"),
            Step::Pending,
            Step::Pending,
        ])
    };
    let first_two = async |first: ReplayBody<Script>| {
        let mut first = pin!(first);
        for _ in 0..2 {
            first.as_mut().frame().await.expect("frame").expect("data");
        }
        assert!(!first.is_end_stream());
    };
    let length = |value: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from_static(value),
        );
        headers
    };

    // Declared by the body's exact size hint.
    let (first, replay) = ReplayBody::new(script().with_exact_hint(8)).prepare(64);
    first_two(first).await;
    let again = replay
        .into_body_for(&HeaderMap::new(), Version::HTTP_11)
        .expect("all 8 bytes");
    assert_eq!(bytes_of(again).await, Bytes::from_static(b"abcdefgh"));
    // Not when the protocol is not told: it may have been HTTP/2.
    let (first, replay) = ReplayBody::new(script().with_exact_hint(8)).prepare(64);
    first_two(first).await;
    let err = replay.into_body().expect_err("end unseen");
    assert!(err.is_incomplete() && !err.is_over_limit(), "{err}");
    assert_eq!(
        err.to_string(),
        "the request body was not seen to end: its declared length was yielded, but unless it \
         went over HTTP/1 trailers may follow (Replay::into_body_for takes the protocol); a \
         body that reports is_end_stream() with its last frame, as Full does, is re-sent"
    );

    // Declared by the request's `Content-Length`, which wins over the hint as in hyper.
    for (hint, header, whole) in [
        (None, "8", true),
        (Some(9), "8", true),
        (Some(8), "9", false),
    ] {
        let body = match hint {
            Some(hint) => script().with_exact_hint(hint),
            None => script(),
        };
        let (first, replay) = ReplayBody::new(body).prepare(64);
        first_two(first).await;
        let got = replay.into_body_for(&length(header), Version::HTTP_11);
        assert_eq!(got.is_ok(), whole, "hint {hint:?}, content-length {header}");
    }

    // Whole at its length only when answered over HTTP/1: an HTTP/2 client reads the body on,
    // to its end and any trailers (see `hyper_stops_polling_a_body_at_its_length_over_http1_only`).
    for (version, whole) in [
        (Version::HTTP_09, true),
        (Version::HTTP_10, true),
        (Version::HTTP_11, true),
        (Version::HTTP_2, false),
        (Version::HTTP_3, false),
    ] {
        let (first, replay) = ReplayBody::new(script()).prepare(64);
        first_two(first).await;
        match replay.into_body_for(&length("8"), version) {
            Ok(again) => {
                assert!(whole, "{version:?}");
                assert_eq!(bytes_of(again).await, Bytes::from_static(b"abcdefgh"));
            }
            Err(err) => {
                assert!(!whole, "{version:?}");
                assert!(err.is_incomplete() && !err.is_over_limit(), "{err}");
                assert_eq!(
                    err.to_string(),
                    "the response arrived before the request body ended: its declared length \
                     was yielded, but over HTTP/2 or later trailers may follow; a body that \
                     reports is_end_stream() with its last frame, as Full does, is re-sent"
                );
            }
        }
    }
    // Over HTTP/2 a body seen to end is whole, with or without a declared length.
    let ended = Script::new([Step::Data(b"abcd"), Step::Data(b"efgh")]);
    let (first, replay) = ReplayBody::new(ended).prepare(64);
    frames(first).await.expect("first attempt");
    let again = replay.into_body_for(&length("8"), Version::HTTP_2);
    assert_eq!(bytes_of(again.expect("ended")).await, "abcdefgh");

    // More bytes than declared, or none declared, or chunked: the end is still to come.
    for headers in [length("4"), HeaderMap::new()] {
        let (first, replay) = ReplayBody::new(script()).prepare(64);
        first_two(first).await;
        let err = replay
            .into_body_for(&headers, Version::HTTP_11)
            .expect_err("unfinished");
        assert!(err.is_incomplete(), "{headers:?}");
    }
    let mut chunked = length("8");
    chunked.insert(
        http::header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    let (first, replay) = ReplayBody::new(script()).prepare(64);
    first_two(first).await;
    assert!(
        replay.into_body_for(&chunked, Version::HTTP_11).is_err(),
        "hyper ignores the length"
    );
    // Trailers announced: they follow the data, so the end is still to come.
    let mut announced = length("8");
    announced.insert(
        http::header::TRAILER,
        HeaderValue::from_static("x-checksum"),
    );
    let (first, replay) = ReplayBody::new(script()).prepare(64);
    first_two(first).await;
    assert!(
        replay.into_body_for(&announced, Version::HTTP_11).is_err(),
        "trailers to come"
    );
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
                        content_length: parts.headers.get(http::header::CONTENT_LENGTH).cloned(),
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

    let (first, replay) = ReplayBody::new(BoxBody::new(chunks_and_trailers())).prepare(64 * 1024);
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
    // An error polled ahead waits in the body: it needs no `Sync`, and takes little room.
    fn retry<T: RetryBody>() {}
    retry::<BoxBody<Bytes, std::cell::Cell<u8>>>();
    assert!(
        std::mem::size_of::<super::body::Ahead<io::Error>>() <= 3 * std::mem::size_of::<usize>()
    );
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

/// Known before the body is replayed: more bytes than the limit announced by the exact size
/// hint at `prepare`, or yielded; within the limit and still streaming, nothing is settled.
#[tokio::test]
async fn a_recording_past_the_limit_is_refused_before_it_is_asked_for() {
    let (_first, replay) = ReplayBody::new(Full::new(Bytes::from(vec![1u8; 11]))).prepare(10);
    assert!(replay.refusal().is_some_and(|r| r.is_over_limit()));
    let (_first, replay) = ReplayBody::new(Full::new(Bytes::from(vec![1u8; 10]))).prepare(10);
    assert_eq!(replay.refusal(), None);

    let stream = |chunks: Vec<Bytes>| {
        BoxBody::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))),
        )))
    };
    let (first, replay) =
        stream(vec![Bytes::from(vec![1u8; 8]), Bytes::from(vec![1u8; 8])]).prepare(10);
    assert_eq!(replay.refusal(), None, "no length known, nothing read");
    let mut first = pin!(first);
    first.frame().await.unwrap().unwrap();
    assert_eq!(replay.refusal(), None, "8 bytes, still streaming");
    first.frame().await.unwrap().unwrap();
    assert!(
        replay.refusal().is_some_and(|r| r.is_over_limit()),
        "16 bytes"
    );
}

// --- a body past its declared length, over real HTTP/1 and HTTP/2 connections ---

/// What a client asked of a [`Gated`] body, in order.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Asked {
    Data,
    Trailers,
    Pending,
    End,
    Dropped,
}

/// A body whose frames the test hands over (the sender of `frames`); it logs what each poll
/// answered, and its drop, to `asked`. It never knows its end ahead, as a stream does not.
struct Gated {
    frames: mpsc::UnboundedReceiver<Frame<Bytes>>,
    asked: mpsc::UnboundedSender<Asked>,
}

impl Body for Gated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let polled = self.frames.poll_recv(cx);
        let asked = match &polled {
            Poll::Pending => Asked::Pending,
            Poll::Ready(None) => Asked::End,
            Poll::Ready(Some(frame)) if frame.is_data() => Asked::Data,
            Poll::Ready(Some(_)) => Asked::Trailers,
        };
        let _ = self.asked.send(asked);
        polled.map(|frame| frame.map(Ok))
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        let _ = self.asked.send(Asked::Dropped);
    }
}

/// A [`Gated`] body with "abcd" queued (and "efgh" too, if `both`), the sender for more
/// frames and the log of what was asked of it.
fn gated(
    both: bool,
) -> (
    mpsc::UnboundedSender<Frame<Bytes>>,
    mpsc::UnboundedReceiver<Asked>,
    ReplayBody<Gated>,
) {
    let (frames, frames_rx) = mpsc::unbounded_channel();
    let (asked_tx, asked) = mpsc::unbounded_channel();
    frames
        .send(Frame::data(Bytes::from_static(b"abcd")))
        .unwrap();
    if both {
        frames
            .send(Frame::data(Bytes::from_static(b"efgh")))
            .unwrap();
    }
    let body = Gated {
        frames: frames_rx,
        asked: asked_tx,
    };
    (frames, asked, ReplayBody::new(body))
}

/// What was asked of the body so far.
fn asked_so_far(asked: &mut mpsc::UnboundedReceiver<Asked>) -> Vec<Asked> {
    std::iter::from_fn(|| asked.try_recv().ok()).collect()
}

/// What was asked of the body up to its drop, waiting for it.
async fn asked_until_dropped(asked: &mut mpsc::UnboundedReceiver<Asked>) -> Vec<Asked> {
    let mut seen = Vec::new();
    let until_dropped = async {
        while let Some(next) = asked.recv().await {
            seen.push(next);
            if next == Asked::Dropped {
                break;
            }
        }
    };
    bounded("the body's drop", until_dropped).await;
    seen
}

/// `future`'s output, or a panic naming `what` if it takes over 10 s: a guard against a hang
/// (should hyper change what it polls or drops), not a timing.
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after 10 s"))
}

/// The claims challenge the first request gets.
const CHALLENGE: &str =
    r#"Bearer error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsiZm9vIjoiYmFyIn19""#;

/// A loopback server, HTTP/1 or HTTP/2 (h2c, prior knowledge), that answers the first request
/// with a claims challenge once it has read `after` data bytes of its body, and then reads the
/// rest of it (`keep`) or drops it (an HTTP/2 server then resets the stream, RST_STREAM
/// NO_ERROR, as RFC 9113 §8.1 has it). Later requests are read whole and answered 200. Each
/// request is counted as its head arrives, and reported (its index and what the body brought)
/// once read.
async fn challenging_server(
    http2: bool,
    after: usize,
    keep: bool,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    mpsc::UnboundedReceiver<(usize, Received)>,
) {
    challenging_server_with(http2, after, keep, 0, None).await
}

/// [`challenging_server`] challenging the request of index `challenged` (the others are read
/// whole and answered 200), and, over HTTP/2, letting a client send at most `window` bytes
/// of a request body before it has read them (the initial stream window, `SETTINGS`).
async fn challenging_server_with(
    http2: bool,
    after: usize,
    keep: bool,
    challenged: usize,
    window: Option<u32>,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    mpsc::UnboundedReceiver<(usize, Received)>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (tx, rx) = mpsc::unbounded_channel();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, counter) = (tx.clone(), Arc::clone(&counter));
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (tx, nth) = (tx.clone(), counter.fetch_add(1, Ordering::SeqCst));
                async move {
                    let (parts, mut body) = request.into_parts();
                    let received = move |body: Bytes, trailers| Received {
                        content_length: parts.headers.get(http::header::CONTENT_LENGTH).cloned(),
                        transfer_encoding: parts
                            .headers
                            .get(http::header::TRANSFER_ENCODING)
                            .cloned(),
                        body,
                        trailers,
                    };
                    let mut response = Response::new(Empty::<Bytes>::new());
                    if nth != challenged {
                        let collected = body.collect().await?;
                        let trailers = collected.trailers().cloned();
                        let _ = tx.send((nth, received(collected.to_bytes(), trailers)));
                        return Ok::<_, hyper::Error>(response);
                    }
                    let mut read = Vec::new();
                    while read.len() < after {
                        match body.frame().await.transpose()? {
                            Some(frame) => read.extend(frame.data_ref().into_iter().flatten()),
                            None => break,
                        }
                    }
                    if keep {
                        tokio::spawn(async move {
                            if let Ok(rest) = body.collect().await {
                                let trailers = rest.trailers().cloned();
                                read.extend_from_slice(&rest.to_bytes());
                                let _ = tx.send((nth, received(read.into(), trailers)));
                            }
                        });
                    } else {
                        drop(body);
                        let _ = tx.send((nth, received(read.into(), None)));
                    }
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                    response.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(CHALLENGE),
                    );
                    Ok(response)
                }
            });
            let io = TokioIo::new(stream);
            if http2 {
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder.initial_stream_window_size(window);
                tokio::spawn(async move { builder.serve_connection(io, service).await });
            } else {
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service),
                );
            }
        }
    });
    (addr, count, rx)
}

fn plain_client<B>(http2: bool) -> Client<hyper_util::client::legacy::connect::HttpConnector, B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http()
}

/// A POST of `body` to `addr`, declaring 8 bytes.
fn post<B>(addr: std::net::SocketAddr, body: B) -> Request<B> {
    Request::post(format!("http://{addr}/resource"))
        .header(http::header::CONTENT_LENGTH, "8")
        .body(body)
        .expect("request")
}

/// What the replay rule rests on, shown with hyper itself: once a body has yielded its
/// declared length, hyper's HTTP/1 client drops it at once, never polling it again (so it
/// sends nothing more, and a body not seen to end was still sent whole); its HTTP/2 client
/// polls on, for trailers or the end, and sends the trailers it gets, announced or not. When
/// the server answers and drops the request body, an HTTP/2 client drops the body too, before
/// its end or trailers: a first body that is gone tells nothing over HTTP/2.
#[tokio::test]
async fn hyper_stops_polling_a_body_at_its_length_over_http1_only() {
    // HTTP/1: dropped right after the last declared byte, before the server even saw it.
    let (addr, _, mut received) = challenging_server(false, 8, true).await;
    let (_frames, mut asked, body) = gated(true);
    let response = bounded("the 401", plain_client(false).request(post(addr, body)))
        .await
        .expect("first attempt");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(
        asked_so_far(&mut asked),
        [Asked::Data, Asked::Data, Asked::Dropped]
    );
    let (_, first) = bounded("the first request", received.recv())
        .await
        .expect("first request");
    assert_eq!(
        (first.body, first.trailers),
        (Bytes::from("abcdefgh"), None)
    );

    // HTTP/2, the server reading on: polled past the length, alive after the answer, and the
    // trailers given after the answer go out.
    let (addr, _, mut received) = challenging_server(true, 8, true).await;
    let (frames, mut asked, body) = gated(true);
    let response = bounded("the 401", plain_client(true).request(post(addr, body)))
        .await
        .expect("first attempt");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.version(), Version::HTTP_2);
    let so_far = asked_so_far(&mut asked);
    assert_eq!(so_far[..3], [Asked::Data, Asked::Data, Asked::Pending]);
    assert!(!so_far.contains(&Asked::Dropped), "{so_far:?}");
    frames.send(Frame::trailers(trailers())).expect("alive");
    let rest = asked_until_dropped(&mut asked).await;
    assert_eq!(rest[rest.len() - 2..], [Asked::Trailers, Asked::Dropped]);
    let (_, first) = bounded("the first request", received.recv())
        .await
        .expect("first request");
    assert_eq!(first.body, "abcdefgh");
    assert_eq!(
        first.trailers,
        Some(trailers()),
        "sent though not announced"
    );

    // HTTP/2, the server dropping the body with its answer: the stream is reset, and the body
    // dropped without its trailers or end.
    let (addr, _, _received) = challenging_server(true, 8, false).await;
    let (_frames, mut asked, body) = gated(true);
    let response = bounded("the 401", plain_client(true).request(post(addr, body)))
        .await
        .expect("first attempt");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let all = asked_until_dropped(&mut asked).await;
    assert_eq!(all[..3], [Asked::Data, Asked::Data, Asked::Pending]);
    assert!(
        !all.contains(&Asked::Trailers) && !all.contains(&Asked::End),
        "{all:?}"
    );
}

/// A CAE layer over `client` (plain http allowed), whose credential answers at once (another
/// token for claims), except for a token with claims when `gate` is given: it then says so on
/// `gate.0` and waits for a permit of `gate.1`.
fn cae_service<S>(
    client: S,
    gate: Option<(mpsc::UnboundedSender<()>, Arc<tokio::sync::Semaphore>)>,
) -> crate::bearer::BearerToken<S> {
    use crate::credential::CredentialExt;
    use tower_layer::Layer;
    let credential = tower::service_fn(move |request: crate::TokenRequest| {
        let claims = request.claims().is_some();
        let gate = gate.clone().filter(|_| claims);
        async move {
            if let Some((asked, permits)) = gate {
                let _ = asked.send(());
                permits.acquire().await.expect("open").forget();
            }
            let expires = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
            let token = if claims { "claims-token" } else { "token" };
            Ok::<_, crate::CredentialError>(crate::AccessToken::new(token, expires))
        }
    });
    crate::bearer::BearerTokenLayer::builder(credential.boxed_credential(), ["s"])
        .enable_cae(true)
        .allow_insecure_http(true)
        .build()
        .layer(client)
}

/// Over HTTP/2 a body is read to its end, and trailers need not be announced: a body that
/// yielded its declared length but was answered before its trailers (or end) came is not
/// known to be whole. Whether hyper still holds it (the server reads on) or has dropped it
/// (the server dropped the request body, resetting the stream), the layer returns the 401
/// rather than re-send the body without its trailers. (It used to re-send it.)
#[tokio::test]
async fn over_http2_a_body_answered_before_its_trailers_is_not_resent_without_them() {
    use std::sync::atomic::Ordering;
    use tower::ServiceExt;
    for keep in [true, false] {
        let (addr, count, mut received) = challenging_server(true, 8, keep).await;
        let (frames, mut asked, body) = gated(true);
        let service = cae_service(plain_client(true), None);
        let response = bounded("the answer", service.oneshot(post(addr, body)))
            .await
            .expect("an answer");
        // A re-send plays a recording, which cannot hold trailers the body had not yielded.
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "keep {keep}");
        assert_eq!(count.load(Ordering::SeqCst), 1, "not re-sent (keep {keep})");

        // The first attempt was not cut short by the layer: the trailers given now go out
        // while the server reads on.
        if keep {
            frames.send(Frame::trailers(trailers())).expect("alive");
            let (nth, first) = bounded("the first request", received.recv())
                .await
                .expect("first request");
            assert_eq!((nth, first.trailers), (0, Some(trailers())));
        }
        asked_until_dropped(&mut asked).await;
    }
}

/// Over HTTP/2 a body whose trailers came (and with them its end) before the claims token is
/// re-sent with them.
#[tokio::test]
async fn over_http2_a_body_whose_trailers_came_before_the_claims_token_is_resent_with_them() {
    let (addr, _, mut received) = challenging_server(true, 8, true).await;
    let (asked_claims, mut claims_asked) = mpsc::unbounded_channel();
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let service = cae_service(
        plain_client(true),
        Some((asked_claims, Arc::clone(&permits))),
    );
    let (frames, mut asked, body) = gated(true);
    let call = tokio::spawn(tower::ServiceExt::oneshot(service, post(addr, body)));

    bounded("the claims token asked for", claims_asked.recv())
        .await
        .expect("a claims token asked for");
    frames.send(Frame::trailers(trailers())).expect("alive");
    let rest = asked_until_dropped(&mut asked).await;
    assert_eq!(rest[rest.len() - 2..], [Asked::Trailers, Asked::Dropped]);
    permits.add_permits(1);

    let response = bounded("the answer", call)
        .await
        .expect("no panic")
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK, "re-sent");
    let mut requests = [
        bounded("a request", received.recv()).await,
        bounded("a request", received.recv()).await,
    ]
    .map(|r| r.expect("request"));
    requests.sort_by_key(|(nth, _)| *nth);
    let [(_, first), (_, second)] = requests;
    assert_eq!(
        (&first.body[..], &first.trailers),
        (&b"abcdefgh"[..], &Some(trailers()))
    );
    assert_eq!((second.body, second.trailers), (first.body, first.trailers));
}

/// Over HTTP/1 the declared length still ends a body: a `Content-Length` body answered (by a
/// server reading on) before it had yielded all of it, which then yields the rest and is
/// dropped by hyper without its end, is re-sent whole once the claims token comes.
#[tokio::test]
async fn over_http1_a_content_length_body_answered_before_its_last_bytes_is_resent_whole() {
    let (addr, _, mut received) = challenging_server(false, 4, true).await;
    let (asked_claims, mut claims_asked) = mpsc::unbounded_channel();
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let service = cae_service(
        plain_client(false),
        Some((asked_claims, Arc::clone(&permits))),
    );
    let (frames, mut asked, body) = gated(false);
    let call = tokio::spawn(tower::ServiceExt::oneshot(service, post(addr, body)));

    // The 401 came (the layer asks for the claims token) while hyper still holds the body.
    bounded("the claims token asked for", claims_asked.recv())
        .await
        .expect("a claims token asked for");
    let so_far = asked_so_far(&mut asked);
    assert!(!so_far.contains(&Asked::Dropped), "{so_far:?}");
    frames
        .send(Frame::data(Bytes::from_static(b"efgh")))
        .expect("alive");
    // The look-ahead at the declared length polls once more (the end is not told yet), and
    // hyper drops the body without another poll.
    let rest = asked_until_dropped(&mut asked).await;
    assert_eq!(
        rest[rest.len() - 3..],
        [Asked::Data, Asked::Pending, Asked::Dropped]
    );
    permits.add_permits(1);

    let response = bounded("the answer", call)
        .await
        .expect("no panic")
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK, "re-sent");
    let mut requests = [
        bounded("a request", received.recv()).await,
        bounded("a request", received.recv()).await,
    ]
    .map(|r| r.expect("request"));
    requests.sort_by_key(|(nth, _)| *nth);
    let [(_, first), (_, second)] = requests;
    assert_eq!(first.body, "abcdefgh");
    assert_eq!(second.body, first.body);
    assert_eq!(
        second.content_length.as_ref().map(HeaderValue::as_bytes),
        Some(&b"8"[..])
    );
}

/// A [`challenging_server_with`] over HTTP/2 challenging its second request and letting 4
/// body bytes in, and a client that has made its first request: so it has the server's
/// settings (the window) before the one under test goes out on the same connection.
async fn windowed_http2() -> (
    std::net::SocketAddr,
    Client<hyper_util::client::legacy::connect::HttpConnector, ReplayBody<Gated>>,
    mpsc::UnboundedReceiver<(usize, Received)>,
) {
    let (addr, _, received) = challenging_server_with(true, 0, false, 1, Some(4)).await;
    let client = plain_client(true);
    let (frames, _asked, body) = gated(false);
    drop(frames);
    let request = Request::post(format!("http://{addr}/warm-up"))
        .body(body)
        .expect("request");
    let response = bounded("the warm-up", client.request(request))
        .await
        .expect("warm-up");
    assert_eq!(response.status(), StatusCode::OK);
    (addr, client, received)
}

/// Over HTTP/2 a body that ends without trailers, but reports its end only on the poll after
/// its last data (as a stream or a channel does), is whole once that data is out: its 401 is
/// answered with the body re-sent, though hyper never polls it again. Hyper polls the next
/// frame only once its last data has send capacity, and stops at RST_STREAM: here the server
/// lets 4 bytes in (its stream window), answers without reading them, and drops the body, so
/// hyper holds "efgh" until the reset and drops the body with it. The claims token comes at
/// once; no timing is involved. (It used to be refused, the end unseen.)
#[tokio::test]
async fn over_http2_a_body_that_ends_after_its_last_data_is_resent_whole() {
    use tower::ServiceExt;
    let (addr, client, mut received) = windowed_http2().await;

    // "abcd", "efgh" and its end are all there from the start.
    let (frames, mut asked, body) = gated(true);
    drop(frames);
    let service = cae_service(client, None);
    let response = bounded("the answer", service.oneshot(post(addr, body)))
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::OK, "re-sent");
    let all = asked_until_dropped(&mut asked).await;
    assert_eq!(all, [Asked::Data, Asked::Data, Asked::End, Asked::Dropped]);

    let mut requests = [
        bounded("a request", received.recv()).await,
        bounded("a request", received.recv()).await,
        bounded("a request", received.recv()).await,
    ]
    .map(|r| r.expect("request"));
    requests.sort_by_key(|(nth, _)| *nth);
    let [_, (_, first), (_, second)] = requests;
    assert_eq!(first.body, "", "answered unread");
    assert_eq!(
        (&second.body[..], second.trailers),
        (&b"abcdefgh"[..], None)
    );
    assert_eq!(
        second.content_length.as_ref().map(HeaderValue::as_bytes),
        Some(&b"8"[..])
    );
}

/// Headers declaring `value` bytes.
fn content_length(value: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from_static(value),
    );
    headers
}

/// The next frame of `body`, which must be there.
async fn next_frame<B: Body<Data = Bytes>>(mut body: Pin<&mut B>) -> Frame<Bytes>
where
    B::Error: fmt::Debug,
{
    match body.frame().await {
        Some(frame) => frame.expect("no error"),
        None => panic!("the body ended"),
    }
}

/// A body that tells its end only on the poll after its last data (a stream, a channel) is
/// polled once more as its data reaches its expected length (its exact size hint, or the
/// request's `Content-Length` the layer tells): the recording is whole with that data,
/// though the caller never polls again, and the body reports its end with it.
#[tokio::test]
async fn a_body_reaching_its_expected_length_is_polled_once_more_for_its_end() {
    // By its exact size hint.
    let late = Script::new([Step::Data(b"abcd"), Step::Data(b"efgh")])
        .with_exact_hint(8)
        .ending_late();
    let (first, replay) = ReplayBody::new(late).prepare(64);
    let mut first = pin!(first);
    next_frame(first.as_mut()).await;
    assert!(!first.is_end_stream());
    next_frame(first.as_mut()).await;
    assert!(first.is_end_stream(), "the end comes with the last data");
    assert_eq!(hint(&*first), (0, Some(0)));
    let again = replay
        .into_body_for(&content_length("8"), Version::HTTP_2)
        .expect("seen to end");
    assert_eq!(bytes_of(again).await, "abcdefgh");
    assert!(first.as_mut().frame().await.is_none());
    assert!(first.as_mut().frame().await.is_none());

    // By the request's `Content-Length`, as the bearer layer tells it: once it is reached, and
    // only while a handle may replay the recording.
    for (told, handle) in [(true, true), (false, true), (true, false)] {
        let (frames, mut asked, body) = gated(true);
        drop(frames);
        let (first, replay) = body.prepare(64);
        if told {
            replay.expect_length(&content_length("8"));
        }
        let replay = handle.then_some(replay);
        let mut first = pin!(first);
        next_frame(first.as_mut()).await;
        assert_eq!(asked_so_far(&mut asked), [Asked::Data]);
        next_frame(first.as_mut()).await;
        let ahead = told && handle;
        let expected: &[Asked] = if ahead {
            &[Asked::Data, Asked::End]
        } else {
            &[Asked::Data]
        };
        assert_eq!(
            asked_so_far(&mut asked),
            expected,
            "told {told}, handle {handle}"
        );
        assert_eq!(first.is_end_stream(), ahead);
        if let Some(replay) = replay {
            let got = replay.into_body_for(&content_length("8"), Version::HTTP_2);
            assert_eq!(got.is_ok(), ahead, "told {told}");
        }
        assert!(first.as_mut().frame().await.is_none());
    }
}

/// What the look-ahead gets past the expected length is yielded next, in order: trailers
/// (recorded at once: they end the body), more data than the hint said or an error (each
/// recorded only as it is yielded, as without the look-ahead), or nothing yet (`Pending`:
/// the body is polled as usual after).
#[tokio::test]
async fn what_the_look_ahead_gets_is_yielded_next() {
    // Trailers: the recording is whole before the caller asks for them.
    let body = eight_bytes_then_trailers();
    let (first, replay) = ReplayBody::new(body).prepare(64);
    let mut first = pin!(first);
    next_frame(first.as_mut()).await;
    next_frame(first.as_mut()).await;
    assert!(!first.is_end_stream(), "the trailers are still to come");
    let again = replay
        .into_body_for(&HeaderMap::new(), Version::HTTP_2)
        .expect("seen to end");
    let collected = again.collect().await.expect("replay");
    assert_eq!(collected.trailers(), Some(&trailers()));
    let frame = next_frame(first.as_mut()).await;
    assert_eq!(frame.trailers_ref(), Some(&trailers()));
    assert!(first.as_mut().frame().await.is_none());

    // More data than the hint said: counted, with its hint, but recorded only once yielded.
    let body = Script::new([
        Step::Data(b"abcd"),
        Step::Data(b"efgh"),
        Step::Data(b"ijkl"),
    ])
    .with_exact_hint(8)
    .ending_late();
    let (first, at_eight) = ReplayBody::new(body).prepare(64);
    let (first, at_end) = first.prepare(64);
    let mut first = pin!(first);
    next_frame(first.as_mut()).await;
    next_frame(first.as_mut()).await;
    assert_eq!(hint(&*first), (4, Some(4)), "the waiting data counts");
    let http1 = at_eight.into_body_for(&content_length("8"), Version::HTTP_11);
    assert_eq!(bytes_of(http1.expect("as before")).await, "abcdefgh");
    assert_eq!(
        frames(first).await.expect("the rest"),
        [Seen::Data(Bytes::from_static(b"ijkl"))]
    );
    assert_eq!(
        bytes_of(at_end.into_body().expect("ended")).await,
        "abcdefghijkl"
    );

    // An error: yielded next, and recorded then.
    let body = Script::new([Step::Data(b"abcd"), Step::Data(b"efgh"), Step::Error])
        .with_exact_hint(8)
        .ending_late();
    let (first, before) = ReplayBody::new(body).prepare(64);
    let (first, after) = first.prepare(64);
    let mut first = pin!(first);
    next_frame(first.as_mut()).await;
    next_frame(first.as_mut()).await;
    assert!(!first.is_end_stream());
    let http1 = before.into_body_for(&content_length("8"), Version::HTTP_11);
    assert!(http1.is_ok(), "as before");
    assert!(first.as_mut().frame().await.expect("the error").is_err());
    assert!(after.into_body().expect_err("failed").is_incomplete());

    // Nothing yet: nothing is kept, and the look-ahead's poll left the caller's waker with
    // the inner body, so the frame that comes later wakes the caller.
    let (frames_tx, mut asked, body) = gated(true);
    let (first, replay) = body.prepare(64);
    replay.expect_length(&content_length("8"));
    let mut first = pin!(first);
    let wakes = Arc::new(Wakes::default());
    let waker = std::task::Waker::from(Arc::clone(&wakes));
    let mut cx = Context::from_waker(&waker);
    for _ in 0..2 {
        let polled = first.as_mut().poll_frame(&mut cx);
        assert!(matches!(polled, Poll::Ready(Some(Ok(_)))), "data");
    }
    assert_eq!(
        asked_so_far(&mut asked),
        [Asked::Data, Asked::Data, Asked::Pending]
    );
    assert!(!first.is_end_stream());
    assert_eq!(wakes.count(), 0);
    frames_tx.send(Frame::trailers(trailers())).expect("alive");
    assert_eq!(wakes.count(), 1, "the look-ahead's waker is woken");
    drop(frames_tx);
    let polled = first.as_mut().poll_frame(&mut cx);
    let Poll::Ready(Some(Ok(frame))) = polled else {
        panic!("the trailers, polled as usual");
    };
    assert_eq!(frame.trailers_ref(), Some(&trailers()));
    assert!(matches!(
        first.as_mut().poll_frame(&mut cx),
        Poll::Ready(None)
    ));
    let again = replay.into_body().expect("ended");
    let seen = frames(again).await.expect("replay");
    assert_eq!(seen.last(), Some(&Seen::Trailers(trailers())));
}

/// Counts its wakes.
#[derive(Default)]
struct Wakes(std::sync::atomic::AtomicUsize);

impl Wakes {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Over HTTP/1 a body that yielded its declared length (here its exact size hint: the
/// request has no `Content-Length`) was sent without its trailers, which the look-ahead then
/// got: the re-send is the same, `Content-Length` and no trailers, not a chunked body with
/// trailers the first attempt lacked (a server wanting a length answers that with 411). So
/// too when the request announces them (`Trailer`): hyper frames it by its length all the
/// same.
#[tokio::test]
async fn over_http1_trailers_past_the_declared_length_are_not_resent() {
    use tower::ServiceExt;
    for announced in [false, true] {
        let (addr, _, mut received) = challenging_server(false, 8, true).await;
        let body = eight_bytes_then_trailers();
        let mut request = Request::post(format!("http://{addr}/resource"));
        if announced {
            request = request.header(http::header::TRAILER, "x-checksum");
        }
        let request = request
            .body(ReplayBody::new(BoxBody::new(body)))
            .expect("request");
        let service = cae_service(plain_client(false), None);
        let response = bounded("the answer", service.oneshot(request))
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::OK, "re-sent");
        let mut requests = [
            bounded("a request", received.recv()).await,
            bounded("a request", received.recv()).await,
        ]
        .map(|r| r.expect("request"));
        requests.sort_by_key(|(nth, _)| *nth);
        let [(_, first), (_, second)] = requests;
        for (nth, sent) in [("first", &first), ("second", &second)] {
            let context = format!("{nth}, announced {announced}");
            assert_eq!(sent.body, "abcdefgh", "{context}");
            assert_eq!(sent.trailers, None, "{context}");
            assert_eq!(sent.transfer_encoding, None, "{context}");
            assert_eq!(
                sent.content_length.as_ref().map(HeaderValue::as_bytes),
                Some(&b"8"[..]),
                "{context}"
            );
        }
    }
}

/// Trailers the look-ahead polled are left out of an HTTP/1 re-send only while the caller was
/// not handed them: a caller that got them sent them (a service that reports HTTP/1.1 for an
/// HTTP/2 exchange it made, say), and they are re-sent.
#[tokio::test]
async fn trailers_handed_to_the_caller_are_resent_whatever_the_version() {
    for handed in [false, true] {
        let body = eight_bytes_then_trailers();
        let (first, replay) = ReplayBody::new(body).prepare(64);
        let mut first = pin!(first);
        next_frame(first.as_mut()).await;
        next_frame(first.as_mut()).await;
        if handed {
            let frame = next_frame(first.as_mut()).await;
            assert!(frame.is_trailers());
        }
        let again = replay
            .into_body_for(&HeaderMap::new(), Version::HTTP_11)
            .expect("whole");
        let collected = again.collect().await.expect("replay");
        let resent = collected.trailers().cloned();
        assert_eq!(resent.is_some(), handed, "handed {handed}");
    }
}

/// What the look-ahead cannot do: a body whose end is not ready on the poll after its last
/// data (a channel whose sender is dropped only later, a file read to its end by a later
/// read) is still unseen to end when hyper's HTTP/2 client gives up at the reset, and its 401
/// is returned. Bounding the body (`AsyncReadExt::take`) or dropping the sender with its last
/// chunk makes the end ready at once (the test above).
#[tokio::test]
async fn over_http2_a_body_whose_end_is_not_ready_after_its_last_data_is_not_resent() {
    use tower::ServiceExt;
    let (addr, client, mut received) = windowed_http2().await;

    // "abcd" and "efgh" are there from the start; the end only once the answer came.
    let (frames, mut asked, body) = gated(true);
    let service = cae_service(client, None);
    let response = bounded("the answer", service.oneshot(post(addr, body)))
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "not re-sent");
    drop(frames);
    let all = asked_until_dropped(&mut asked).await;
    assert_eq!(
        all,
        [Asked::Data, Asked::Data, Asked::Pending, Asked::Dropped]
    );
    let requests = [
        bounded("a request", received.recv()).await,
        bounded("a request", received.recv()).await,
    ];
    assert!(requests.iter().all(Option::is_some));
    assert!(received.try_recv().is_err(), "no third request");
}
