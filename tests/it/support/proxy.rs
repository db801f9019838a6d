//! A forward proxy on `127.0.0.1:0` over hyper: it answers `CONNECT host:port` by opening a
//! TCP connection to the target (or to one upstream address of the test's, whatever the
//! target) and copying bytes both ways (the TLS session stays between client and server), logs
//! each request, and can be told to demand credentials (407, Basic or other schemes), to
//! refuse every tunnel (403), to answer the first CONNECT with a status of the test's (a 503
//! while its upstream is down, say), to accept connections and never answer, to answer with
//! bytes of the test's, or to echo the credentials it was sent in its challenge. Anything but CONNECT is answered 405: the token transport only
//! tunnels.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// Every connection is accepted, and nothing read from it or answered.
    Silent,
    /// The first connection is accepted and never answered (as `Silent`); every CONNECT on a
    /// later one is let through.
    FirstSilent,
    /// Every CONNECT is answered with these bytes, in one write, and its connection then held
    /// open (the status logged is the one they start with).
    Raw(&'static str),
    /// 407, whose `Proxy-Authenticate` is the base64 of the `Proxy-Authorization` received (a
    /// proxy echoing the credentials it was sent).
    Echo,
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
    connections: Arc<AtomicUsize>,
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
        Self::serve(policy, None).await
    }

    /// As [`start`](Self::start), every tunnel to `upstream` whatever its target: a name
    /// that resolves nowhere reaches a server of the test's.
    pub async fn start_to(policy: Policy, upstream: SocketAddr) -> Proxy {
        Self::serve(policy, Some(upstream)).await
    }

    async fn serve(policy: Policy, upstream: Option<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy: listener address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let accept_loop = tokio::spawn({
            let log = Arc::clone(&log);
            let connections = Arc::clone(&connections);
            async move {
                // Connections never answered, closed when the proxy is dropped.
                let mut held = Vec::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let first = connections.fetch_add(1, Ordering::SeqCst) == 0;
                    if matches!(policy, Policy::Silent)
                        || (matches!(policy, Policy::FirstSilent) && first)
                    {
                        held.push(stream);
                        continue;
                    }
                    // Nagle off on both legs, as the test servers have it (see `serve.rs`).
                    let _ = stream.set_nodelay(true);
                    let (log, policy) = (Arc::clone(&log), policy.clone());
                    if let Policy::Raw(answer) = policy {
                        tokio::spawn(answer_raw(stream, answer, log));
                        continue;
                    }
                    tokio::spawn(async move {
                        let service = service_fn(move |request| {
                            handle(request, policy.clone(), upstream, Arc::clone(&log))
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
            connections,
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

    /// How many connections were accepted so far, answered or not.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads one request's head, logs it, and answers `answer` in one write; the connection is
/// then held until the client closes it.
async fn answer_raw(mut stream: TcpStream, answer: &'static str, log: Arc<Mutex<Vec<Logged>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        assert!(head.len() < 65536, "proxy: a request head of 64 KiB");
    }
    let head = String::from_utf8(head).expect("proxy: a UTF-8 request head");
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = Method::from_bytes(request_line.next().unwrap_or_default().as_bytes())
        .expect("proxy: a method");
    let target = request_line.next().unwrap_or_default().to_owned();
    let authorization = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_owned())
    });
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .expect("proxy: a raw answer starting with a status line");
    lock(&log).push(Logged {
        method,
        target,
        authorization,
        status,
    });
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn handle(
    request: Request<Incoming>,
    policy: Policy,
    upstream: Option<SocketAddr>,
    log: Arc<Mutex<Vec<Logged>>>,
) -> Result<Response<Empty<Bytes>>, std::convert::Infallible> {
    let authorization = request
        .headers()
        .get(http::header::PROXY_AUTHORIZATION)
        .map(|v| v.to_str().expect("ASCII header").to_owned());
    let echoed = authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Basic "))
        .map(|credentials| http::HeaderValue::from_str(credentials).expect("base64"));
    // Held across the answer's choice, so that two CONNECTs at once cannot both be first.
    let mut log = lock(&log);
    let status = match (&policy, request.method()) {
        (_, m) if m != Method::CONNECT => StatusCode::METHOD_NOT_ALLOWED,
        (Policy::Forbid, _) => StatusCode::FORBIDDEN,
        (Policy::Challenge(_) | Policy::Echo, _) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
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
    if let (Policy::Echo, Some(echoed)) = (&policy, echoed) {
        response
            .headers_mut()
            .insert(http::header::PROXY_AUTHENTICATE, echoed);
    } else if let Policy::Challenge(challenges) = policy {
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
            let connected = match upstream {
                Some(upstream) => TcpStream::connect(upstream).await,
                None => TcpStream::connect(target.as_str()).await,
            };
            let Ok(mut server) = connected else {
                return;
            };
            let _ = server.set_nodelay(true);
            let mut client = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
    Ok(response)
}
