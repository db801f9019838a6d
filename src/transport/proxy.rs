//! Proxies: which token requests go through one (the environment's `HTTPS_PROXY`, …, given
//! variables, or one explicit URL), and the connector that opens a CONNECT tunnel through it.
//!
//! hyper-util's [`Matcher`] applies the rules (curl's: `NO_PROXY` entries are domain
//! suffixes, IP addresses or CIDR blocks; `*` as the whole value exempts every host, and
//! among other entries matches none, see [`no_proxy_entries`]). It compares hosts only, so entries naming a port
//! (`host:8443`, `10.0.0.1:8443`, `[::1]:8443`) are matched here: the host by the same rules,
//! and the port exactly, as Python `requests` (azure-identity's transport) and Go's
//! `httpproxy` match them. A URL naming no port is on 443, as Go has it (`requests` compares
//! only the ports URLs spell out). Userinfo in the proxy URL becomes a Basic
//! `Proxy-Authorization` of the bytes it percent-encodes (see [`basic_auth`]). The CONNECT exchange is hyper's HTTP/1.1 client
//! with an upgrade rather than hyper-util's `Tunnel`, whose error type is private and keeps no
//! status but 407: an error here says what the proxy answered (403, 502, …). The TLS
//! handshake through the tunnel is made here too, as hyper-rustls makes it over a direct
//! connection, so that the connect timeout bounds the whole tunnel: a proxy that accepts and
//! never answers fails as a connection naming it, not as the attempt's timeout. We read the
//! variables ourselves, because hyper-util's `Matcher::from_env` prefers the upper-case name
//! and curl, Python's `urllib` and Go's `httpproxy` prefer the lower-case one: the same
//! environment must pick the same proxy here as in the tools beside us.
//!
//! Only `https` destinations are proxied. The only client that sends plain `http` is managed
//! identity's, and its endpoints (IMDS on link-local `169.254.169.254`, the App Service,
//! Arc, Cloud Shell and Service Fabric endpoints on loopback or the host) are never proxied:
//! see [`ManagedIdentityCredential`](crate::ManagedIdentityCredential)'s clients.

use std::error::Error as StdError;
use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Uri};
use http_body_util::Empty;
use hyper_rustls::{
    DefaultServerNameResolver, HttpsConnector, MaybeHttpsStream, ResolveServerName,
};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use percent_encoding::percent_decode_str;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;
use zeroize::Zeroizing;

use crate::error::{BoxError, ConfigError};
use crate::token::Secret;

/// The variables read, in order of preference for each setting: lower case first, as curl.
const HTTPS_VARS: [&str; 2] = ["https_proxy", "HTTPS_PROXY"];
const ALL_VARS: [&str; 2] = ["all_proxy", "ALL_PROXY"];
const NO_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// Where an [`HttpClientBuilder`](super::HttpClientBuilder) takes its proxy from.
#[derive(Clone, Default)]
pub(super) enum ProxySetting {
    /// The process environment, read when the client is built.
    #[default]
    Environment,
    /// These variables instead of the process environment (values may hold credentials).
    Vars(Vec<(String, Secret)>),
    /// Every `https` request through this proxy (the URL may hold credentials).
    Url(Secret),
    /// Connect directly.
    Off,
}

impl fmt::Debug for ProxySetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Environment => f.write_str("Environment"),
            // Names only: any value may carry a password.
            Self::Vars(vars) => f
                .debug_tuple("Vars")
                .field(&vars.iter().map(|(name, _)| name).collect::<Vec<_>>())
                .finish(),
            Self::Url(url) => f
                .debug_tuple("Url")
                .field(&format_args!("{}", address(url.expose_secret())))
                .finish(),
            Self::Off => f.write_str("Off"),
        }
    }
}

impl ProxySetting {
    /// Rejects an explicit URL that is no usable proxy. A bad variable instead fails each
    /// proxied request, naming the variable: `HttpClient::new()` reads the environment and
    /// cannot fail.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        match self {
            Self::Url(url) => match usable_url(url.expose_secret()) {
                Ok(_) => Ok(()),
                Err(reason) => Err(ConfigError::new(format!(
                    "the proxy URL {} is not usable: {reason}",
                    address(url.expose_secret())
                ))),
            },
            _ => Ok(()),
        }
    }

    /// The routing this setting gives, the environment read now.
    pub(super) fn routing(&self) -> Routing {
        match self {
            Self::Off => Routing::Direct,
            Self::Url(url) => Routing::Matched(Arc::new(Rules::new(
                usable_url(url.expose_secret())
                    .map_err(|reason| format!("the proxy URL is not usable: {reason}")),
                "",
            ))),
            Self::Environment => routing_from(|name| std::env::var_os(name)),
            Self::Vars(vars) => routing_from(|name| {
                vars.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| OsString::from(v.expose_secret()))
            }),
        }
    }
}

/// The first of `names` set to something other than blanks, with its name and its text, or
/// `Err` when it is not valid UTF-8: such a variable is set, and unusable, not unset (which
/// would silently fall through to the next name, or to no proxy at all).
fn first(
    get: &impl Fn(&str) -> Option<OsString>,
    names: [&'static str; 2],
) -> Option<(&'static str, Result<String, NotUnicode>)> {
    names.into_iter().find_map(|name| {
        let value = match get(name)?.into_string() {
            Ok(text) if text.trim().is_empty() => return None,
            Ok(text) => Ok(text),
            Err(_) => Err(NotUnicode),
        };
        Some((name, value))
    })
}

/// A variable whose value is not valid UTF-8 (Unix: any bytes; Windows: unpaired surrogates).
struct NotUnicode;

/// Routing from proxy variables. `HTTP_PROXY` is not read: only `https` is ever proxied.
pub(super) fn routing_from(get: impl Fn(&str) -> Option<OsString>) -> Routing {
    let proxy = first(&get, HTTPS_VARS).or_else(|| first(&get, ALL_VARS));
    let Some((name, url)) = proxy else {
        return Routing::Direct;
    };
    // A `NO_PROXY` that cannot be read exempts nothing we could name: rather than proxy every
    // host, including those it meant to exempt, every `https` request fails, naming it. (A
    // proxy URL that cannot be read fails first, for the same hosts and more.)
    let no = match first(&get, NO_VARS) {
        None => Ok(String::new()),
        Some((_, Ok(no))) => Ok(no),
        Some((no_name, Err(NotUnicode))) => Err(format!(
            "{no_name} is not valid UTF-8 (which hosts it exempts from the proxy cannot be read)"
        )),
    };
    // curl and Python: `*` as the whole value (here: blanks around it aside) bypasses every
    // host, addresses included (hyper-util's `*` covers names only). Read before the proxy
    // URL: a proxy that no request uses fails none (curl, `requests`).
    if no.as_deref().is_ok_and(|no| no.trim() == "*") {
        return Routing::Exempt;
    }
    let url = match &url {
        Ok(url) => {
            usable_url(url).map_err(|reason| format!("{name} is not a usable proxy URL: {reason}"))
        }
        Err(NotUnicode) => Err(format!("{name} is not valid UTF-8")),
    };
    let rules = match no {
        Ok(no) => Rules::new(url, &no),
        Err(unreadable) => Rules::new(url.and(Err(unreadable)), ""),
    };
    Routing::Matched(Arc::new(rules))
}

/// The entries of a `NO_PROXY` value, separated by commas or blanks: no entry can hold a
/// blank, and `a.test b.test` can only mean both. curl took blanks as separators until 2024
/// (its `docs/DEPRECATE.md` lists them as removed: it now ignores what follows a name and a
/// blank), FreeBSD's fetch still does; Go and Python separate by commas only. Empty entries
/// and `*` are left out: as the whole value, `*` exempts every host (see [`routing_from`]);
/// among other entries, curl and Python match no host with it, where hyper-util's matcher
/// would take it for every name.
fn no_proxy_entries(no: &str) -> impl Iterator<Item = &str> {
    no.split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|entry| !entry.is_empty() && *entry != "*")
}

/// A `NO_PROXY` entry naming a port, as (its host, port); `None` for an entry without one (a
/// bare IPv6 address has colons but no port).
fn with_port(entry: &str) -> Option<(PortedHost, u16)> {
    let entry = entry.trim();
    let (host, port) = match entry.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once("]:")?,
        None => match entry.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, port),
            _ => return None,
        },
    };
    let port = port.parse().ok()?;
    // Addresses and blocks compare as addresses: `2001:db8:0::1` is `2001:db8::1`.
    let block = host
        .parse::<IpNet>()
        .ok()
        .or_else(|| host.parse::<IpAddr>().ok().map(IpNet::from));
    if let Some(block) = block {
        return Some((PortedHost::Block(block), port));
    }
    let host = host.trim_start_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then(|| (PortedHost::Name(host.into_boxed_str()), port))
}

/// The host of a `NO_PROXY` entry with a port.
enum PortedHost {
    /// A domain (lower case, without its leading dot): that name and the names under it.
    Name(Box<str>),
    /// An IP address (a block of one) or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`).
    Block(IpNet),
}

/// Where one `https` destination goes.
pub(super) enum Route {
    Direct,
    /// Through the proxy at this URI (which holds no credentials).
    Through(Uri),
    /// The proxy it would go through cannot be used: fail rather than silently go around a
    /// proxy the user asked for.
    Unusable(Arc<str>),
}

/// The proxy and the `NO_PROXY` rules for `https` destinations.
pub(super) struct Rules {
    /// The proxy (its credentials unused: see `auth`), and the entries without a port. When
    /// the proxy named cannot be used, a
    /// stand-in that is never connected to: the matcher then only says which destinations
    /// `NO_PROXY` leaves to the proxy.
    matcher: Matcher,
    /// The entries with a port.
    ported: Box<[(PortedHost, u16)]>,
    /// The Basic `Proxy-Authorization` for the credentials in the proxy URL, if it has any.
    auth: Option<HeaderValue>,
    /// Why the proxy named cannot be used, if it cannot.
    unusable: Option<Arc<str>>,
}

impl Rules {
    /// The rules for this proxy URL (checked: the URL, or why it cannot be used) and this
    /// `NO_PROXY` list.
    fn new(url: Result<&str, String>, no: &str) -> Self {
        let (url, unusable, auth) = match url {
            Ok(url) => (url, None, basic_auth(url)),
            Err(reason) => (
                "http://unusable-proxy.invalid:1",
                Some(Arc::from(reason)),
                None,
            ),
        };
        let (ported, hosts): (Vec<_>, Vec<_>) = no_proxy_entries(no)
            .map(|entry| (entry, with_port(entry)))
            .partition(|(_, ported)| ported.is_some());
        // hyper-util reads `[::1]` as a domain name: an address in brackets is the address.
        let hosts = hosts
            .into_iter()
            .map(|(entry, _)| {
                entry
                    .strip_prefix('[')
                    .and_then(|v6| v6.strip_suffix(']'))
                    .unwrap_or(entry)
            })
            .collect::<Vec<_>>();
        Self {
            matcher: Matcher::builder().https(url).no(hosts.join(",")).build(),
            ported: ported
                .into_iter()
                .filter_map(|(_, ported)| ported)
                .collect(),
            auth,
            unusable,
        }
    }

    /// Where `dst` goes: directly, through the proxy, or nowhere (the proxy cannot be used).
    pub(super) fn route(&self, dst: &Uri) -> Route {
        match (self.intercept(dst), &self.unusable) {
            (None, _) => Route::Direct,
            (Some(_), Some(reason)) => Route::Unusable(Arc::clone(reason)),
            (Some(intercept), None) => Route::Through(intercept.uri().clone()),
        }
    }

    /// The proxy to reach `dst` through; `None` to connect directly.
    fn intercept(&self, dst: &Uri) -> Option<hyper_util::client::proxy::matcher::Intercept> {
        // Connecting, not the per-request path: a lower-case copy costs nothing that matters.
        let host = dst.host()?.trim_start_matches('[').trim_end_matches(']');
        let host = host.to_ascii_lowercase();
        let port = dst.port_u16().unwrap_or(443);
        let address = host.parse::<IpAddr>().ok();
        let bypassed = self.ported.iter().any(|(entry, entry_port)| {
            *entry_port == port
                && match entry {
                    PortedHost::Block(block) => address.is_some_and(|a| block.contains(&a)),
                    PortedHost::Name(name) => {
                        host == **name
                            || host
                                .strip_suffix(&**name)
                                .is_some_and(|rest| rest.ends_with('.'))
                    }
                }
        });
        if bypassed {
            return None;
        }
        self.matcher.intercept(dst)
    }
}

/// The proxy URL to use: `url` without surrounding blanks (a value read from a file or
/// typed in a shell often ends in `\r` or a space), which is what was checked and so what
/// must reach the matcher — hyper-util drops a URL it cannot parse, silently connecting
/// directly. The error says why `url` cannot be used, in words that never quote its
/// credentials.
fn usable_url(url: &str) -> Result<&str, &'static str> {
    let url = url.trim();
    let uri: Uri = url
        .parse()
        .map_err(|_| "it is not a URL (expected http://[user:password@]host:port)")?;
    match uri.scheme_str() {
        None | Some("http") => {}
        Some("https") => return Err("TLS to the proxy (https://) is not supported; use http://"),
        Some(s) if s.starts_with("socks") => return Err("SOCKS proxies are not supported"),
        Some(_) => return Err("only http:// proxies are supported"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("it names no host");
    }
    if garbled(url, &uri) {
        return Err(
            "its user name, password or port does not parse (in a user name or password, `/`, \
             `?`, `#` and `@` must be percent-encoded)",
        );
    }
    Ok(url)
}

/// The Basic `Proxy-Authorization` for the credentials in `url` (one [`usable_url`] passed);
/// `None` when it has none. The user name ends at the first `:`, as hyper-util and curl split
/// it, and the percent-decoded bytes are sent as they are, as curl and Go send them (RFC 7617
/// leaves the charset to the server): hyper-util decodes them as UTF-8, lossily, so a
/// password percent-encoded in Latin-1 (`p%E9ss`) went out with U+FFFD in it, sure to be
/// rejected, where a proxy reading Latin-1 would accept the bytes.
fn basic_auth(url: &str) -> Option<HeaderValue> {
    use base64::Engine as _;

    let uri: Uri = url.parse().ok()?;
    let (userinfo, _) = uri.authority()?.as_str().split_once('@')?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    // Decoding never lengthens: no reallocation leaves a copy of the password behind.
    let mut credentials = Zeroizing::new(Vec::with_capacity(userinfo.len().saturating_add(1)));
    credentials.extend(percent_decode_str(user));
    credentials.push(b':');
    credentials.extend(percent_decode_str(password));
    // Sized for the whole value, and encoded into it: no unwiped copy of the base64 either.
    let encoded = credentials.len().div_ceil(3).saturating_mul(4);
    let mut header = Zeroizing::new(String::with_capacity(encoded.saturating_add(6)));
    header.push_str("Basic ");
    base64::engine::general_purpose::STANDARD.encode_string(&*credentials, &mut header);
    let mut value = HeaderValue::from_str(&header).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Whether the URL's credentials did not parse as meant. `http::Uri` ends the authority at the
/// first `/`, `?` or `#`, so a password holding one unencoded leaves `user:pass…` as host and
/// port (shown as an address, that would quote the credentials), and an unencoded `@` splits
/// user and password in one place for hyper-util and another for us. Any `@` outside the
/// authority, a second `@`, or a port that is not a number is refused.
fn garbled(url: &str, uri: &Uri) -> bool {
    let Some(authority) = uri.authority() else {
        return url.contains('@');
    };
    let ats = url.matches('@').count();
    if ats > 1 || (ats == 1 && !authority.as_str().contains('@')) {
        return true;
    }
    let host_port = host_port(authority);
    let after_host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => host_port
            .find(':')
            .and_then(|i| host_port.get(i..))
            .unwrap_or(""),
    };
    !after_host.is_empty() && authority.port_u16().is_none()
}

/// The authority without its credentials.
fn host_port(authority: &http::uri::Authority) -> &str {
    authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, host_port)| host_port)
}

/// `host:port` of a proxy URL, without scheme, credentials or path: what errors and logs
/// may show.
pub(super) fn address(url: &str) -> String {
    let Ok(uri) = url.trim().parse::<Uri>() else {
        return "(unparsable URL)".to_owned();
    };
    if garbled(url, &uri) {
        return "(unparsable URL)".to_owned();
    }
    let Some(authority) = uri.authority() else {
        return "(no host)".to_owned();
    };
    let host_port = host_port(authority);
    match authority.port_u16() {
        Some(_) => host_port.to_owned(),
        // hyper-util's tunnel connects to port 80 when the proxy URL names none.
        None => format!("{host_port}:80"),
    }
}

/// What the connector does with an `https` destination.
#[derive(Clone)]
pub(super) enum Routing {
    /// No proxy: none set, or the client told to use none.
    Direct,
    /// A proxy is set, but `NO_PROXY` is `*` (the whole value): every host is exempt.
    Exempt,
    Matched(Arc<Rules>),
}

/// Where a client's proxy variables come from, for the hint of a direct connection that
/// failed; `None` in [`ProxyConnector`] for a client that reads none.
#[derive(Clone, Copy, Debug)]
pub(super) enum VarsFrom {
    /// The process environment.
    Environment,
    /// [`proxy_from_vars`](super::HttpClientBuilder::proxy_from_vars).
    Given,
}

/// What a direct connection to an `https` destination that failed should add, for a client
/// reading proxy variables from `vars` (`None`: it reads none, and the hint is none): that a
/// proxy is taken from the variables only when none was set, or that `NO_PROXY` exempted the
/// host when one was. Decided by the route taken, not the setting: a hint to set
/// `HTTPS_PROXY` where it is set and the host exempt would mislead. Every direct route of a
/// client whose routing names a proxy is an exempt one.
pub(super) fn direct_hint(vars: Option<VarsFrom>, routing: &Routing) -> Option<&'static str> {
    let exempted = !matches!(routing, Routing::Direct);
    Some(match (vars?, exempted) {
        (_, true) => "connected directly: NO_PROXY exempts this host from the proxy that is set",
        (VarsFrom::Environment, false) => {
            "if your network requires a proxy, set HTTPS_PROXY: system proxy settings are not read"
        }
        (VarsFrom::Given, false) => {
            "if your network requires a proxy, give https_proxy in the proxy variables: system \
             proxy settings are not read"
        }
    })
}

/// A direct connection that failed, with what to add to the message (see [`direct_hint`]).
/// Transparent otherwise: its source is the failure.
#[derive(Debug)]
pub(super) struct DirectFailure {
    pub(super) hint: &'static str,
    source: BoxError,
}

impl fmt::Display for DirectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connecting directly failed")
    }
}

impl StdError for DirectFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The TCP connector of direct connections, under hyper-rustls's TLS: a failure to reach an
/// `https` destination carries the client's hint about proxies.
#[derive(Clone)]
pub(super) struct DirectConnector {
    pub(super) http: HttpConnector,
    /// See [`direct_hint`].
    pub(super) hint: Option<&'static str>,
}

impl Service<Uri> for DirectConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // Plain `http` is never proxied: no hint about proxies.
        let hint = self
            .hint
            .filter(|_| dst.scheme() == Some(&http::uri::Scheme::HTTPS));
        let connecting = self.http.call(dst);
        Box::pin(async move {
            connecting.await.map_err(|e| match hint {
                Some(hint) => DirectFailure {
                    hint,
                    source: e.into(),
                }
                .into(),
                None => e.into(),
            })
        })
    }
}

/// The connector: a direct connection (TCP, then hyper-rustls's TLS), or a CONNECT tunnel
/// through the matched proxy and the TLS handshake through it, both here: the connect timeout
/// bounds the whole of a tunnel's setup.
#[derive(Clone)]
pub(super) struct ProxyConnector {
    pub(super) direct: HttpsConnector<DirectConnector>,
    /// Connects to the proxy.
    pub(super) http: HttpConnector,
    /// The direct connector's TLS configuration (ALPN included), for the tunnels.
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) routing: Routing,
    /// The most a tunnel may take to be ready for the request: reaching the proxy, the CONNECT
    /// exchange and the TLS handshake through it. `None`: only the per-attempt timeout.
    pub(super) connect_timeout: Option<Duration>,
}

impl Service<Uri> for ProxyConnector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.direct.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let (route, auth) = match &self.routing {
            Routing::Matched(rules) if dst.scheme() == Some(&http::uri::Scheme::HTTPS) => {
                (rules.route(&dst), rules.auth.clone())
            }
            _ => (Route::Direct, None),
        };
        let proxy_uri = match route {
            Route::Through(proxy_uri) => proxy_uri,
            Route::Direct => return self.direct.call(dst),
            Route::Unusable(reason) => {
                let error = ProxyError {
                    proxy: String::new(),
                    failure: Failure::Invalid(reason),
                };
                return Box::pin(async move { Err(error.into()) });
            }
        };
        // The URI has no userinfo: the credentials are in `auth`.
        let proxy = address(&proxy_uri.to_string());
        tracing::debug!(%proxy, "opening a CONNECT tunnel through the proxy");
        let http = self.http.clone();
        let tls = Arc::clone(&self.tls);
        let limit = self.connect_timeout;
        // Before any I/O, as hyper-rustls does: a name no certificate can be checked against
        // opens no tunnel (the proxy is not told of it).
        let name = match DefaultServerNameResolver::default().resolve(&dst) {
            Ok(name) => name,
            Err(error) => return Box::pin(async move { Err(error) }),
        };
        Box::pin(async move {
            // From the tunnel's start, resolving the proxy's name included. hyper-util may go
            // on making a connection in the background once its request took another: this
            // bounds that one too.
            let budget = limit.and_then(|limit| Some((Instant::now().checked_add(limit)?, limit)));
            let tcp = tunnel(http, proxy_uri, &dst, auth, budget)
                .await
                .map_err(|failure| ProxyError {
                    proxy: proxy.clone(),
                    failure,
                })?;
            // What hyper-rustls does for a direct connection, under the same deadline: the
            // origin's name, not the proxy's, is what its certificate must name.
            let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, TokioIo::new(tcp));
            let Some(tls) = within(budget, handshake).await else {
                let limit = budget.map_or(Duration::ZERO, |(_, limit)| limit);
                return Err(ProxyError {
                    proxy,
                    failure: Failure::Handshake(limit),
                }
                .into());
            };
            // A failed handshake is a TLS failure as over a direct connection, not the proxy's.
            Ok(MaybeHttpsStream::from(tls.map_err(io::Error::other)?))
        })
    }
}

/// `future`'s output, or `None` when it did not complete by the budget's deadline.
async fn within<F: Future>(budget: Option<(Instant, Duration)>, future: F) -> Option<F::Output> {
    match budget {
        Some((deadline, _)) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

/// Aborts the CONNECT connection's task when the tunnel is given up (refused, timed out, or
/// dropped): a silent proxy's socket must not stay open behind it. Once the tunnel is
/// established the task has ended, handing the socket to the upgrade.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects to the proxy and asks it, with `CONNECT host:port`, for a tunnel to `dst`, each
/// within the budget's deadline.
async fn tunnel(
    mut http: HttpConnector,
    proxy: Uri,
    dst: &Uri,
    auth: Option<HeaderValue>,
    budget: Option<(Instant, Duration)>,
) -> Result<TokioIo<TcpStream>, Failure> {
    let limit = budget.map_or(Duration::ZERO, |(_, limit)| limit);
    let host = dst
        .host()
        .ok_or(Failure::Exchange("the destination has no host".into()))?;
    let target = format!("{host}:{}", dst.port_u16().unwrap_or(443));
    let connecting = async {
        http.ready()
            .await
            .map_err(|e| Failure::Unreachable(e.into()))?
            .call(proxy)
            .await
            .map_err(|e| Failure::Unreachable(e.into()))
    };
    let stream = within(budget, connecting).await.ok_or_else(|| {
        Failure::Unreachable(format!("no connection within the {limit:?} connect timeout").into())
    })??;
    let authenticated = auth.is_some();
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(stream)
            .await
            .map_err(|e| Failure::Exchange(e.into()))?;
        // The connection hands the socket back to the upgrade once the proxy answered 2xx.
        let _connection = AbortOnDrop(tokio::spawn(connection.with_upgrades()));
        let mut request = http::Request::connect(target.as_str())
            .header(http::header::HOST, target.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| Failure::Exchange(e.into()))?;
        if let Some(mut auth) = auth {
            auth.set_sensitive(true);
            request
                .headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth);
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Exchange(e.into()))?;
        if !response.status().is_success() {
            return Err(Failure::Refused {
                status: response.status(),
                authenticated,
                other_schemes: other_schemes(response.headers()),
            });
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| Failure::Exchange(e.into()))?;
        Ok(upgraded)
    };
    let upgraded = within(budget, exchange).await.ok_or_else(|| {
        Failure::Exchange(
            format!("no answer to CONNECT within the {limit:?} connect timeout").into(),
        )
    })??;
    let parts = upgraded
        .downcast::<TokioIo<TcpStream>>()
        .map_err(|_| Failure::Exchange("the tunnel is not the proxy's socket".into()))?;
    // The server speaks only after our TLS hello: bytes before it are no tunnel.
    if !parts.read_buf.is_empty() {
        return Err(Failure::Exchange(
            "the proxy sent data before the tunnel was used".into(),
        ));
    }
    Ok(parts.io)
}

/// The most challenge schemes an error names: a proxy's list is short, a hostile one's need
/// not be.
const MAX_SCHEMES: usize = 4;

/// The authentication schemes an error names, as spelled here: those of IANA's HTTP
/// Authentication Scheme Registry, and those proxies use unregistered (NTLM, Kerberos, AWS's
/// signature). Any other word a challenge starts with is "another scheme", never quoted: a
/// proxy puts what it likes there, the base64 of the credentials it was sent included, and
/// the error goes to logs.
const KNOWN_SCHEMES: [&str; 17] = [
    "Basic",
    "Bearer",
    "Concealed",
    "Digest",
    "DPoP",
    "GNAP",
    "HOBA",
    "Mutual",
    "Negotiate",
    "OAuth",
    "PrivateToken",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "vapid",
    "NTLM",
    "Kerberos",
    "AWS4-HMAC-SHA256",
];

/// The schemes of a proxy's challenges when Basic is not among them.
#[derive(Debug, PartialEq, Eq)]
struct OtherSchemes {
    /// The known ones (see [`KNOWN_SCHEMES`]), at most [`MAX_SCHEMES`], in the proxy's order.
    known: Vec<&'static str>,
    /// Whether it named a scheme not known here.
    unknown: bool,
}

/// The auth schemes a proxy's `Proxy-Authenticate` challenges name when Basic is not one of
/// them; `None` when it is or no challenge could be read. A challenge is a scheme, then a
/// token68 or `name=value` parameters, challenges separated by commas: a comma-separated part
/// whose first word is a token not followed by `=` starts one (commas inside a quoted value
/// separate nothing: `realm="a, Basic b"` names no scheme). Only the known schemes are named
/// (case-insensitively, spelled as [`KNOWN_SCHEMES`] has them); any other token counts as
/// another scheme.
fn other_schemes(headers: &http::HeaderMap) -> Option<OtherSchemes> {
    let is_token = |word: &str| {
        !word.is_empty()
            && word
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let mut schemes = OtherSchemes {
        known: Vec::new(),
        unknown: false,
    };
    let values = headers
        .get_all(http::header::PROXY_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok());
    for part in values.flat_map(list_elements) {
        let part = part.trim_start();
        let word = part.split([' ', '\t', '=']).next().unwrap_or_default();
        let is_parameter = part
            .get(word.len()..)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if !is_token(word) || is_parameter {
            continue;
        }
        if word.eq_ignore_ascii_case("basic") {
            return None;
        }
        match KNOWN_SCHEMES
            .into_iter()
            .find(|known| known.eq_ignore_ascii_case(word))
        {
            Some(known) if schemes.known.contains(&known) => {}
            Some(known) if schemes.known.len() < MAX_SCHEMES => schemes.known.push(known),
            Some(_) => {}
            None => schemes.unknown = true,
        }
    }
    (!schemes.known.is_empty() || schemes.unknown).then_some(schemes)
}

/// The comma-separated elements of a header value, a comma inside a quoted string (RFC 9110
/// §5.6.4, `\` escaping the next character) being part of it. An unclosed quote runs to the
/// end.
fn list_elements(value: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    value.split(move |c: char| {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ',' && !quoted {
            return true;
        }
        false
    })
}

/// A request that could not get through its proxy: the proxy's `host:port` (never its
/// credentials) and what went wrong.
#[derive(Debug)]
pub(super) struct ProxyError {
    proxy: String,
    failure: Failure,
}

#[derive(Debug)]
enum Failure {
    /// Connecting to the proxy failed.
    Unreachable(BoxError),
    /// The CONNECT exchange broke off, or brought no answer in time.
    Exchange(BoxError),
    /// The TLS handshake through the tunnel did not complete within the connect timeout.
    Handshake(Duration),
    /// The proxy answered CONNECT with this status.
    Refused {
        status: http::StatusCode,
        /// Whether credentials were sent: a 407 then means they were rejected.
        authenticated: bool,
        /// The schemes of its `Proxy-Authenticate` challenges when Basic is not among them
        /// (`Negotiate, NTLM`): then credentials in the URL cannot help.
        other_schemes: Option<OtherSchemes>,
    },
    /// A proxy variable or URL that cannot work.
    Invalid(Arc<str>),
}

impl ProxyError {
    /// Whether no tunnel was opened for a reason that may pass (worth retrying, even for a
    /// single-use request: nothing reached the server): the proxy was not reached, broke
    /// off or did not answer in time, could not reach the server itself (502, 503, 504,
    /// which azure-core retries as connection errors), or the TLS handshake through the
    /// tunnel did not complete in time (the request is sent only after it). An answer
    /// refusing the tunnel (403, 407, …) or a setting that cannot work is final.
    pub(super) fn is_connect(&self) -> bool {
        match &self.failure {
            Failure::Unreachable(_) | Failure::Exchange(_) | Failure::Handshake(_) => true,
            Failure::Refused { status, .. } => is_gateway_failure(*status),
            Failure::Invalid(_) => false,
        }
    }

    /// The message of the transport error: where it failed.
    pub(super) fn summary(&self) -> String {
        match &self.failure {
            Failure::Invalid(_) => "the proxy setting is not usable".to_owned(),
            Failure::Unreachable(_) => format!("connecting to the proxy {} failed", self.proxy),
            Failure::Exchange(_) => {
                format!("the CONNECT exchange with the proxy {} failed", self.proxy)
            }
            Failure::Handshake(_) => format!(
                "the TLS handshake through the proxy {} did not complete",
                self.proxy
            ),
            Failure::Refused { status, .. } if is_gateway_failure(*status) => {
                "the proxy could not open the tunnel".to_owned()
            }
            Failure::Refused { .. } => "the proxy refused the tunnel".to_owned(),
        }
    }
}

/// A CONNECT answer saying the proxy could not reach the server or is overloaded, not that
/// it refuses this tunnel.
fn is_gateway_failure(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proxy = &self.proxy;
        match &self.failure {
            Failure::Invalid(reason) => f.write_str(reason),
            Failure::Unreachable(_) => write!(f, "the proxy {proxy} could not be reached"),
            Failure::Exchange(_) => {
                write!(f, "the CONNECT exchange with the proxy {proxy} broke off")
            }
            Failure::Handshake(limit) => write!(
                f,
                "no TLS handshake with the server through the proxy {proxy}'s tunnel within \
                 the {limit:?} connect timeout"
            ),
            Failure::Refused {
                status,
                authenticated,
                other_schemes,
            } => {
                write!(f, "the proxy {proxy} answered {status}")?;
                if *status != http::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                    return Ok(());
                }
                if let Some(OtherSchemes { known, unknown }) = other_schemes {
                    let known = known.join(", ");
                    match (known.is_empty(), unknown) {
                        (true, _) => f.write_str(": it asks for another authentication scheme")?,
                        (false, false) => write!(f, ": it asks for {known} authentication")?,
                        (false, true) => {
                            write!(f, ": it asks for {known} authentication or another scheme")?
                        }
                    }
                    f.write_str(", and only Basic (credentials in the proxy URL) is supported")
                } else {
                    f.write_str(if *authenticated {
                        ": it rejected the credentials in the proxy URL"
                    } else {
                        " (give its credentials in the proxy URL: \
                         http://user:password@host:port)"
                    })
                }
            }
        }
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        // The socket's or hyper's error says why; a refusal has nothing to add.
        match &self.failure {
            Failure::Unreachable(e) | Failure::Exchange(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}
