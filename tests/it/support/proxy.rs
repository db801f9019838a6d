//! A forward proxy on `127.0.0.1:0` over hyper: it answers `CONNECT host:port` by opening a
//! TCP connection to the target and copying bytes both ways (the TLS session stays between
//! client and server), logs each request, and can be told to demand credentials (407, Basic or other schemes), to
//! refuse every tunnel (403) or to answer the first CONNECT with a status of the test's (a
//! 503 while its upstream is down, say). Anything but CONNECT is answered 405: the token
//! transport only tunnels.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::serve::lock;

/// What the proxy lets through.
#[derive(Clone, Debug)]
pub enum Policy {
    /// Every CONNECT.
    Open,
    /// A CONNECT whose `Proxy-Authorization` is exactly this value; 407 otherwise.
    Basic(String),
    /// None: 407 with these `Proxy-Authenticate` challenges (one header each), whatever
    /// credentials came.
    Challenge(&'static [&'static str]),
    /// None: 403.
    Forbid,
    /// The first CONNECT is answered with this status; every later one is let through.
    FirstAnswer(StatusCode),
}

/// One request as the proxy received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub method: Method,
    /// The request target: `host:port` for CONNECT.
    pub target: String,
    pub authorization: Option<String>,
    /// What the proxy answered.
    pub status: StatusCode,
}

pub struct Proxy {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Logged>>>,
    accept_loop: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl Proxy {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start(policy: Policy) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy: listener address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let accept_loop = tokio::spawn({
            let log = Arc::clone(&log);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    // Nagle off on both legs, as the test servers have it (see `serve.rs`).
                    let _ = stream.set_nodelay(true);
                    let (log, policy) = (Arc::clone(&log), policy.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |request| {
                            handle(request, policy.clone(), Arc::clone(&log))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            }
        });
        Proxy {
            addr,
            log,
            accept_loop,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://user:password@127.0.0.1:<port>`.
    pub fn url_with(&self, userinfo: &str) -> String {
        format!("http://{userinfo}@{}", self.addr)
    }

    /// `127.0.0.1:<port>`: what errors name.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.log).clone()
    }
}

async fn handle(
    request: Request<Incoming>,
    policy: Policy,
    log: Arc<Mutex<Vec<Logged>>>,
) -> Result<Response<Empty<Bytes>>, std::convert::Infallible> {
    let authorization = request
        .headers()
        .get(http::header::PROXY_AUTHORIZATION)
        .map(|v| v.to_str().expect("ASCII header").to_owned());
    // Held across the answer's choice, so that two CONNECTs at once cannot both be first.
    let mut log = lock(&log);
    let status = match (&policy, request.method()) {
        (_, m) if m != Method::CONNECT => StatusCode::METHOD_NOT_ALLOWED,
        (Policy::Forbid, _) => StatusCode::FORBIDDEN,
        (Policy::Challenge(_), _) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        (Policy::FirstAnswer(status), _) if log.is_empty() => *status,
        (Policy::Basic(expected), _) if authorization.as_ref() != Some(expected) => {
            StatusCode::PROXY_AUTHENTICATION_REQUIRED
        }
        _ => StatusCode::OK,
    };
    let target = request.uri().to_string();
    log.push(Logged {
        method: request.method().clone(),
        target: target.clone(),
        authorization,
        status,
    });
    drop(log);
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    if let Policy::Challenge(challenges) = policy {
        for challenge in challenges {
            response.headers_mut().append(
                http::header::PROXY_AUTHENTICATE,
                http::HeaderValue::from_static(challenge),
            );
        }
    } else if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        response.headers_mut().insert(
            http::header::PROXY_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"loopback\""),
        );
    }
    if status == StatusCode::OK {
        tokio::spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(request).await else {
                return;
            };
            let Ok(mut server) = TcpStream::connect(target.as_str()).await else {
                return;
            };
            let _ = server.set_nodelay(true);
            let mut client = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
    Ok(response)
}
