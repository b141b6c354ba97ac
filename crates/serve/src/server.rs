//! The accept loop: HTTP/1.1 connections served by hyper with a timer, so
//! that a client that opens a connection and never finishes its request
//! head is closed, and at most `max_connections` are open at once.
//!
//! `axum::serve` gives hyper no timer, which turns hyper's header-read
//! timeout off; a few hundred stalled connections then hold file
//! descriptors forever. Here hyper-util's tokio timer drives it. hyper
//! starts that timer whenever a connection waits for a request head: on a
//! new connection, and again after each response on a kept-alive one, so
//! the same timeout is also the idle keep-alive timeout.
//!
//! Only HTTP/1.1 is spoken: a TLS-terminating proxy in front speaks HTTP/2
//! to browsers, and HTTP/2 without TLS would bring its own stream and
//! keep-alive limits to get right for no client that needs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;

use crate::Limits;

/// Serves `router` on `listener` until `stopped` turns true. Then requests
/// in flight get at most `limits.shutdown_grace` to finish, while idle
/// connections and those still sending a request head are closed at once.
/// Connections wait in the kernel's accept backlog while
/// `limits.max_connections` are open.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    mut stopped: watch::Receiver<bool>,
) {
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let open = Arc::new(Semaphore::new(max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let (stream, permit) = tokio::select! {
            () = stop_requested(&mut stopped) => break,
            accepted = accept_within_cap(&listener, &open) => accepted,
        };
        let connection = serve_connection(builder.clone(), stream, router.clone(), stopped.clone());
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    drop(listener);
    // Every connection gives its permit back when it ends.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(limits.shutdown_grace, open.acquire_many(all)).await {
        Ok(_) => tracing::info!("every connection closed"),
        Err(_) => tracing::warn!(
            grace_s = limits.shutdown_grace.as_secs(),
            "requests still running after the shutdown grace period; stopping anyway"
        ),
    }
}

/// One connection, until it ends or the service stops. At the stop, a
/// connection with a request being handled finishes it (hyper then closes
/// it instead of keeping it alive); one without (idle, or stalled in its
/// request head, which hyper's own graceful shutdown would wait on until
/// the header timeout) is dropped.
async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) {
    let handling = Arc::new(AtomicUsize::new(0));
    let service = {
        let handling = Arc::clone(&handling);
        service_fn(move |request| {
            let busy = Busy::new(&handling);
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await;
                drop(busy);
                response
            }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = stop_requested(&mut stopped) => {
            if handling.load(Ordering::SeqCst) == 0 {
                return;
            }
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = ended {
        // Header timeouts and client resets are routine: not warnings.
        tracing::debug!(%err, "connection ended with an error");
    }
}

/// Completes once the stop is signalled (or its sender is gone). The
/// watch guard is dropped here, never held across the caller's awaits.
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Counts a request being handled on its connection while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Busy(Arc::clone(count))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The next connection, once fewer than the cap are open. Accept errors
/// (out of file descriptors, a connection reset before it was accepted)
/// are logged and retried after a pause, never fatal.
async fn accept_within_cap(
    listener: &TcpListener,
    open: &Arc<Semaphore>,
) -> (TcpStream, OwnedSemaphorePermit) {
    let permit = Arc::clone(open)
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                // Small JSON answers: do not wait for Nagle's timer.
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(%err, "cannot set TCP_NODELAY");
                }
                return (stream, permit);
            }
            Err(err) => {
                tracing::warn!(%err, "accept failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
