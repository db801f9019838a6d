//! Tests of the test authority itself, through a plain hyper client over real TLS, so that
//! library tests can rely on every switch doing what it says.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::support::authority::{Authority, CORRELATION_ID, Fault, TokenShape, error_body};
use crate::support::client::tcp;
use crate::support::tls::pki;
use crate::support::wait::wait_until;

// ---------------------------------------------------------------------------------------------
// A minimal client

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

fn http1_client() -> HttpsClient {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_only()
        .enable_http1()
        .wrap_connector(tcp());
    Client::builder(TokioExecutor::new()).build(connector)
}

fn http2_client() -> HttpsClient {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_only()
        .enable_http2()
        .wrap_connector(tcp());
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector)
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
}

async fn send(client: &HttpsClient, request: Request<Full<Bytes>>) -> Result<Reply, BoxError> {
    let response = client.request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

fn form(fields: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

fn token_request(
    authority: &Authority,
    tenant: &str,
    fields: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    Request::post(format!("{}/{tenant}/oauth2/v2.0/token", authority.url()))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form(fields))))
        .expect("valid request")
}

const CLIENT_CREDENTIALS: &[(&str, &str)] = &[
    ("client_id", "client-id"),
    ("client_secret", "s3cret"),
    ("grant_type", "client_credentials"),
    ("scope", "https://management.azure.com/.default"),
];

async fn post_token(
    client: &HttpsClient,
    authority: &Authority,
    tenant: &str,
) -> Result<Reply, BoxError> {
    send(client, token_request(authority, tenant, CLIENT_CREDENTIALS)).await
}

// ---------------------------------------------------------------------------------------------
// Successful answers

#[tokio::test]
async fn success_answer_has_entra_shape_with_json_numbers() {
    let authority = Authority::start().await;
    let reply = post_token(&http1_client(), &authority, "contoso")
        .await
        .unwrap();

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        reply.text(),
        r#"{"token_type":"Bearer","expires_in":3600,"ext_expires_in":3600,"access_token":"at-1-contoso"}"#
    );
}

#[tokio::test]
async fn token_shape_can_use_numeric_strings_and_optional_fields() {
    let authority = Authority::start().await;
    authority.set_response(TokenShape {
        expires_in: 3599,
        refresh_in: Some(1800),
        expires_on: Some(1_900_000_000),
        numbers_as_strings: true,
        token_type: None,
        omit_expiry: false,
    });
    let reply = post_token(&http1_client(), &authority, "contoso")
        .await
        .unwrap();

    assert_eq!(
        reply.json(),
        json!({
            "expires_in": "3599",
            "ext_expires_in": "3599",
            "refresh_in": "1800",
            "expires_on": "1900000000",
            "access_token": "at-1-contoso",
        })
    );
}

#[tokio::test]
async fn omit_expiry_drops_expires_in_and_expires_on() {
    let authority = Authority::start().await;
    authority.set_response(TokenShape {
        expires_on: Some(1_900_000_000),
        omit_expiry: true,
        ..TokenShape::default()
    });
    let body = post_token(&http1_client(), &authority, "contoso")
        .await
        .unwrap()
        .json();

    assert_eq!(body.get("expires_in"), None);
    assert_eq!(body.get("expires_on"), None);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["access_token"], "at-1-contoso");
}

#[tokio::test]
async fn tokens_are_numbered_per_answer_and_mark_claims_requests() {
    let authority = Authority::start().await;
    let client = http1_client();
    let token = |reply: Reply| reply.json()["access_token"].as_str().unwrap().to_owned();

    let first = token(post_token(&client, &authority, "contoso").await.unwrap());
    let second = token(post_token(&client, &authority, "fabrikam").await.unwrap());
    let with = |claims: &'static str| {
        let mut fields = CLIENT_CREDENTIALS.to_vec();
        fields.push(("claims", claims));
        fields
    };
    // Only the CAE capability: not a challenge, no mark.
    let capability = with(r#"{"access_token":{"xms_cc":{"values":["CP1"]}}}"#);
    let capability = token(
        send(&client, token_request(&authority, "contoso", &capability))
            .await
            .unwrap(),
    );
    // Claims answering a challenge (with or without the capability): marked.
    let challenge = with(
        r#"{"access_token":{"nbf":{"essential":true,"value":"1"},"xms_cc":{"values":["CP1"]}}}"#,
    );
    let with_claims = token(
        send(&client, token_request(&authority, "contoso", &challenge))
            .await
            .unwrap(),
    );

    assert_eq!(first, "at-1-contoso");
    assert_eq!(second, "at-2-fabrikam");
    assert_eq!(capability, "at-3-contoso");
    assert_eq!(with_claims, "at-4-contoso-claims");
}

// ---------------------------------------------------------------------------------------------
// The log and the counters

#[tokio::test]
async fn log_records_tenant_path_method_headers_and_form_in_order() {
    let authority = Authority::start().await;
    let fields = [
        ("scope", "a b"),
        ("client_id", "id"),
        ("grant_type", "client_credentials"),
        ("client_secret", "p&ss=word+ü"),
    ];
    let mut request = token_request(&authority, "contoso.onmicrosoft.com", &fields);
    request.headers_mut().insert(
        "x-ms-client-request-id",
        "11111111-2222-3333-4444-555555555555".parse().unwrap(),
    );
    send(&http1_client(), request).await.unwrap();

    let log = authority.requests();
    assert_eq!(log.len(), 1);
    let received = &log[0];
    assert_eq!(received.tenant, "contoso.onmicrosoft.com");
    assert_eq!(received.path, "/contoso.onmicrosoft.com/oauth2/v2.0/token");
    assert_eq!(received.method, Method::POST);
    assert_eq!(
        received.headers["x-ms-client-request-id"],
        "11111111-2222-3333-4444-555555555555"
    );
    assert_eq!(
        received.headers[header::CONTENT_TYPE],
        "application/x-www-form-urlencoded"
    );
    let form: Vec<(&str, &str)> = received
        .form
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(form, fields);
    assert_eq!(received.field("client_secret"), Some("p&ss=word+ü"));
    assert_eq!(received.field("claims"), None);
    assert_eq!(
        received.field_names(),
        ["client_id", "client_secret", "grant_type", "scope"]
    );
}

#[tokio::test]
async fn log_keeps_a_stray_query_in_the_path() {
    let authority = Authority::start().await;
    let request = Request::post(format!(
        "{}/t/oauth2/v2.0/token?api-version=1",
        authority.url()
    ))
    .body(Full::new(Bytes::from(form(CLIENT_CREDENTIALS))))
    .unwrap();
    assert_eq!(
        send(&http1_client(), request).await.unwrap().status,
        StatusCode::OK
    );

    assert_eq!(
        authority.requests()[0].path,
        "/t/oauth2/v2.0/token?api-version=1"
    );
}

#[tokio::test]
async fn request_bodies_over_a_mebibyte_get_413_and_are_not_logged() {
    let authority = Authority::start().await;
    let request = Request::post(format!("{}/t/oauth2/v2.0/token", authority.url()))
        .body(Full::new(Bytes::from(vec![b'a'; 1024 * 1024 + 1])))
        .unwrap();
    let reply = send(&http1_client(), request).await.unwrap();

    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(authority.token_posts(), 1);
    assert!(authority.requests().is_empty());
}

#[tokio::test]
async fn token_posts_count_faults_too_and_clear_resets_log_counter_and_faults() {
    let authority = Authority::start().await;
    let client = http1_client();
    authority.push_fault(Fault::ServerError(500));
    post_token(&client, &authority, "t").await.unwrap();
    post_token(&client, &authority, "t").await.unwrap();
    assert_eq!(authority.token_posts(), 2);
    assert_eq!(authority.requests().len(), 2);

    authority.push_fault(Fault::ServerError(503));
    authority.clear();
    assert_eq!(authority.token_posts(), 0);
    assert!(authority.requests().is_empty());

    // The queued 503 is gone, and numbering continues so tokens stay distinct.
    let reply = post_token(&client, &authority, "t").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["access_token"], "at-2-t");
    assert_eq!(authority.token_posts(), 1);
}

#[tokio::test]
async fn other_paths_and_methods_get_404_and_are_not_logged() {
    let authority = Authority::start().await;
    let client = http1_client();
    let url = authority.url();
    let requests = [
        (Method::GET, format!("{url}/contoso/oauth2/v2.0/token")),
        (Method::POST, format!("{url}/contoso/oauth2/token")),
        (Method::POST, format!("{url}/oauth2/v2.0/token")),
        (Method::POST, format!("{url}/a/b/oauth2/v2.0/token")),
        (Method::POST, format!("{url}//oauth2/v2.0/token")),
        (Method::GET, format!("{url}/")),
    ];
    for (method, uri) in requests {
        let request = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let reply = send(&client, request).await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {uri}");
        assert_eq!(reply.json()["error"], "not_found");
    }
    assert_eq!(authority.token_posts(), 0);
    assert!(authority.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn fault_queue_answers_in_order_then_recovers() {
    let authority = Authority::start().await;
    let client = http1_client();
    let invalid_client = error_body("invalid_client", 7000215, "Invalid client secret provided.");
    authority.push_fault(Fault::Respond {
        status: 401,
        body: invalid_client.clone(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("www-authenticate".into(), "Digest realm=\"a\"".into()),
            ("www-authenticate".into(), "Bearer realm=\"\"".into()),
        ],
    });
    authority.push_fault(Fault::ServerError(503));
    authority.push_fault(Fault::Body("<html>not json</html>".into()));

    let respond = post_token(&client, &authority, "t").await.unwrap();
    assert_eq!(respond.status, StatusCode::UNAUTHORIZED);
    assert_eq!(respond.text(), invalid_client);
    assert_eq!(respond.header("content-type"), Some("application/json"));
    let challenges: Vec<_> = respond.headers.get_all("www-authenticate").iter().collect();
    assert_eq!(challenges, ["Digest realm=\"a\"", "Bearer realm=\"\""]);

    let server_error = post_token(&client, &authority, "t").await.unwrap();
    assert_eq!(server_error.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server_error.json()["error"], "server_error");

    let body = post_token(&client, &authority, "t").await.unwrap();
    assert_eq!(body.status, StatusCode::OK);
    assert_eq!(body.text(), "<html>not json</html>");

    let recovered = post_token(&client, &authority, "t").await.unwrap();
    assert_eq!(recovered.status, StatusCode::OK);
    assert_eq!(recovered.json()["access_token"], "at-1-t");
    assert_eq!(authority.token_posts(), 4);
}

#[tokio::test]
async fn error_body_is_entra_shaped() {
    let body: Value = serde_json::from_str(&error_body(
        "invalid_client",
        7000215,
        "Invalid client secret provided.",
    ))
    .unwrap();

    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"], json!([7000215]));
    assert_eq!(body["correlation_id"], CORRELATION_ID);
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with("AADSTS7000215: Invalid client secret provided.\r\nTrace ID: ")
    );
    assert!(description.contains(&format!("\r\nCorrelation ID: {CORRELATION_ID}\r\n")));
    assert!(body["timestamp"].is_string() && body["trace_id"].is_string());
}

#[tokio::test]
async fn too_many_requests_sends_429_with_retry_after_and_entra_error() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::TooManyRequests {
        retry_after: "7".into(),
    });
    let reply = post_token(&http1_client(), &authority, "t").await.unwrap();

    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
}

#[tokio::test(start_paused = true)]
async fn delay_waits_on_tokio_clock_then_answers_normally() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::Delay(Duration::from_secs(30)));
    let started = Instant::now();
    let reply = post_token(&http1_client(), &authority, "t").await.unwrap();

    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["access_token"], "at-1-t");
}

#[tokio::test(start_paused = true)]
async fn in_flight_counts_requests_until_they_are_answered() {
    let authority = Arc::new(Authority::start().await);
    authority.push_fault(Fault::Delay(Duration::from_secs(5)));
    let pending = tokio::spawn({
        let authority = Arc::clone(&authority);
        async move { post_token(&http1_client(), &authority, "t").await.unwrap() }
    });

    wait_until("the delayed request is in flight", || {
        authority.in_flight() == 1
    })
    .await;
    // Logged before the fault applies.
    assert_eq!(authority.requests().len(), 1);
    assert_eq!(pending.await.unwrap().status, StatusCode::OK);
    assert_eq!(authority.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn hang_never_answers_but_other_requests_proceed() {
    let authority = Arc::new(Authority::start().await);
    authority.push_fault(Fault::Hang);
    let hung = tokio::spawn({
        let authority = Arc::clone(&authority);
        async move {
            let client = http1_client();
            let request = post_token(&client, &authority, "hung");
            tokio::time::timeout(Duration::from_secs(60), request).await
        }
    });
    wait_until("the hung request is in flight", || {
        authority.in_flight() == 1
    })
    .await;

    let other = post_token(&http1_client(), &authority, "other")
        .await
        .unwrap();
    assert_eq!(other.json()["access_token"], "at-1-other");

    assert!(
        hung.await.unwrap().is_err(),
        "the hung request must time out"
    );
    let tenants: Vec<_> = authority.requests().into_iter().map(|r| r.tenant).collect();
    assert_eq!(tenants, ["hung", "other"]);
}

#[tokio::test(start_paused = true)]
async fn a_hung_request_stops_counting_as_in_flight_once_the_client_gives_up() {
    let authority = Authority::start().await;
    for (client, posts) in [(http1_client(), 1), (http2_client(), 2)] {
        authority.push_fault(Fault::Hang);
        let mut request = Box::pin(post_token(&client, &authority, "t"));
        // The client gives up only once the server holds the request: given up sooner, there
        // would be nothing to see.
        tokio::select! {
            reply = &mut request => panic!("a hung request was answered: {:?}", reply.map(|r| r.status)),
            () = wait_until("the request is held", || authority.requests().len() == posts) => {}
        }
        drop(request);
        // The client keeps running; dropping the response future is what hyper notices.
        wait_until("the hung handler is dropped", || authority.in_flight() == 0).await;
        assert_eq!(authority.token_posts(), posts);
    }
}

#[tokio::test(start_paused = true)]
async fn hold_answers_normally_once_the_gate_opens_whatever_the_clock_does() {
    let authority = Arc::new(Authority::start().await);
    let gate = Arc::new(tokio::sync::Notify::new());
    authority.push_fault(Fault::Hold(Arc::clone(&gate)));
    let held = tokio::spawn({
        let authority = Arc::clone(&authority);
        async move { post_token(&http1_client(), &authority, "held").await }
    });
    wait_until("the held request is in flight", || {
        authority.in_flight() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!held.is_finished(), "still held an hour later");

    gate.notify_one();
    let reply = held.await.unwrap().unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["access_token"], "at-1-held");
}

#[tokio::test]
async fn dropping_the_authority_releases_hung_requests_and_stops_accepting() {
    let authority = Authority::start().await;
    let url = authority.url();
    authority.push_fault(Fault::Hang);
    let client = http1_client();
    let hung = tokio::spawn({
        let request = token_request(&authority, "t", CLIENT_CREDENTIALS);
        let client = client.clone();
        async move { send(&client, request).await.map(|_| ()) }
    });
    wait_until("the hung request is in flight", || {
        authority.in_flight() == 1
    })
    .await;

    drop(authority);
    let released = tokio::time::timeout(Duration::from_secs(10), hung).await;
    assert!(released.expect("released promptly").unwrap().is_err());

    let request = Request::post(format!("{url}/t/oauth2/v2.0/token"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(
        send(&http1_client(), request).await.is_err(),
        "nothing listens any more"
    );
}

#[tokio::test]
async fn close_drops_the_connection_without_an_answer() {
    let authority = Authority::start().await;
    let client = http1_client();
    authority.push_fault(Fault::Close);

    assert!(post_token(&client, &authority, "t").await.is_err());
    // The server survives and the request was logged and counted.
    let reply = post_token(&client, &authority, "t").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(authority.token_posts(), 2);
    assert_eq!(authority.requests().len(), 2);
}

#[tokio::test]
async fn oversized_answer_is_a_valid_token_response_of_at_least_the_requested_size() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::Oversized(256 * 1024));
    let reply = post_token(&http1_client(), &authority, "t").await.unwrap();

    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.len() >= 256 * 1024, "{} bytes", reply.body.len());
    assert!(reply.body.len() < 256 * 1024 + 16, "padded just enough");
    let body = reply.json();
    assert_eq!(body["access_token"], "at-1-t");
    assert_eq!(body["expires_in"], 3600);
}

#[tokio::test]
#[should_panic(expected = "not a 5xx status")]
async fn push_fault_rejects_faults_that_cannot_be_sent() {
    let authority = Authority::start().await;
    authority.push_fault(Fault::ServerError(404));
}

// ---------------------------------------------------------------------------------------------
// Transport

#[tokio::test(start_paused = true)]
async fn http2_is_served_and_a_hung_stream_does_not_block_the_connection() {
    let authority = Arc::new(Authority::start().await);
    let client = http2_client();
    authority.push_fault(Fault::Hang);
    let hung = tokio::spawn({
        let request = token_request(&authority, "hung", CLIENT_CREDENTIALS);
        let client = client.clone();
        async move { tokio::time::timeout(Duration::from_secs(60), send(&client, request)).await }
    });
    wait_until("the hung request is in flight", || {
        authority.in_flight() == 1
    })
    .await;

    let reply = post_token(&client, &authority, "h2").await.unwrap();
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.json()["access_token"], "at-1-h2");
    assert!(hung.await.unwrap().is_err());
    assert_eq!(authority.token_posts(), 2);
}

#[tokio::test]
async fn server_survives_failed_handshakes_and_garbage() {
    let authority = Authority::start().await;
    let addr = authority.url().trim_start_matches("https://").to_owned();

    // Plain text on a TLS port, then an abrupt close.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    drop(tcp);
    // A TLS client that does not trust the test CA.
    let untrusting = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(untrusting)
        .https_only()
        .enable_http1()
        .build();
    let untrusting = Client::builder(TokioExecutor::new()).build(connector);
    assert!(post_token(&untrusting, &authority, "t").await.is_err());

    let reply = post_token(&http1_client(), &authority, "t").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(authority.token_posts(), 1);
}
