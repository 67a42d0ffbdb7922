//! HTTPS for the REST API (HTTP/1.1), with the connection hygiene a
//! long-running server needs: TLS handshakes and request headers must
//! arrive within a few seconds, idle connections are closed after a
//! minute, and at most `max_connections` are open at once (more are closed
//! at accept), so slow or idle clients can never use up the master's file
//! descriptors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    /// TLS handshake, and then each request's headers, must arrive within this.
    pub handshake_timeout: Duration,
    /// A connection with no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits { handshake_timeout: Duration::from_secs(5), idle_timeout: Duration::from_secs(60), max_connections: 128 }
    }
}

/// Serves `app` over TLS on `tcp` until the task is dropped.
pub async fn serve(tcp: TcpListener, tls: Arc<rustls::ServerConfig>, app: Router, limits: ApiLimits) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closing at once is kinder than letting the backlog hang.
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::warn!(%peer, max = limits.max_connections, "too many API connections; refusing new ones until some close");
                last_refusal_log = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(acceptor, stream, peer, app, limits).await;
        });
    }
}

async fn serve_connection(acceptor: TlsAcceptor, stream: tokio::net::TcpStream, peer: SocketAddr, app: Router, limits: ApiLimits) {
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "API TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "API TLS handshake timed out"),
    };
    let activity = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let io = TokioIo::new(Tracked { inner: tls, activity: activity.clone(), started });
    // HTTP/1.1 only, as TLS offers (ALPN): the auto builder also took
    // HTTP/2 by prior knowledge, where hyper has no header deadline (a
    // client that sent the preface and then a HEADERS frame a byte at a
    // time held the connection for good), and it read the first bytes
    // (to tell the versions apart) with no deadline at all.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.handshake_timeout);
    let service = TowerToHyperService::new(app);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let idle = || Duration::from_millis((started.elapsed().as_millis() as u64).saturating_sub(activity.load(Ordering::Relaxed)));
    let mut closing = false;
    loop {
        let check_in = limits.idle_timeout.saturating_sub(idle()).max(Duration::from_millis(100));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "API connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(check_in), if !closing => {
                if idle() >= limits.idle_timeout {
                    tracing::debug!(%peer, "closing idle API connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// An I/O stream that notes when bytes last moved (ms since `started`).
struct Tracked<T> {
    inner: T,
    activity: Arc<AtomicU64>,
    started: Instant,
}

impl<T> Tracked<T> {
    fn touch(&self) {
        self.activity.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
