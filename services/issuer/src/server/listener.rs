//! The issuer's listeners (HTTPS, and plain HTTP behind a gateway): the accept loop
//! and each connection's life, under the limits of docs/limits.md.
//!
//! What one client can hold is bounded at every stage: a connection slot is taken
//! *before* `accept`, so connections beyond `max_connections` wait in the kernel's
//! backlog instead of costing memory here; the TLS handshake has a deadline; hyper
//! bounds the HTTP/1.1 request head in time (`header_read_timeout`, the slowloris
//! defence) and size (431); a connection with no request in progress for
//! `idle_timeout` is closed; the router bounds the body (413) and the handler (408).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use axum_server::tls::TlsInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::warn;

use crate::metrics as m;

/// hyper's default bound on HTTP/1.1 header fields, which it keeps on the stack; any
/// other value costs a heap allocation per request (hyper's docs: ~5 %).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// How long a connection asked to close (idle) may take to flush its goodbye (an
/// HTTP/2 GOAWAY) before it is dropped outright.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next try,
/// so that the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The per-connection limits (configuration keys of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, every listener of one [`Connections`] together.
    pub max_connections: usize,
    /// Deadline of the TLS handshake, from `accept`.
    pub tls_handshake_timeout: Duration,
    /// Deadline of each HTTP/1.1 request head, from when hyper starts reading it.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head: HTTP/1.1 read buffer, HTTP/2 header list.
    pub max_header_bytes: usize,
    /// Most header fields in an HTTP/1.1 request.
    pub max_headers: usize,
    /// Streams in progress at once on one HTTP/2 connection.
    pub http2_max_concurrent_streams: u32,
}

/// Why a connection ended: the `reason` label of `baton_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client closed it, or HTTP/1.1 keep-alive ended normally.
    Done,
    /// The TLS handshake failed.
    HandshakeFailed,
    /// The TLS handshake did not finish within `tls_handshake_timeout`.
    HandshakeTimeout,
    /// An HTTP/1.1 request head did not arrive within `header_read_timeout`.
    HeaderTimeout,
    /// No request in progress for `idle_timeout`.
    Idle,
    /// The request head was over `max_header_bytes` or `max_headers` (answered 431).
    HeadTooLarge,
    /// The request could not be parsed (answered 400).
    Malformed,
    /// The issuer is shutting down.
    Shutdown,
    /// An I/O or protocol error.
    Error,
}

impl Closed {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::HandshakeFailed => "handshake_failed",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HeaderTimeout => "header_timeout",
            Self::Idle => "idle",
            Self::HeadTooLarge => "head_too_large",
            Self::Malformed => "malformed",
            Self::Shutdown => "shutdown",
            Self::Error => "error",
        }
    }

    fn of(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let Err(e) = result else {
            return Self::Done;
        };
        match e.downcast_ref::<hyper::Error>() {
            Some(e) if e.is_timeout() => Self::HeaderTimeout,
            Some(e) if e.is_parse_too_large() => Self::HeadTooLarge,
            Some(e) if e.is_parse() => Self::Malformed,
            Some(e) if e.is_incomplete_message() => Self::Done,
            _ => Self::Error,
        }
    }
}

/// The connections of one issuer: its slots, its HTTP settings, and the signal that
/// stops them. Cloned into each listener and connection task.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    /// `max_connections` slots; an accept loop holds one while it waits in `accept`.
    slots: Arc<Semaphore>,
    open: AtomicUsize,
    stop: watch::Receiver<bool>,
    /// Plain HTTP: HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
    detect: auto::Builder<TokioExecutor>,
    /// TLS: the protocol ALPN chose, with no sniffing of the first bytes.
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Connections {
    /// Connections under `limits`, until `stop` turns true (or its sender is dropped).
    pub fn new(limits: Limits, stop: watch::Receiver<bool>) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let mut h1 = builder.http1();
        h1.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // The read buffer holds the head while it is parsed: a head that fills it
            // is refused with 431. hyper's minimum is 8 KiB (checked by the config).
            .max_buf_size(limits.max_header_bytes.max(8192));
        if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            h1.max_headers(limits.max_headers);
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        metrics::gauge!(m::CONNECTIONS_MAX).set(limits.max_connections as f64);
        Self {
            inner: Arc::new(Inner {
                limits,
                slots,
                open: AtomicUsize::new(0),
                stop,
                http1: builder.clone().http1_only(),
                http2: builder.clone().http2_only(),
                detect: builder,
            }),
        }
    }

    /// Accepts on `listener` until stopped, serving `app` on each connection over TLS
    /// when `tls` is given. Accept errors (out of descriptors, a connection reset in
    /// the queue) pause the loop briefly; they never end it.
    pub async fn serve(self, listener: TcpListener, tls: Option<TlsAcceptor>, app: Router) {
        let mut stop = self.inner.stop.clone();
        loop {
            // The slot first: while every slot is taken nothing is accepted, and the
            // kernel's backlog holds the queue at no cost to this process.
            let slot = match Arc::clone(&self.inner.slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    metrics::counter!(m::CONNECTION_LIMIT_WAITS).increment(1);
                    tokio::select! {
                        biased;
                        _ = stopped(&mut stop) => return,
                        slot = Arc::clone(&self.inner.slots).acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => return, // closed: never, the semaphore is ours
                        },
                    }
                }
            };
            let tcp = tokio::select! {
                biased;
                _ = stopped(&mut stop) => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _peer)) => tcp,
                    Err(e) => {
                        if !per_connection(&e) {
                            warn!(error = %e, "accept failed; retrying shortly");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                        continue;
                    }
                },
            };
            // After a TLS 1.3 handshake rustls writes its session tickets; with Nagle
            // on, the first response then waits for the client's delayed ACK of them
            // (~40 ms on Linux): a stall on every fresh connection. Small responses
            // on plain HTTP would wait the same way.
            let _ = tcp.set_nodelay(true);
            let conn = self.clone();
            let tls = tls.clone();
            let app = app.clone();
            tokio::spawn(async move {
                conn.inner.open.fetch_add(1, Ordering::Relaxed);
                metrics::gauge!(m::CONNECTIONS_OPEN).increment(1.0);
                let closed = match tls {
                    Some(tls) => conn.tls(tcp, tls, app).await,
                    None => conn.http(tcp, None, &conn.inner.detect, app).await,
                };
                metrics::gauge!(m::CONNECTIONS_OPEN).decrement(1.0);
                conn.inner.open.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => closed.as_str()).increment(1);
                drop(slot);
            });
        }
    }

    /// After the stop signal, waits at most `grace` for every connection to end (each
    /// finishes the requests it has in progress) and every accept loop to return its
    /// slot. Says whether all did.
    pub async fn drain(&self, grace: Duration) -> bool {
        let all = u32::try_from(self.inner.limits.max_connections).unwrap_or(u32::MAX);
        tokio::time::timeout(grace, self.inner.slots.acquire_many(all))
            .await
            .is_ok()
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    async fn tls(&self, tcp: tokio::net::TcpStream, tls: TlsAcceptor, app: Router) -> Closed {
        let mut stop = self.inner.stop.clone();
        let handshake =
            tokio::time::timeout(self.inner.limits.tls_handshake_timeout, tls.accept(tcp));
        let stream = tokio::select! {
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(_)) => return Closed::HandshakeFailed,
                Err(_) => return Closed::HandshakeTimeout,
            },
            _ = stopped(&mut stop) => return Closed::Shutdown,
        };
        let (_, session) = stream.get_ref();
        // The handlers read the peer's certificates from here (mTLS attestation).
        let mut info = TlsInfo::default();
        info.server_name = session.server_name().map(str::to_owned);
        info.alpn_protocol = session.alpn_protocol().map(<[u8]>::to_vec);
        info.peer_certificates = session
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default();
        let builder = match session.alpn_protocol() {
            Some(b"h2") => &self.inner.http2,
            _ => &self.inner.http1,
        };
        self.http(stream, Some(Arc::new(info)), builder, app).await
    }

    /// Serves HTTP on `io` until the client leaves, a limit closes it or the issuer
    /// stops. The watchdog here covers what hyper does not: a connection idle between
    /// requests (HTTP/2, or a plain one still to send its first bytes).
    async fn http<I>(
        &self,
        io: I,
        tls: Option<Arc<TlsInfo>>,
        builder: &auto::Builder<TokioExecutor>,
        app: Router,
    ) -> Closed
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let service = ConnService {
            app,
            tls,
            activity: Arc::clone(&activity),
        };
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut stop = self.inner.stop.clone();
        let idle = self.inner.limits.idle_timeout;
        // Once asked to close: why, and (idle only) when to drop it regardless.
        let mut closing: Option<(Closed, Option<Instant>)> = None;
        loop {
            let wake = match closing {
                Some((_, hard)) => hard,
                None => Some(
                    activity
                        .idle_deadline(idle)
                        .unwrap_or_else(|| Instant::now() + idle),
                ),
            };
            tokio::select! {
                done = conn.as_mut() => {
                    return match closing {
                        Some((why, _)) => why,
                        None => Closed::of(done),
                    };
                }
                _ = sleep_until(wake) => match closing {
                    Some((why, _)) => return why,
                    None => {
                        if activity.idle_deadline(idle).is_some_and(|d| d <= Instant::now()) {
                            conn.as_mut().graceful_shutdown();
                            closing = Some((Closed::Idle, Some(Instant::now() + CLOSE_GRACE)));
                        }
                    }
                },
                // Requests in progress finish; `drain` bounds how long that may take.
                _ = stopped(&mut stop), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing = Some((Closed::Shutdown, None));
                }
            }
        }
    }
}

/// Resolves once the stop signal is true, or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not in the caller.
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Whether a connection has a request in progress, and since when it has had none.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `start` to when the last request in progress finished.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// When the connection becomes idle too long, or `None` while a request is in
    /// progress.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.start + since + idle)
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }
}

/// One request in progress; dropped when its response is ready (or it is cancelled).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let ms = u64::try_from(activity.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Stored before the count drops, so the watchdog never sees an idle connection
        // with the previous idle time.
        activity.idle_since_ms.store(ms, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The router as hyper calls it on one connection: with the connection's TLS facts in
/// each request, counted while in progress.
#[derive(Clone)]
struct ConnService {
    app: Router,
    tls: Option<Arc<TlsInfo>>,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(tls) = &self.tls {
            req.extensions_mut().insert(Arc::clone(tls));
        }
        let in_flight = self.activity.begin();
        // A Router is always ready: no `poll_ready` needed.
        let response = tower::Service::call(&mut self.app.clone(), req);
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    }
}

/// Whether `e`, from `accept`, concerns one connection only (so that the next
/// `accept` may well succeed at once).
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    fn limits() -> Limits {
        Limits {
            max_connections: 16,
            tls_handshake_timeout: Duration::from_secs(1),
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(2),
            max_header_bytes: 8192,
            max_headers: 100,
            http2_max_concurrent_streams: 10,
        }
    }

    /// A plain-HTTP listener serving `/` and a `/slow` route that takes 300 ms.
    async fn plain(limits: Limits) -> (std::net::SocketAddr, Connections, watch::Sender<bool>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let connections = Connections::new(limits, stop_rx);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow"
            }),
        );
        tokio::spawn(connections.clone().serve(listener, None, app));
        (addr, connections, stop_tx)
    }

    /// Reads until the server closes; how long that took from `since` (at most 10 s).
    async fn closed_after(conn: &mut TcpStream, since: std::time::Instant) -> Duration {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("still open after 10 s"),
            }
        }
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_at_idle_timeout_and_a_slow_head_at_header_read_timeout()
    {
        let (addr, connections, _stop) = plain(limits()).await;
        let since = std::time::Instant::now();
        // Sends nothing: hyper waits to tell HTTP/1.1 from h2c, with no timer of its own.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // Starts a head and never finishes it.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
            .await
            .unwrap();
        // One request served, then kept alive and silent.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        assert_eq!(connections.open(), 3);

        let slow_closed = closed_after(&mut slow, since).await;
        let kept_closed = closed_after(&mut kept, since).await;
        let silent_closed = closed_after(&mut silent, since).await;
        // hyper's header timer (200 ms) closes the slow head, and the kept-alive
        // connection waiting for its next head, well before the idle timeout (2 s)…
        assert!(slow_closed < Duration::from_millis(1500), "{slow_closed:?}");
        assert!(kept_closed < Duration::from_millis(1500), "{kept_closed:?}");
        // …which alone closes the connection that never sent a byte.
        assert!(
            silent_closed >= Duration::from_millis(1900),
            "{silent_closed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(connections.open(), 0);
    }

    #[tokio::test]
    async fn stopping_finishes_requests_in_progress_then_drains() {
        let (addr, connections, stop) = plain(limits()).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(true).unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("slow"), "{answer}");
        assert!(connections.drain(Duration::from_secs(5)).await);
        assert_eq!(connections.open(), 0);
        // The listener is closed: nothing accepts any more.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn close_reasons_are_fixed_labels() {
        let e: Box<dyn std::error::Error + Send + Sync> = "boom".into();
        assert_eq!(Closed::of(Err(e)), Closed::Error);
        assert_eq!(Closed::of(Ok(())).as_str(), "done");
    }
}
