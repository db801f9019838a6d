//! Loopback throughput: hyper-util's client → a hyper server (HTTP/1.1, keep-alive, plain
//! TCP so that TLS does not hide the layer's cost), with and without `BearerToken`.
//!
//! ```text
//! cargo bench --bench throughput
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use divan::Bencher;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::runtime::Runtime;
use tower::{ServiceBuilder, ServiceExt};
use tower_identity::bearer::BearerTokenLayer;
use tower_identity::{AccessToken, CredentialError, CredentialExt, TokenRequest};

fn main() {
    divan::main();
}

const CONCURRENCY: usize = 32;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A keep-alive HTTP/1.1 server answering `200 ok` to everything.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        runtime().block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    stream.set_nodelay(true).ok();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|_req| async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            addr
        })
    })
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// One batch of `CONCURRENCY` concurrent requests through `service`, bodies read.
async fn batch<S>(service: &S, uri: &str)
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<hyper::body::Incoming>>
        + Clone
        + Send
        + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let mut tasks = Vec::with_capacity(CONCURRENCY);
    for _ in 0..CONCURRENCY {
        let request = Request::get(uri).body(Full::default()).unwrap();
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let response = service.oneshot(request).await.unwrap();
            response.into_body().collect().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[divan::bench(name = "32 concurrent requests, bare client")]
fn bare(bencher: Bencher) {
    let uri = format!("http://{}/items", server());
    let client = client();
    runtime().block_on(batch(&client, &uri));
    bencher.bench_local(|| runtime().block_on(batch(&client, &uri)));
}

#[divan::bench(name = "32 concurrent requests, with BearerToken")]
fn with_layer(bencher: Bencher) {
    let uri = format!("http://{}/items", server());
    let credential = tower::service_fn(|_: TokenRequest| async {
        Ok::<_, CredentialError>(AccessToken::new(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fresh.token",
            tokio::time::Instant::now() + Duration::from_secs(3600),
        ))
    });
    let service = ServiceBuilder::new()
        .layer(
            BearerTokenLayer::builder(
                credential.boxed_credential(),
                ["https://api.example.test/.default"],
            )
            .allow_insecure_http(true)
            .build(),
        )
        .service(client());
    runtime().block_on(batch(&service, &uri));
    bencher.bench_local(|| runtime().block_on(batch(&service, &uri)));
}
