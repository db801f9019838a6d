//! Server plumbing shared by the loopback authority and resource: the accept loop (TLS or
//! plain), serving one connection until the client leaves or the server is dropped, and the
//! small helpers both handlers use.
//!
//! Depends only on crates in `Cargo.toml`, so examples can include it with `#[path = …]`.

// Shared by several binaries (this test binary, examples), none of which use every item.
#![allow(dead_code)]

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Reply = Response<Full<Bytes>>;

/// After the server is dropped, connections get this long to finish what they are sending
/// before they are closed regardless (a client that stopped reading must not keep them alive).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// HTTP/2 streams one connection may have open at once: stampede tests multiplex thousands of
/// requests on one connection.
const MAX_STREAMS: u32 = 20_000;

/// Locks a mutex even if a panicking test thread poisoned it: the data is plain and stays
/// consistent, and a second panic here would only hide the first one.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts a request as in flight for as long as this guard lives (including when hyper drops
/// the handler because the client went away).
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn enter(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The error a handler returns to make hyper drop the exchange without answering.
#[derive(Debug)]
pub struct NoAnswer(pub &'static str);

impl fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for NoAnswer {}

/// The answer a test asked for, byte for byte (hyper adds only framing and `date`).
pub fn exact_reply(status: u16, body: String, headers: &[(String, String)]) -> Reply {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        // Checked when queued; `append` keeps repeated headers such as WWW-Authenticate.
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            answer.headers_mut().append(name, value);
        }
    }
    answer
}

/// Panics (at the test line that queued it) if an exact reply could not be put on the wire.
pub fn check_exact(what: &str, status: u16, headers: &[(String, String)]) {
    assert!(
        StatusCode::from_u16(status).is_ok(),
        "{what}: invalid HTTP status {status}"
    );
    for (name, value) in headers {
        assert!(
            HeaderName::try_from(name).is_ok() && HeaderValue::try_from(value).is_ok(),
            "{what}: invalid header {name:?}: {value:?}"
        );
    }
}

/// Accepts connections (TLS when `tls` is given) and serves each with `handler` in its own
/// task, until `shutdown` fires.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: watch::Receiver<()>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Reply, BoxError>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            // Each connection gets its own task so a slow handshake or a held request never
            // holds up the next client.
            Ok((tcp, _peer)) => {
                // Without it, Nagle holds the TLS handshake's later small writes until the
                // client's delayed ACK (~40 ms of real time), and a paused tokio clock jumps
                // to the client's next timer meanwhile.
                let _ = tcp.set_nodelay(true);
                tokio::spawn(accept_connection(
                    tcp,
                    tls.clone(),
                    shutdown.clone(),
                    handler.clone(),
                ));
            }
            // Accept errors (e.g. out of file descriptors) concern one connection; keep going.
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

async fn accept_connection<H, F>(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<()>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Reply, BoxError>> + Send + 'static,
{
    let Some(acceptor) = tls else {
        return serve_connection(tcp, shutdown, handler).await;
    };
    let tls = tokio::select! {
        accepted = acceptor.accept(tcp) => match accepted {
            Ok(tls) => tls,
            Err(_) => return,
        },
        _ = shutdown.changed() => return,
    };
    serve_connection(tls, shutdown, handler).await;
}

/// Serves one connection (HTTP/1.1 or HTTP/2) until the client leaves or the server is
/// dropped. Errors (failed handshakes, resets, exchanges dropped on purpose) end the task.
async fn serve_connection<I, H, F>(io: I, mut shutdown: watch::Receiver<()>, handler: H)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Reply, BoxError>> + Send + 'static,
{
    let service = hyper::service::service_fn(handler);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_STREAMS)
        // Clients that give up on thousands of requests at once reset their streams; that is
        // a test's business, not an attack to defend against here.
        .max_local_error_reset_streams(None)
        .max_pending_accept_reset_streams(None);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            // Dropping the connection after the grace period closes it.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}
