//! Tests of the test protected resource itself, through a plain hyper client over real TLS (and
//! plain HTTP), so that bearer-layer tests can rely on every switch doing what it says.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::support::client::tcp;
use crate::support::resource::{
    AUTHORIZATION_URI, Answer, BEARER_CHALLENGE, Mode, Resource, cae_challenge, revocation_claims,
};
use crate::support::tls::pki;
use crate::support::wait::wait_until;

// ---------------------------------------------------------------------------------------------
// A minimal client

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReqBody = BoxBody<Bytes, BoxError>;
type TestClient = Client<HttpsConnector<HttpConnector>, ReqBody>;

#[derive(Clone, Copy, Debug)]
enum Wire {
    H1,
    H2,
}

const WIRES: [Wire; 2] = [Wire::H1, Wire::H2];

fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki().ca_pem().as_bytes()) {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("CA is a valid root");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A client for `https://` (trusting only the test CA) and plain `http://` URLs, speaking only
/// HTTP/1.1 or only HTTP/2 (prior knowledge on plain HTTP).
fn client(wire: Wire) -> TestClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_or_http();
    match wire {
        Wire::H1 => Client::builder(TokioExecutor::new())
            .build(builder.enable_http1().wrap_connector(tcp())),
        Wire::H2 => Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(builder.enable_http2().wrap_connector(tcp())),
    }
}

fn full(body: impl Into<Bytes>) -> ReqBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

fn empty() -> ReqBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A request body fed frame by frame from a channel; it ends when the sender is dropped.
struct Streamed(mpsc::Receiver<Frame<Bytes>>);

impl Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown length: chunked on HTTP/1.1.
        SizeHint::default()
    }
}

fn streamed() -> (mpsc::Sender<Frame<Bytes>>, ReqBody) {
    let (tx, rx) = mpsc::channel(8);
    (tx, Streamed(rx).boxed())
}

struct Reply {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("body is UTF-8")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn challenge(&self) -> Option<&str> {
        self.header("www-authenticate")
    }
}

async fn send(client: &TestClient, request: Request<ReqBody>) -> Result<Reply, BoxError> {
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// `GET {url}{path}`, with `Authorization: Bearer {token}` if a token is given.
async fn get(client: &TestClient, resource: &Resource, path: &str, token: Option<&str>) -> Reply {
    let mut request = Request::get(format!("{}{path}", resource.url()));
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    send(client, request.body(empty()).unwrap()).await.unwrap()
}

/// The claims JSON carried by a CAE challenge.
fn challenge_claims(challenge: &str) -> String {
    let encoded = challenge
        .split_once("claims=\"")
        .expect("challenge has claims")
        .1
        .trim_end_matches('"');
    String::from_utf8(URL_SAFE.decode(encoded).expect("claims are base64url")).unwrap()
}

const CAE_CLAIMS: &str = r#"{"access_token":{"acrs":{"essential":true,"value":"c1?>>~"}}}"#;
/// `CAE_CLAIMS` in base64url with padding: note `_`, `-` and `=`.
const CAE_CLAIMS_B64URL: &str =
    "eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzE_Pj5-In19fQ==";

// ---------------------------------------------------------------------------------------------
// Mode::AcceptAny

#[tokio::test]
async fn accepted_request_gets_200_json_echoing_token_method_path_and_body_len() {
    let resource = Resource::start().await;
    for wire in WIRES {
        let request = Request::post(format!("{}/things/1?api-version=2", resource.url()))
            .header(header::AUTHORIZATION, "Bearer at-1-contoso")
            .body(full("hello"))
            .unwrap();
        let reply = send(&client(wire), request).await.unwrap();

        assert_eq!(reply.status, StatusCode::OK, "{wire:?}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.challenge(), None);
        assert_eq!(
            reply.text(),
            r#"{"ok":true,"token":"at-1-contoso","method":"POST","path":"/things/1?api-version=2","body_len":5}"#
        );
    }
    assert_eq!(resource.accepted_tokens(), ["at-1-contoso", "at-1-contoso"]);
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive_and_claims_tokens_are_accepted() {
    let resource = Resource::start().await;
    let request = Request::get(format!("{}/x", resource.url()))
        .header(header::AUTHORIZATION, "bEaReR at-2-t-claims")
        .body(empty())
        .unwrap();
    let reply = send(&client(Wire::H1), request).await.unwrap();

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["token"], "at-2-t-claims");
}

#[tokio::test]
async fn missing_credentials_or_another_scheme_get_a_plain_bearer_challenge() {
    let resource = Resource::start().await;
    let client = client(Wire::H1);
    let authorizations = [
        None,
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer"),
        Some("at-1-t"),
    ];
    for authorization in authorizations {
        let mut request = Request::get(format!("{}/x", resource.url()));
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let reply = send(&client, request.body(empty()).unwrap()).await.unwrap();

        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(reply.challenge(), Some(r#"Bearer realm="""#));
        assert_eq!(reply.challenge(), Some(BEARER_CHALLENGE));
    }
    assert!(resource.accepted_tokens().is_empty());
    assert_eq!(resource.count(), 4);
}

#[tokio::test]
async fn a_bearer_token_not_shaped_like_the_authoritys_gets_invalid_token() {
    let resource = Resource::start().await;
    let reply = get(&client(Wire::H1), &resource, "/x", Some("eyJ0eXAi.forged")).await;

    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let challenge = reply.challenge().unwrap();
    assert!(
        challenge.starts_with(r#"Bearer realm="", error="invalid_token", error_description=""#),
        "{challenge}"
    );
    assert_eq!(reply.json()["error"], "invalid_token");
}

#[tokio::test]
async fn revoked_token_gets_invalid_token_while_other_tokens_are_still_accepted() {
    let resource = Resource::start().await;
    let client = client(Wire::H1);
    resource.revoke("at-1-t");

    let revoked = get(&client, &resource, "/x", Some("at-1-t")).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        revoked.challenge(),
        Some(
            r#"Bearer realm="", error="invalid_token", error_description="The access token has been revoked.""#
        )
    );
    // In AcceptAny, a revoked claims token is rejected like any other.
    resource.revoke("at-2-t-claims");
    let claims = get(&client, &resource, "/x", Some("at-2-t-claims")).await;
    assert_eq!(claims.status, StatusCode::UNAUTHORIZED);

    let other = get(&client, &resource, "/x", Some("at-3-t")).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(resource.accepted_tokens(), ["at-3-t"]);
}

// ---------------------------------------------------------------------------------------------
// Mode::Cae

#[tokio::test]
async fn cae_mode_challenges_a_revoked_token_with_nbf_claims_of_now() {
    let resource = Resource::start().await;
    resource.set_mode(Mode::Cae);
    resource.revoke("at-1-t");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let reply = get(&client(Wire::H1), &resource, "/x", Some("at-1-t")).await;
    let after = before + 5;

    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let challenge = reply.challenge().unwrap();
    assert!(
        challenge.starts_with(&format!(
            r#"Bearer realm="", authorization_uri="{AUTHORIZATION_URI}", error="insufficient_claims", claims=""#
        )),
        "{challenge}"
    );
    let claims: Value = serde_json::from_str(&challenge_claims(challenge)).unwrap();
    let nbf: u64 = claims["access_token"]["nbf"]["value"]
        .as_str()
        .expect("nbf value is a string")
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&nbf),
        "{nbf} not in {before}..={after}"
    );
    assert_eq!(
        claims,
        json!({"access_token": {"nbf": {"essential": true, "value": nbf.to_string()}}})
    );
    assert_eq!(challenge, cae_challenge(&revocation_claims(nbf)));
    assert!(resource.accepted_tokens().is_empty());
}

#[tokio::test]
async fn cae_mode_accepts_claims_tokens_even_if_revoked_and_unrevoked_tokens() {
    let resource = Resource::start().await;
    let client = client(Wire::H2);
    resource.set_mode(Mode::Cae);
    resource.revoke("at-1-t");
    resource.revoke("at-2-t-claims");

    let challenged = get(&client, &resource, "/x", Some("at-1-t")).await;
    let claims = get(&client, &resource, "/x", Some("at-2-t-claims")).await;
    let plain = get(&client, &resource, "/x", Some("at-3-t")).await;
    let missing = get(&client, &resource, "/x", None).await;

    assert_eq!(challenged.status, StatusCode::UNAUTHORIZED);
    assert!(
        challenged
            .challenge()
            .unwrap()
            .contains("insufficient_claims")
    );
    assert_eq!(claims.status, StatusCode::OK);
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.challenge(), Some(BEARER_CHALLENGE));
    assert_eq!(resource.accepted_tokens(), ["at-2-t-claims", "at-3-t"]);
}

// ---------------------------------------------------------------------------------------------
// Queued answers

#[tokio::test]
async fn queued_cae_answer_challenges_with_the_claims_in_padded_base64url() {
    let resource = Resource::start().await;
    resource.push(Answer::Cae {
        claims: CAE_CLAIMS.to_owned(),
    });
    // Even a valid token is challenged: the queue comes before the mode.
    let reply = get(&client(Wire::H1), &resource, "/x", Some("at-1-t")).await;

    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.challenge().unwrap(),
        format!(
            r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", error="insufficient_claims", claims="{CAE_CLAIMS_B64URL}""#
        )
    );
    assert_eq!(reply.challenge().unwrap(), cae_challenge(CAE_CLAIMS));
    assert_eq!(challenge_claims(reply.challenge().unwrap()), CAE_CLAIMS);
    assert!(resource.accepted_tokens().is_empty());
    assert_eq!(resource.requests().len(), 1);
}

#[tokio::test]
async fn queued_unauthorized_sends_exactly_the_given_challenge_and_a_large_body() {
    let resource = Resource::start().await;
    let big = "x".repeat(1024 * 1024);
    for wire in WIRES {
        resource.push(Answer::Unauthorized {
            www_authenticate: Some(r#"Bearer realm="r", error="custom""#.to_owned()),
            body: big.clone(),
        });
        resource.push(Answer::Unauthorized {
            www_authenticate: None,
            body: "no challenge".to_owned(),
        });
        let client = client(wire);

        let challenged = get(&client, &resource, "/x", Some("at-1-t")).await;
        assert_eq!(challenged.status, StatusCode::UNAUTHORIZED, "{wire:?}");
        assert_eq!(
            challenged.challenge(),
            Some(r#"Bearer realm="r", error="custom""#)
        );
        assert_eq!(challenged.header("content-type"), None);
        assert_eq!(challenged.body.len(), big.len());

        let bare = get(&client, &resource, "/x", Some("at-1-t")).await;
        assert_eq!(bare.status, StatusCode::UNAUTHORIZED);
        assert_eq!(bare.challenge(), None);
        assert_eq!(bare.text(), "no challenge");
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_a_large_401_does_not_stall_the_resource() {
    let resource = Resource::start().await;
    for wire in WIRES {
        resource.push(Answer::Unauthorized {
            www_authenticate: Some(BEARER_CHALLENGE.to_owned()),
            body: "x".repeat(8 * 1024 * 1024),
        });
        let client = client(wire);
        let request = Request::get(format!("{}/x", resource.url()))
            .body(empty())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        // Never read the body; the resource keeps serving new requests and connections.
        let _unread = response;

        let next = get(&client, &resource, "/y", Some("at-1-t")).await;
        assert_eq!(next.status, StatusCode::OK, "{wire:?}");
        assert_eq!(resource.in_flight(), 0);
    }
}

#[tokio::test]
async fn queued_status_is_exact_with_repeated_headers_in_order() {
    let resource = Resource::start().await;
    resource.push(Answer::Status {
        status: 403,
        headers: vec![
            ("content-type".into(), "text/plain".into()),
            ("www-authenticate".into(), r#"Digest realm="a""#.into()),
            ("www-authenticate".into(), r#"Bearer realm="b""#.into()),
        ],
        body: "forbidden".into(),
    });
    resource.push(Answer::Status {
        status: 200,
        headers: vec![],
        body: "canned".into(),
    });
    let client = client(Wire::H1);

    let forbidden = get(&client, &resource, "/x", Some("at-1-t")).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.text(), "forbidden");
    assert_eq!(forbidden.header("content-type"), Some("text/plain"));
    let challenges: Vec<_> = forbidden
        .headers
        .get_all("www-authenticate")
        .iter()
        .collect();
    assert_eq!(challenges, [r#"Digest realm="a""#, r#"Bearer realm="b""#]);

    let canned = get(&client, &resource, "/x", Some("at-2-t")).await;
    assert_eq!(canned.status, StatusCode::OK);
    assert_eq!(canned.text(), "canned");
    // A canned 200 is not an acceptance by the resource.
    assert!(resource.accepted_tokens().is_empty());
}

#[tokio::test]
async fn queue_answers_in_order_then_the_mode_resumes() {
    let resource = Resource::start().await;
    let client = client(Wire::H1);
    resource.push(Answer::Status {
        status: 503,
        headers: vec![],
        body: String::new(),
    });
    resource.push(Answer::Cae {
        claims: CAE_CLAIMS.to_owned(),
    });

    let statuses = [
        get(&client, &resource, "/x", Some("at-1-t")).await.status,
        get(&client, &resource, "/x", Some("at-1-t")).await.status,
        get(&client, &resource, "/x", Some("at-1-t")).await.status,
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::UNAUTHORIZED,
            StatusCode::OK
        ]
    );
    assert_eq!(resource.accepted_tokens(), ["at-1-t"]);
}

#[tokio::test]
#[should_panic(expected = "invalid HTTP status")]
async fn push_rejects_an_answer_that_cannot_be_sent() {
    let resource = Resource::start().await;
    resource.push(Answer::Status {
        status: 1000,
        headers: vec![],
        body: String::new(),
    });
}

// ---------------------------------------------------------------------------------------------
// Delay and in-flight

#[tokio::test(start_paused = true)]
async fn delay_waits_on_tokios_clock_then_answers_by_the_mode() {
    let resource = Resource::start().await;
    resource.set_mode(Mode::Cae);
    resource.revoke("at-1-t");
    resource.push(Answer::Delay(Duration::from_secs(30)));
    resource.push(Answer::Delay(Duration::from_secs(30)));
    let client = client(Wire::H1);

    let started = Instant::now();
    let accepted = get(&client, &resource, "/x", Some("at-2-t")).await;
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert_eq!(accepted.status, StatusCode::OK);
    assert_eq!(accepted.json()["token"], "at-2-t");

    let challenged = get(&client, &resource, "/x", Some("at-1-t")).await;
    assert!(started.elapsed() >= Duration::from_secs(60));
    assert!(
        challenged
            .challenge()
            .unwrap()
            .contains("insufficient_claims")
    );
}

#[tokio::test(start_paused = true)]
async fn in_flight_counts_a_delayed_request_which_is_logged_before_it_is_answered() {
    let resource = Arc::new(Resource::start().await);
    resource.push(Answer::Delay(Duration::from_secs(5)));
    let pending = tokio::spawn({
        let resource = Arc::clone(&resource);
        async move { get(&client(Wire::H2), &resource, "/slow", Some("at-1-t")).await }
    });

    wait_until("the delayed request is in flight", || {
        resource.in_flight() == 1
    })
    .await;
    assert_eq!(resource.count(), 1);
    assert_eq!(resource.requests()[0].path, "/slow");
    assert!(resource.accepted_tokens().is_empty());

    assert_eq!(pending.await.unwrap().status, StatusCode::OK);
    assert_eq!(resource.in_flight(), 0);
    assert_eq!(resource.accepted_tokens(), ["at-1-t"]);
}

// ---------------------------------------------------------------------------------------------
// Early 401

#[tokio::test]
async fn early_unauthorized_answers_while_the_request_body_is_still_streaming() {
    let resource = Resource::start().await;
    for wire in WIRES {
        resource.clear();
        resource.push(Answer::EarlyUnauthorized {
            claims: CAE_CLAIMS.to_owned(),
        });
        let (tx, body) = streamed();
        tx.send(Frame::data(Bytes::from_static(b"first chunk")))
            .await
            .unwrap();
        // `tx` stays alive (and silent) for the whole exchange: the body never finishes.
        let request = Request::put(format!("{}/upload", resource.url()))
            .header(header::AUTHORIZATION, "Bearer at-1-t")
            .body(body)
            .unwrap();
        let client = client(wire);
        let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
            .await
            .unwrap_or_else(|_| panic!("{wire:?}: no answer while the body was streaming"))
            .unwrap();

        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{wire:?}");
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            cae_challenge(CAE_CLAIMS).as_str()
        );
        let seen = resource.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, Method::PUT);
        assert_eq!(seen[0].path, "/upload");
        assert_eq!(seen[0].authorization.as_deref(), Some("Bearer at-1-t"));
        assert!(seen[0].body.is_empty());
        assert!(resource.accepted_tokens().is_empty());
        drop(tx);

        // The resource serves the next request normally.
        let next = get(&client, &resource, "/x", Some("at-1-t")).await;
        assert_eq!(next.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn early_unauthorized_on_http1_says_connection_close_and_closes_without_reading_the_body() {
    let resource = Resource::start_http().await;
    resource.push(Answer::EarlyUnauthorized {
        claims: CAE_CLAIMS.to_owned(),
    });
    let addr = resource.url().trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Announces 100 bytes and sends 10; the rest never comes.
    tcp.write_all(b"PUT /u HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer));
    read.await
        .expect("the resource closes the connection")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(
        answer.contains(&format!(
            "\r\nwww-authenticate: {}\r\n",
            cae_challenge(CAE_CLAIMS)
        )),
        "{answer}"
    );
    let seen = resource.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body.is_empty());
}

// ---------------------------------------------------------------------------------------------
// What is recorded

#[tokio::test]
async fn requests_record_method_path_headers_authorization_body_and_version() {
    let resource = Resource::start().await;
    for (wire, version) in [(Wire::H1, Version::HTTP_11), (Wire::H2, Version::HTTP_2)] {
        resource.clear();
        let request = Request::patch(format!("{}/a/b?c=d&e", resource.url()))
            .header(header::AUTHORIZATION, "Bearer at-7-t")
            .header("x-ms-client-request-id", "abc")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(full(vec![0u8, 1, 2, 255]))
            .unwrap();
        let reply = send(&client(wire), request).await.unwrap();
        assert_eq!(reply.version, version);
        assert_eq!(reply.json()["body_len"], 4);

        let seen = resource.requests();
        assert_eq!(seen.len(), 1, "{wire:?}");
        let seen = &seen[0];
        assert_eq!(seen.method, Method::PATCH);
        assert_eq!(seen.path, "/a/b?c=d&e");
        assert_eq!(seen.version, version);
        assert_eq!(seen.authorization.as_deref(), Some("Bearer at-7-t"));
        assert_eq!(seen.bearer(), Some("at-7-t"));
        assert_eq!(seen.headers["x-ms-client-request-id"], "abc");
        assert_eq!(seen.body, Bytes::from_static(&[0, 1, 2, 255]));
        assert_eq!(seen.trailers, None);
    }
}

#[tokio::test]
async fn streamed_bodies_and_their_trailers_are_recorded_on_http2_and_chunked_http1() {
    let resource = Resource::start().await;
    for wire in WIRES {
        resource.clear();
        let (tx, body) = streamed();
        // HTTP/1.1 sends trailers only for fields announced in `Trailer`.
        let request = Request::post(format!("{}/stream", resource.url()))
            .header(header::AUTHORIZATION, "Bearer at-1-t")
            .header(header::TRAILER, "x-checksum")
            .body(body)
            .unwrap();
        let client = client(wire);
        let sending = tokio::spawn(async move {
            tx.send(Frame::data(Bytes::from_static(b"part one, ")))
                .await
                .unwrap();
            tx.send(Frame::data(Bytes::from_static(b"part two")))
                .await
                .unwrap();
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
            tx.send(Frame::trailers(trailers)).await.unwrap();
        });
        let reply = send(&client, request).await.unwrap();
        sending.await.unwrap();

        assert_eq!(reply.status, StatusCode::OK, "{wire:?}");
        assert_eq!(reply.json()["body_len"], 18);
        let seen = &resource.requests()[0];
        assert_eq!(seen.body, "part one, part two");
        let trailers = seen.trailers.as_ref().expect("trailers recorded");
        assert_eq!(trailers["x-checksum"], "abc123", "{wire:?}");
        if matches!(wire, Wire::H1) {
            assert_eq!(seen.headers[header::TRANSFER_ENCODING], "chunked");
        }
    }
}

#[tokio::test]
async fn requests_are_listed_in_head_arrival_order_even_if_bodies_finish_out_of_order() {
    let resource = Arc::new(Resource::start().await);
    let client = client(Wire::H2);
    let (tx, body) = streamed();
    let slow = tokio::spawn({
        let client = client.clone();
        let request = Request::post(format!("{}/first", resource.url()))
            .header(header::AUTHORIZATION, "Bearer at-1-t")
            .body(body)
            .unwrap();
        async move { send(&client, request).await.unwrap() }
    });
    wait_until("the first head arrived", || resource.count() == 1).await;

    let second = get(&client, &resource, "/second", Some("at-1-t")).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(resource.requests().len(), 1, "the first body is still open");
    tx.send(Frame::data(Bytes::from_static(b"done")))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);

    let paths: Vec<_> = resource.requests().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/first", "/second"]);
}

#[tokio::test]
async fn count_includes_every_answer_and_clear_keeps_mode_and_revocations() {
    let resource = Resource::start().await;
    let client = client(Wire::H1);
    resource.set_mode(Mode::Cae);
    resource.revoke("at-1-t");
    resource.push(Answer::Status {
        status: 500,
        headers: vec![],
        body: String::new(),
    });
    get(&client, &resource, "/x", Some("at-2-t")).await;
    get(&client, &resource, "/x", Some("at-2-t")).await;
    get(&client, &resource, "/x", None).await;
    assert_eq!(resource.count(), 3);
    assert_eq!(resource.requests().len(), 3);
    assert_eq!(resource.accepted_tokens(), ["at-2-t"]);

    resource.push(Answer::Status {
        status: 500,
        headers: vec![],
        body: String::new(),
    });
    resource.clear();
    assert_eq!(resource.count(), 0);
    assert!(resource.requests().is_empty());
    assert!(resource.accepted_tokens().is_empty());

    // The queued 500 is gone; the mode and the revocation still apply.
    let revoked = get(&client, &resource, "/x", Some("at-1-t")).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    assert!(revoked.challenge().unwrap().contains("insufficient_claims"));
    assert_eq!(resource.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Transport and lifetime

#[tokio::test]
async fn start_http_serves_plain_http1_and_http2() {
    let resource = Resource::start_http().await;
    let url = resource.url();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(!url.ends_with('/'));

    for (wire, version) in [(Wire::H1, Version::HTTP_11), (Wire::H2, Version::HTTP_2)] {
        let reply = get(&client(wire), &resource, "/plain", Some("at-1-t")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, version);
        assert_eq!(reply.json()["path"], "/plain");
    }
    assert_eq!(resource.count(), 2);
}

#[tokio::test]
async fn start_serves_https_from_the_test_ca_on_http1_and_http2() {
    let resource = Resource::start().await;
    let url = resource.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert!(!url.ends_with('/'));
    assert_eq!(resource.ca_pem(), pki().ca_pem());

    for (wire, version) in [(Wire::H1, Version::HTTP_11), (Wire::H2, Version::HTTP_2)] {
        let reply = get(&client(wire), &resource, "/", Some("at-1-t")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, version);
    }
}

#[tokio::test]
async fn dropping_the_resource_releases_delayed_requests_and_stops_accepting() {
    let resource = Resource::start().await;
    let url = resource.url();
    resource.push(Answer::Delay(Duration::from_secs(3600)));
    let client = client(Wire::H1);
    let delayed = tokio::spawn({
        let request = Request::get(format!("{url}/x"))
            .header(header::AUTHORIZATION, "Bearer at-1-t")
            .body(empty())
            .unwrap();
        let client = client.clone();
        async move { send(&client, request).await.map(|_| ()) }
    });
    wait_until("the delayed request is in flight", || {
        resource.in_flight() == 1
    })
    .await;

    drop(resource);
    let released = tokio::time::timeout(Duration::from_secs(10), delayed).await;
    assert!(released.expect("released promptly").unwrap().is_err());

    let request = Request::get(format!("{url}/x")).body(empty()).unwrap();
    assert!(
        send(&client, request).await.is_err(),
        "nothing listens any more"
    );
}
