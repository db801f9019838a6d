//! The managed-identity emulators themselves, driven by a plain HTTP client: each flavour
//! refuses a request without its secret, answers a correct one in its format, logs it, and
//! applies its fault switches. The Service Fabric emulator presents the certificate whose
//! SHA-1 it advertises.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;

use crate::support::client::hyper_client;
use crate::support::mi_emulator::{
    ARC_KEY, Emulator, ExpiresOn, Fault, Flavour, IDENTITY_HEADER, MSI_SECRET, UNKNOWN_RESOURCE,
    closed_port, ml_date, sha1_hex,
};

const RESOURCE: &str = "https://resource.test";

/// The request a correct client sends to `flavour`, with `extra` headers.
fn request(em: &Emulator, extra: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let flavour = em.flavour();
    let mut builder = if flavour == Flavour::CloudShell {
        Request::post(em.endpoint()).header("content-type", "application/x-www-form-urlencoded")
    } else {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("api-version", flavour.api_version().unwrap())
            .append_pair("resource", RESOURCE)
            .finish();
        Request::get(format!("{}?{query}", em.endpoint()))
    };
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    let body = if flavour == Flavour::CloudShell {
        format!("resource={}", urlencode(RESOURCE))
    } else {
        String::new()
    };
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The secret header each flavour requires.
fn secret_headers(flavour: Flavour) -> Vec<(&'static str, &'static str)> {
    match flavour {
        Flavour::Imds | Flavour::AzureArc | Flavour::CloudShell => vec![("metadata", "true")],
        Flavour::AppService => vec![("x-identity-header", IDENTITY_HEADER)],
        Flavour::AzureMl => vec![("secret", MSI_SECRET)],
        Flavour::ServiceFabric => vec![("secret", IDENTITY_HEADER)],
    }
}

async fn send(req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, String) {
    let response = hyper_client::<Full<Bytes>>().request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn every_http_flavour_refuses_a_request_without_its_secret_and_answers_one_with_it() {
    for flavour in Flavour::ALL {
        if flavour == Flavour::ServiceFabric {
            continue; // TLS with a pinned certificate: its own test below
        }
        let em = Emulator::start(flavour).await;
        let (status, _, _) = send(request(&em, &[])).await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED,
            "{flavour:?} without secret: {status}"
        );

        let mut headers = secret_headers(flavour);
        let key_header = format!("Basic {ARC_KEY}");
        if flavour == Flavour::AzureArc {
            // First the challenge naming the key file, then the file's contents.
            let (status, answer_headers, _) = send(request(&em, &headers)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            let challenge = answer_headers["www-authenticate"].to_str().unwrap();
            assert_eq!(
                challenge,
                format!("Basic realm={}", em.arc_key_file().display())
            );
            assert_eq!(std::fs::read_to_string(em.arc_key_file()).unwrap(), ARC_KEY);
            let (status, _, _) = send(request(
                &em,
                &[("metadata", "true"), ("authorization", "Basic wrong")],
            ))
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "a wrong key is refused");
            headers.push(("authorization", key_header.as_str()));
        }
        let (status, _, body) = send(request(&em, &headers)).await;
        assert_eq!(status, StatusCode::OK, "{flavour:?}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(body["access_token"].as_str().unwrap().starts_with("mi-"));
        assert_eq!(body["resource"], RESOURCE);
        match flavour {
            Flavour::Imds | Flavour::AzureArc | Flavour::CloudShell => {
                assert_eq!(body["expires_in"], "3600", "{flavour:?}: {body}");
            }
            _ => assert!(body.get("expires_in").is_none(), "{flavour:?}: {body}"),
        }
        if flavour != Flavour::AzureArc {
            let expires_on: u64 = body["expires_on"].as_str().unwrap().parse().unwrap();
            assert!(expires_on > 1_700_000_000);
        }

        let log = em.requests();
        let last = log.last().unwrap();
        assert_eq!(
            last.method,
            if flavour == Flavour::CloudShell {
                Method::POST
            } else {
                Method::GET
            }
        );
        assert_eq!(last.status, Some(200));
        if flavour == Flavour::CloudShell {
            assert_eq!(
                last.form(),
                vec![("resource".to_owned(), RESOURCE.to_owned())]
            );
            assert!(last.query.is_empty());
        } else {
            assert_eq!(last.param("resource"), Some(RESOURCE));
            assert_eq!(last.param_names(), ["api-version", "resource"]);
        }
        let expected: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(last.identity_headers, expected, "{flavour:?}");
    }
}

#[tokio::test]
async fn env_points_at_the_emulator_and_selects_the_source() {
    let names = |em: &Emulator| em.env().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let imds = Emulator::start(Flavour::Imds).await;
    assert_eq!(
        imds.env(),
        [(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_owned(),
            imds.base_url()
        )]
    );
    assert!(imds.base_url().starts_with("http://127.0.0.1:"));
    let arc = Emulator::start(Flavour::AzureArc).await;
    assert_eq!(names(&arc), ["IDENTITY_ENDPOINT", "IMDS_ENDPOINT"]);
    let sf = Emulator::start(Flavour::ServiceFabric).await;
    assert_eq!(
        names(&sf),
        [
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "IDENTITY_SERVER_THUMBPRINT"
        ]
    );
    assert!(sf.endpoint().starts_with("https://127.0.0.1:"));
    let ml = Emulator::start(Flavour::AzureMl).await;
    assert_eq!(names(&ml), ["MSI_ENDPOINT", "MSI_SECRET"]);
    let shell = Emulator::start(Flavour::CloudShell).await;
    assert_eq!(names(&shell), ["MSI_ENDPOINT"]);
}

#[tokio::test(start_paused = true)]
async fn fault_switches_apply_in_order_and_gone_follows_the_tokio_clock() {
    let em = Emulator::start(Flavour::Imds).await;
    let ok = || request(&em, &[("metadata", "true")]);

    em.gone_for(Duration::from_secs(70));
    assert_eq!(send(ok()).await.0, StatusCode::GONE);
    tokio::time::advance(Duration::from_secs(69)).await;
    assert_eq!(send(ok()).await.0, StatusCode::GONE);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(send(ok()).await.0, StatusCode::OK);

    em.push_fault(Fault::TooManyRequests {
        retry_after: "7".to_owned(),
    });
    em.push_faults(Fault::ServerError(500), 2);
    em.push_fault(Fault::Body("{not json".to_owned()));
    em.push_fault(Fault::IdentityNotFound);
    let (status, headers, _) = send(ok()).await;
    assert_eq!(
        (status, headers["retry-after"].to_str().unwrap()),
        (StatusCode::TOO_MANY_REQUESTS, "7")
    );
    assert_eq!(send(ok()).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(send(ok()).await.0, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _, body) = send(ok()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "{not json"));
    let (status, _, body) = send(ok()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"error": "invalid_request", "error_description": "Identity not found"})
    );
    // The queue is empty again: a normal answer.
    assert_eq!(send(ok()).await.0, StatusCode::OK);

    // A slow answer takes its time on the tokio clock.
    em.push_fault(Fault::Delay(Duration::from_secs(30)));
    let before = tokio::time::Instant::now();
    assert_eq!(send(ok()).await.0, StatusCode::OK);
    assert!(before.elapsed() >= Duration::from_secs(30));

    let statuses: Vec<Option<u16>> = em.requests().iter().map(|r| r.status).collect();
    let expected = [410, 410, 200, 429, 500, 500, 200, 400, 200, 200];
    assert_eq!(statuses, expected.map(Some));
    let times: Vec<u64> = em.requests().iter().map(|r| r.at.as_secs()).collect();
    assert_eq!(times, [0, 69, 70, 70, 70, 70, 70, 70, 70, 70]);
}

#[tokio::test]
async fn identity_not_found_for_the_unknown_resource_and_closed_port_refuses() {
    let em = Emulator::start(Flavour::AppService).await;
    let query = format!(
        "api-version=2019-08-01&resource={}",
        urlencode(UNKNOWN_RESOURCE)
    );
    let req = Request::get(format!("{}?{query}", em.endpoint()))
        .header("x-identity-header", IDENTITY_HEADER)
        .body(Full::default())
        .unwrap();
    assert_eq!(send(req).await.0, StatusCode::BAD_REQUEST);

    let port = closed_port();
    let err = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn azure_ml_dates_are_in_both_of_its_formats() {
    // 2020-01-16T05:24:12Z and 2019-06-20T14:57:58Z.
    assert_eq!(ml_date(1_579_152_252, true), "1/16/2020 5:24:12 AM +00:00");
    assert_eq!(ml_date(1_561_042_678, false), "06/20/2019 14:57:58 +00:00");
    assert_eq!(ml_date(1_561_042_678, true), "6/20/2019 2:57:58 PM +00:00");

    let em = Emulator::start(Flavour::AzureMl).await;
    em.set_expires_on(ExpiresOn::DateAmPm);
    let (_, _, body) = send(request(&em, &[("secret", MSI_SECRET)])).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["expires_on"].as_str().unwrap().ends_with(" +00:00"),
        "{body}"
    );
}

/// Accepts any server certificate and keeps the leaf it saw (handshake signatures are still
/// checked), as a thumbprint-pinning client does before comparing.
#[derive(Debug)]
struct Capture(Mutex<Option<Vec<u8>>>, Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.1.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.1.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn service_fabric_presents_the_certificate_it_advertises_and_checks_its_secret() {
    let em = Emulator::start(Flavour::ServiceFabric).await;
    assert_eq!(em.thumbprint().len(), 40);
    assert!(em.thumbprint().chars().all(|c| c.is_ascii_hexdigit()));

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let capture = Arc::new(Capture(Mutex::new(None), Arc::clone(&provider)));
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(crate::support::client::tcp());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(connector);

    let without = client.request(request(&em, &[])).await.unwrap();
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED);
    let body = without.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "SecretHeaderNotFound");

    let with = client
        .request(request(&em, &[("secret", IDENTITY_HEADER)]))
        .await
        .unwrap();
    assert_eq!(with.status(), StatusCode::OK);
    let body = with.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["expires_on"].is_u64(),
        "Service Fabric sends a number: {body}"
    );

    let leaf = capture
        .0
        .lock()
        .unwrap()
        .clone()
        .expect("a certificate was presented");
    assert_eq!(sha1_hex(&leaf), em.thumbprint());
}
