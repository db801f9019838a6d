//! The retry loop's contract with its [`BeforeRetry`] hook, over real sockets to the loopback
//! authority on tokio's paused clock: when the hook is asked (and shown what), and how the
//! hold it answers lengthens or ends the loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;
use tower::ServiceExt;

use super::{Answered, BeforeRetry, RetryOptions};
use crate::test_support::authority::{Authority, Fault};
use crate::transport::{HttpClient, HttpResponse};

/// What the hook was asked: the status of the answer shown, `None` when shown none.
type Asked = Arc<Mutex<Vec<Option<u16>>>>;

/// A hook recording what it is shown, answering that the endpoint is held until `hold`.
fn counting(hold: impl Fn() -> Option<Instant> + Send + Sync + 'static) -> (BeforeRetry, Asked) {
    let asked = Asked::default();
    let hook = BeforeRetry::new({
        let asked = Arc::clone(&asked);
        move |answer: Option<&HttpResponse>| {
            asked
                .lock()
                .unwrap()
                .push(answer.map(|a| a.status().as_u16()));
            hold()
        }
    });
    (hook, asked)
}

fn client(authority: &Authority, retry: RetryOptions) -> HttpClient {
    HttpClient::builder()
        .add_root_certificates_pem(authority.ca_pem())
        .timeout(None)
        .retry(retry)
        .build()
        .unwrap()
}

/// Sends one token request carrying `hook`; the final status, or `None` for an error.
async fn send(authority: &Authority, client: &HttpClient, hook: &BeforeRetry) -> Option<u16> {
    send_after(authority, client, hook, None).await
}

/// [`send`], the request carrying `answered` (an answer it already got) if any.
async fn send_after(
    authority: &Authority,
    client: &HttpClient,
    hook: &BeforeRetry,
    answered: Option<Answered>,
) -> Option<u16> {
    let mut request = http::Request::post(format!("{}/contoso/oauth2/v2.0/token", authority.url()))
        .body(Full::new(Bytes::from_static(
            b"grant_type=client_credentials",
        )))
        .unwrap();
    request.extensions_mut().insert(hook.clone());
    if let Some(answered) = answered {
        request.extensions_mut().insert(answered);
    }
    client
        .clone()
        .oneshot(request)
        .await
        .ok()
        .map(|answer| answer.status().as_u16())
}

fn quick() -> RetryOptions {
    RetryOptions::default()
        .initial_backoff(Duration::from_millis(100))
        .total_timeout(None)
}

/// Shown each answer it waits out, never the final one; after a failure without an answer it
/// is asked (for the hold) but shown nothing; asked again, shown nothing, once each wait is
/// over (a hold learned meanwhile); not asked at all when the loop's own wait is refused, for
/// want of retries or for the deadline.
#[tokio::test(start_paused = true)]
async fn the_hook_is_shown_each_answer_waited_out_and_nothing_else() {
    let authority = Authority::start().await;

    // A 503 waited out, then the final 200: shown the 503 only (then asked after the wait).
    let (hook, asked) = counting(|| None);
    authority.push_fault(Fault::ServerError(503));
    assert_eq!(
        send(&authority, &client(&authority, quick()), &hook).await,
        Some(200)
    );
    assert_eq!(*asked.lock().unwrap(), [Some(503), None]);

    // A connection closed without an answer, then the 200: asked, shown no answer.
    let (hook, asked) = counting(|| None);
    authority.push_fault(Fault::Close);
    assert_eq!(
        send(&authority, &client(&authority, quick()), &hook).await,
        Some(200)
    );
    assert_eq!(*asked.lock().unwrap(), [None, None]);

    // Retries used up: the final 503 is the caller's, not the hook's.
    let (hook, asked) = counting(|| None);
    for _ in 0..2 {
        authority.push_fault(Fault::ServerError(503));
    }
    let one_retry = client(&authority, quick().max_retries(1));
    assert_eq!(send(&authority, &one_retry, &hook).await, Some(503));
    assert_eq!(*asked.lock().unwrap(), [Some(503), None]);

    // The final failure without an answer: not asked for it either.
    let (hook, asked) = counting(|| None);
    for _ in 0..2 {
        authority.push_fault(Fault::Close);
    }
    assert_eq!(send(&authority, &one_retry, &hook).await, None);
    assert_eq!(*asked.lock().unwrap(), [None, None]);

    // A wait that would end past the deadline is not started, and the hook not asked.
    let (hook, asked) = counting(|| None);
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "10".into(),
    });
    let deadline = client(
        &authority,
        quick().total_timeout(Some(Duration::from_secs(5))),
    );
    assert_eq!(send(&authority, &deadline, &hook).await, Some(429));
    assert!(asked.lock().unwrap().is_empty());

    // Nor when it is longer than the client waits out.
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "90".into(),
    });
    assert_eq!(
        send(&authority, &client(&authority, quick()), &hook).await,
        Some(429)
    );
    assert!(asked.lock().unwrap().is_empty());
}

/// The endpoint held back longer than the request's own wait (a `Retry-After` a sibling
/// request was given): the retry waits until the hold ends; a hold that would outlast the
/// deadline or `max_retry_after` ends the loop at once with the last answer.
#[tokio::test(start_paused = true)]
async fn a_hold_longer_than_the_own_wait_is_waited_out_or_ends_the_loop() {
    let authority = Authority::start().await;
    let hold_for = |secs| {
        let until = Instant::now() + Duration::from_secs(secs);
        move || Some(until)
    };

    // Held 20 s: the retry after a 0.1 s backoff goes out at 20 s, no earlier.
    let (hook, asked) = counting(hold_for(20));
    let started = Instant::now();
    authority.push_fault(Fault::ServerError(503));
    assert_eq!(
        send(&authority, &client(&authority, quick()), &hook).await,
        Some(200)
    );
    let requests = authority.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].at - started, Duration::from_secs(20));
    assert_eq!(*asked.lock().unwrap(), [Some(503), None]);

    // After a failure without an answer too.
    let (hook, _) = counting(hold_for(20));
    let started = Instant::now();
    authority.push_fault(Fault::Close);
    assert_eq!(
        send(&authority, &client(&authority, quick()), &hook).await,
        Some(200)
    );
    assert_eq!(
        authority.requests()[3].at - started,
        Duration::from_secs(20)
    );

    // A hold shorter than the own wait changes nothing.
    let (hook, _) = counting(hold_for(1));
    let started = Instant::now();
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "7".into(),
    });
    assert_eq!(
        send(&authority, &client(&authority, quick()), &hook).await,
        Some(200)
    );
    assert_eq!(authority.requests()[5].at - started, Duration::from_secs(7));

    // Held past the deadline: the 503 at once, one attempt.
    let (hook, asked) = counting(hold_for(20));
    let started = Instant::now();
    authority.push_fault(Fault::ServerError(503));
    let deadline = client(
        &authority,
        quick().total_timeout(Some(Duration::from_secs(10))),
    );
    assert_eq!(send(&authority, &deadline, &hook).await, Some(503));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(*asked.lock().unwrap(), [Some(503)]);
    assert_eq!(authority.token_posts(), 7);

    // Held longer than the client waits out a Retry-After: the same, without a deadline.
    let (hook, _) = counting(hold_for(120));
    authority.push_fault(Fault::ServerError(503));
    assert_eq!(
        send(&authority, &client(&authority, quick()), &hook).await,
        Some(503)
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(authority.token_posts(), 8);

    // A failure without an answer held past the deadline: that error, at once.
    let (hook, _) = counting(hold_for(20));
    authority.push_fault(Fault::Close);
    assert_eq!(send(&authority, &deadline, &hook).await, None);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(authority.token_posts(), 9);
}

/// An answer the request already got ([`Answered`]) is the loop's first attempt: its wait is
/// reported to the hook and waited out before the request is sent; one longer than the client
/// waits out, or left no retry, is the outcome at once, nothing sent.
#[tokio::test(start_paused = true)]
async fn an_answer_already_had_is_the_first_attempt() {
    let authority = Authority::start().await;
    let answered = |status: u16, retry_after: Option<&str>| {
        let mut headers = http::HeaderMap::new();
        if let Some(wait) = retry_after {
            headers.insert("retry-after", wait.parse().unwrap());
        }
        let status = http::StatusCode::from_u16(status).unwrap();
        Some(Answered::new(status, headers, Bytes::from_static(b"{}")))
    };

    // A 429 asking for 7 s: shown to the hook, then the request goes at 7 s.
    let (hook, asked) = counting(|| None);
    let started = Instant::now();
    let retrying = client(&authority, quick());
    let status = send_after(&authority, &retrying, &hook, answered(429, Some("7"))).await;
    assert_eq!(status, Some(200));
    assert_eq!(*asked.lock().unwrap(), [Some(429), None]);
    let requests = authority.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].at - started, Duration::from_secs(7));

    // Asking for longer than the client waits out: that 429, at once, nothing sent.
    let (hook, asked) = counting(|| None);
    let started = Instant::now();
    let status = send_after(&authority, &retrying, &hook, answered(429, Some("90"))).await;
    assert_eq!(status, Some(429));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(asked.lock().unwrap().is_empty());

    // No retry left after it: the answer is the outcome.
    let no_retry = client(&authority, quick().max_retries(0));
    let status = send_after(&authority, &no_retry, &hook, answered(503, None)).await;
    assert_eq!(status, Some(503));
    assert_eq!(authority.token_posts(), 1);
}
