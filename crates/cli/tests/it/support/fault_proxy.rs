//! A fault-injecting HTTP/1.1 proxy for the S3 tests.
//!
//! It listens on `127.0.0.1:<free port>` and forwards every connection to an
//! upstream port (the SeaweedFS S3 port). It reads each request's head (and
//! frames its body by `Content-Length`), so a fault hits one *request*, not a
//! whole keep-alive connection; responses are piped back untouched. Per
//! request, with the plan's probabilities and a seeded xorshift RNG:
//!
//! - **reset**: the request is not forwarded and the connection is aborted
//!   with a TCP RST (`SO_LINGER` 0), as a peer crashing would;
//! - **slow down**: the request is not forwarded; the proxy answers
//!   `503 Slow Down` with S3's XML `SlowDown` error body and closes;
//! - **delay**: the request is forwarded after a pause.
//!
//! Requests whose target contains one of [`FaultPlan::always_fail`] are
//! always answered `503 Slow Down` (a fault that outlasts every retry).
//! When the upstream is down (a restarting server), a new connection's
//! first request is read and the connection closed without an answer.
//!
//! Every request is logged with the fault it got, so tests can assert that
//! faults really happened and follow a run's progress. Everything stops in
//! `Drop`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What to inject, per request.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Share of requests aborted with a TCP reset.
    pub reset: f64,
    /// Share of requests answered `503 Slow Down`.
    pub slow_down: f64,
    /// Share of requests forwarded after [`FaultPlan::delay_for`].
    pub delay: f64,
    pub delay_for: Duration,
    /// Requests whose target contains any of these always get `503 Slow Down`.
    pub always_fail: Vec<String>,
    pub seed: u64,
}

impl FaultPlan {
    /// Forward everything untouched (still logging every request).
    pub fn pass_through() -> Self {
        FaultPlan {
            reset: 0.0,
            slow_down: 0.0,
            delay: 0.0,
            delay_for: Duration::ZERO,
            always_fail: Vec::new(),
            seed: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Reset,
    SlowDown,
    Delay,
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target: path and query, percent-encoded as sent.
    pub target: String,
    pub fault: Fault,
}

/// Totals of what the proxy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: u64,
    /// Connections closed at once because the upstream refused them.
    pub upstream_refused: u64,
    pub requests: u64,
    pub resets: u64,
    pub slow_downs: u64,
    pub delays: u64,
}

impl Counts {
    /// Faults that made a request fail (delays only slow it down).
    pub fn failures(&self) -> u64 {
        self.resets + self.slow_downs
    }
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    connections: AtomicU64,
    upstream_refused: AtomicU64,
    log: Mutex<Vec<Request>>,
    /// A copy of every open socket, by connection, shut down in `Drop`.
    sockets: Mutex<Vec<(usize, TcpStream)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Start a proxy in front of `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16, plan: FaultPlan) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let shared = Arc::new(Shared::default());
        let plan = Arc::new(plan);
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fault-proxy-{port}"))
                .spawn(move || accept_loop(listener, upstream, plan, shared))
                .unwrap()
        };
        FaultProxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn counts(&self) -> Counts {
        let log = self.shared.log.lock().unwrap();
        let count = |f: Fault| log.iter().filter(|r| r.fault == f).count() as u64;
        Counts {
            connections: self.shared.connections.load(Ordering::SeqCst),
            upstream_refused: self.shared.upstream_refused.load(Ordering::SeqCst),
            requests: log.len() as u64,
            resets: count(Fault::Reset),
            slow_downs: count(Fault::SlowDown),
            delays: count(Fault::Delay),
        }
    }

    /// Requests with this method whose target contains `needle`, and how
    /// many of them were forwarded (not failed by a fault).
    pub fn matching(&self, method: &str, needle: &str) -> (usize, usize) {
        let log = self.shared.log.lock().unwrap();
        let hits: Vec<&Request> = log
            .iter()
            .filter(|r| r.method == method && r.target.contains(needle))
            .collect();
        let forwarded = hits
            .iter()
            .filter(|r| matches!(r.fault, Fault::None | Fault::Delay))
            .count();
        (hits.len(), forwarded)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (_, s) in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<JoinHandle<()>> = self.shared.threads.lock().unwrap().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// xorshift64*: small, fast and good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so nearby seeds give unrelated streams (and never 0).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    plan: Arc<FaultPlan>,
    shared: Arc<Shared>,
) {
    for (index, client) in listener.incoming().enumerate() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let plan = plan.clone();
        let conn_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("fault-proxy-conn-{index}"))
            .spawn(move || {
                let rng = Rng::new(plan.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let _ = handle_connection(index, client, upstream, &plan, rng, &conn_shared);
                release(&conn_shared, index);
            })
            .unwrap();
        let mut threads = shared.threads.lock().unwrap();
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
    }
}

fn track(shared: &Shared, id: usize, s: &TcpStream) {
    if let Ok(clone) = s.try_clone() {
        shared.sockets.lock().unwrap().push((id, clone));
    }
}

/// Forget connection `id`'s copies (so closing its sockets really closes them).
fn release(shared: &Shared, id: usize) {
    shared.sockets.lock().unwrap().retain(|(i, _)| *i != id);
}

/// Make the next close of `s` (its last descriptor) an abortive one: RST.
fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a valid, correctly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

const SLOW_DOWN_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId><HostId>fault-proxy</HostId></Error>";

fn handle_connection(
    id: usize,
    mut client: TcpStream,
    upstream: SocketAddr,
    plan: &FaultPlan,
    mut rng: Rng,
    shared: &Shared,
) -> io::Result<()> {
    track(shared, id, &client);
    let mut server = match TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(_) => {
            // The server is down: take the request, then close without an
            // answer. (Closing before the client has written its request
            // would show it hyper's "canceled", which object_store 0.13
            // does not classify as retryable; a real down server refuses
            // the connection, which it does retry.)
            shared.upstream_refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut chunk = [0u8; 4096];
            while find(&head, b"\r\n\r\n").is_none() {
                match client.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
    };
    track(shared, id, &server);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);

    // Responses flow back untouched on their own thread. When the server
    // closes (or dies), the client is told by a FIN, unless this side is
    // aborting the connection itself.
    let aborting = Arc::new(AtomicBool::new(false));
    let responder = {
        let mut from = server.try_clone()?;
        let mut to = client.try_clone()?;
        let aborting = aborting.clone();
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            if !aborting.load(Ordering::SeqCst) {
                let _ = to.shutdown(Shutdown::Both);
            }
        })
    };

    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let result = loop {
        // Read one request head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break Some(i + 4);
            }
            let mut chunk = [0u8; 16 * 1024];
            match client.read(&mut chunk) {
                Ok(0) | Err(_) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Some(head_end) = head_end else {
            break Ok(());
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let mut content_length = 0usize;
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                content_length = value.parse().unwrap_or(0);
            } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }

        let fault = if plan.always_fail.iter().any(|n| target.contains(n.as_str())) {
            Fault::SlowDown
        } else {
            let r = rng.next_f64();
            if r < plan.reset {
                Fault::Reset
            } else if r < plan.reset + plan.slow_down {
                Fault::SlowDown
            } else if r < plan.reset + plan.slow_down + plan.delay {
                Fault::Delay
            } else {
                Fault::None
            }
        };
        shared.log.lock().unwrap().push(Request {
            method: method.clone(),
            target,
            fault,
        });

        match fault {
            Fault::Reset => {
                aborting.store(true, Ordering::SeqCst);
                set_linger_zero(&client);
                let _ = server.shutdown(Shutdown::Both);
                let _ = responder.join();
                // Dropping the last descriptor of `client` sends the RST
                // (the copy in `shared.sockets` is released below).
                release(shared, id);
                drop(client);
                return Ok(());
            }
            Fault::SlowDown => {
                // Drain the body first: closing with unread data would RST
                // before the client reads the answer.
                let mut rest = content_length.saturating_sub(buf.len() - head_end);
                while rest > 0 {
                    let mut chunk = [0u8; 16 * 1024];
                    match client.read(&mut chunk[..rest.min(16 * 1024)]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => rest -= n,
                    }
                }
                aborting.store(true, Ordering::SeqCst);
                let _ = server.shutdown(Shutdown::Both);
                let _ = responder.join();
                let answer = format!(
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 0\r\n\r\n{SLOW_DOWN_BODY}",
                    SLOW_DOWN_BODY.len()
                );
                let written = client.write_all(answer.as_bytes());
                let _ = client.shutdown(Shutdown::Write);
                // Wait for the client to close its side (bounded) so the
                // answer is never cut by an RST.
                let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
                let mut sink = [0u8; 1024];
                while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
                return written;
            }
            Fault::Delay => std::thread::sleep(plan.delay_for),
            Fault::None => {}
        }

        if chunked {
            // Cannot frame it: forward this and everything after it as is.
            let forwarded = server
                .write_all(&buf)
                .and_then(|()| io::copy(&mut client, &mut server).map(|_| ()));
            break forwarded;
        }
        let body_in_buf = (buf.len() - head_end).min(content_length);
        if let Err(e) = server.write_all(&buf[..head_end + body_in_buf]) {
            break Err(e);
        }
        buf.drain(..head_end + body_in_buf);
        let mut rest = content_length - body_in_buf;
        let mut failed = None;
        while rest > 0 {
            let mut chunk = [0u8; 64 * 1024];
            match client.read(&mut chunk[..rest.min(64 * 1024)]) {
                Ok(0) => {
                    failed = Some(io::Error::from(io::ErrorKind::UnexpectedEof));
                    break;
                }
                Ok(n) => {
                    if let Err(e) = server.write_all(&chunk[..n]) {
                        failed = Some(e);
                        break;
                    }
                    rest -= n;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
    };
    let _ = server.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
    let _ = responder.join();
    result
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn rng_is_uniform_enough_and_seeded() {
    let mut a = Rng::new(7);
    let mut b = Rng::new(7);
    let xs: Vec<f64> = (0..10_000).map(|_| a.next_f64()).collect();
    assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
    assert_eq!(
        xs[..5],
        (0..5).map(|_| b.next_f64()).collect::<Vec<_>>()[..]
    );
    let below = xs.iter().filter(|&&x| x < 0.25).count();
    assert!((2_200..2_800).contains(&below), "{below}");
}
