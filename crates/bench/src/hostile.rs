//! `verger bench-serve --hostile`: what strangers can throw at a service,
//! alongside the normal load. Stalled connections send half a request head
//! and then nothing (and are reopened when the service closes them, so the
//! pressure stays on); bomb clients send, one after the other, a small PNG
//! that declares a huge image (a decompression bomb within the pixel limit).
//! Bounded like the rest of the load test: loopback or a test host only,
//! and everything stops when the normal load is done.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// How much hostile load runs alongside the normal one.
#[derive(Debug, Clone)]
pub struct HostileConfig {
    /// Connections kept open, each stalled in the middle of its request head.
    pub stalled: usize,
    /// Clients each sending bomb PNGs back to back.
    pub bombs: usize,
    /// Side of the square bomb image, pixels.
    pub bomb_side: u32,
}

/// What the hostile clients saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostileReport {
    /// Stalled connections opened (reopened ones included).
    pub stalled_opened: usize,
    /// Of them, closed by the service.
    pub stalled_closed_by_service: usize,
    /// Bomb answers by status code (`"io"` for a failed request).
    pub bomb_answers: BTreeMap<String, usize>,
}

/// Hostile clients running in background threads until [`Hostile::stop`].
pub struct Hostile {
    stop: Arc<AtomicBool>,
    stalled: JoinHandle<(usize, usize)>,
    bombs: Vec<JoinHandle<BTreeMap<String, usize>>>,
}

/// A PNG of `side × side` black RGB pixels: 0.9 MB for 7,900 (default
/// compression), which decodes to `3 × side²` bytes (187 MB).
pub fn bomb_png(side: u32) -> anyhow::Result<Vec<u8>> {
    use image::ImageEncoder;
    let pixels = vec![0u8; side as usize * side as usize * 3];
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&pixels, side, side, image::ExtendedColorType::Rgb8)
        .context("encoding the bomb PNG")?;
    Ok(png)
}

impl Hostile {
    /// Starts the stalled connections and the bomb clients against `base`
    /// (`http://host:port`).
    pub fn start(base: &str, config: &HostileConfig, timeout: Duration) -> anyhow::Result<Hostile> {
        let authority = base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let addr = authority
            .to_socket_addrs()
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("no address for {authority}"))?;
        let bomb = Arc::new(bomb_png(config.bomb_side)?);
        let stop = Arc::new(AtomicBool::new(false));
        let stalled = {
            let (stop, count) = (Arc::clone(&stop), config.stalled);
            std::thread::spawn(move || hold_stalled(addr, &authority, count, &stop))
        };
        let url = format!("{}/v1/identify", base.trim_end_matches('/'));
        let bombs = (0..config.bombs)
            .map(|_| {
                let (stop, bomb, url) = (Arc::clone(&stop), Arc::clone(&bomb), url.clone());
                std::thread::spawn(move || send_bombs(&url, &bomb, timeout, &stop))
            })
            .collect();
        Ok(Hostile {
            stop,
            stalled,
            bombs,
        })
    }

    /// Stops every hostile client and tells what they saw.
    pub fn stop(self) -> HostileReport {
        self.stop.store(true, Ordering::Relaxed);
        let (stalled_opened, stalled_closed_by_service) = self.stalled.join().unwrap_or((0, 0));
        let mut bomb_answers = BTreeMap::new();
        for handle in self.bombs {
            for (status, n) in handle.join().unwrap_or_default() {
                *bomb_answers.entry(status).or_insert(0) += n;
            }
        }
        HostileReport {
            stalled_opened,
            stalled_closed_by_service,
            bomb_answers,
        }
    }
}

/// Keeps `count` connections open, each having sent half a request head;
/// one the service closes is counted and replaced. Returns (opened, closed
/// by the service).
fn hold_stalled(addr: SocketAddr, host: &str, count: usize, stop: &AtomicBool) -> (usize, usize) {
    let half_head = format!("POST /v1/identify HTTP/1.1\r\nHost: {host}\r\nContent-Ty");
    let opened = AtomicUsize::new(0);
    let open_one = || -> Option<TcpStream> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        stream.write_all(half_head.as_bytes()).ok()?;
        stream.set_nonblocking(true).ok()?;
        opened.fetch_add(1, Ordering::Relaxed);
        Some(stream)
    };
    let mut streams: Vec<Option<TcpStream>> = (0..count).map(|_| open_one()).collect();
    let mut closed = 0;
    while !stop.load(Ordering::Relaxed) {
        for slot in &mut streams {
            if slot.as_mut().is_none_or(closed_by_peer) {
                closed += usize::from(slot.is_some());
                *slot = open_one();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (opened.load(Ordering::Relaxed), closed)
}

/// End of stream, a reset, or an answer (a 408 from the service) all mean
/// the service is done with this connection.
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match stream.read(&mut buf) {
        // 0: end of stream; more: an answer (a 408). Either way, done.
        Ok(0..) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

fn send_bombs(
    url: &str,
    bomb: &[u8],
    timeout: Duration,
    stop: &AtomicBool,
) -> BTreeMap<String, usize> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut answers = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let status = match agent
            .post(url)
            .header("Content-Type", "image/png")
            .send(bomb)
        {
            Ok(mut response) => {
                let _ = response.body_mut().read_to_string();
                response.status().as_u16().to_string()
            }
            Err(_) => "io".to_string(),
        };
        *answers.entry(status).or_insert(0) += 1;
    }
    answers
}

/// The peak resident set of process `pid` (VmHWM), MiB; `None` when it
/// cannot be read (another host, no /proc).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bomb_is_small_and_declares_its_full_size() {
        let png = bomb_png(2000).unwrap();
        assert!(png.len() < 100_000, "{} bytes", png.len());
        let need =
            verger_image::decode_need(&png, &verger_image::PreprocessConfig::default()).unwrap();
        assert!(need.bytes >= 2000 * 2000 * 3, "{need:?}");
    }

    #[test]
    fn peak_rss_of_this_process_is_readable() {
        let mib = peak_rss_mib(std::process::id()).unwrap();
        assert!(mib > 1.0, "{mib}");
    }
}
