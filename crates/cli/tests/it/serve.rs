//! `verger serve`: the real binary, the real model and a classifier trained
//! by `verger train` on the whole-sample fixture, answering real photos over
//! HTTP on 127.0.0.1; and its web page driven in headless Chromium.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::sample::sample_run;
use crate::support::runner::Spawned;
use crate::support::{Verger, dataset_dir, model_path, python, python_script, read_dir_sorted};

/// A classifier trained once per test process on the sample fixture.
static CLASSIFIER: LazyLock<PathBuf> = LazyLock::new(|| {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    remove_dirs_of_finished_processes(tmp, "serve_classifier-");
    let dir = tmp.join(format!("serve_classifier-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    Verger::new()
        .arg("train")
        .arg("--features")
        .arg(&sample_run().out)
        .arg("--out")
        .arg(&dir)
        // These tests are about answering and the limits: thresholds at the
        // lowest training photo keep rejection nearly out of the way (it is
        // tested on real grocery photos in rejection.rs).
        .args(["--answer-fraction", "1", "--fruit-mass-pass", "1"])
        .exec()
        .assert_success();
    assert!(dir.join("classifier.json").is_file());
    dir
});

fn remove_dirs_of_finished_processes(tmp: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            std::fs::remove_dir_all(entry.path()).ok();
        }
    }
}

/// A `verger serve` child on a free loopback port, killed on drop.
pub(crate) struct Server {
    child: Spawned,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Server::start_with(&CLASSIFIER, extra)
    }

    /// Serves the classifier in `classifier` (a folder with classifier.json).
    pub(crate) fn start_with(classifier: &Path, extra: &[&str]) -> Server {
        let mut child = serve_command(classifier, &model_path()).args(extra).spawn();
        let started = Instant::now();
        let base = loop {
            let stderr = child.stderr();
            if let Some(at) = stderr.find("url=http://") {
                let rest = &stderr[at + "url=".len()..];
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                break rest[..end].to_string();
            }
            assert!(!child.finished(), "verger serve exited early:\n{stderr}");
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "verger serve did not start listening within 120 s:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let server = Server { child, base };
        let health = server.get("/healthz");
        assert_eq!(health.status, 200, "{}", health.text);
        server
    }

    fn get(&self, path: &str) -> Reply {
        reply(client().get(format!("{}{path}", self.base)).call())
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.base.trim_start_matches("http://").parse().unwrap()
    }

    /// The service's peak resident memory so far (VmHWM), MiB.
    fn peak_rss_mib(&self) -> f64 {
        verger_bench::hostile::peak_rss_mib(self.child.id()).expect("/proc/PID/status")
    }

    pub(crate) fn post(&self, content_type: &str, body: &[u8]) -> Reply {
        reply(
            client()
                .post(format!("{}/v1/identify", self.base))
                .header("Content-Type", content_type)
                .send(body),
        )
    }

    /// The value of one exact series line of `/metrics` (0 when absent).
    fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").text;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

fn serve_command(classifier: &Path, model: &Path) -> Verger {
    Verger::new()
        .env("VERGER_LOG", "warn,verger_serve=info")
        .arg("serve")
        .arg("--classifier")
        .arg(classifier)
        .arg("--model")
        .arg(model)
        .args(["--bind", "127.0.0.1:0"])
}

fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into()
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) json: serde_json::Value,
    pub(crate) text: String,
    pub(crate) headers: ureq::http::HeaderMap,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or(""))
    }
}

fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = result.expect("an HTTP answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.body_mut().read_to_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        json,
        text,
        headers,
    }
}

/// The first photo of every label in the sample's `Test/`.
fn one_test_photo_per_label() -> Vec<(String, PathBuf)> {
    read_dir_sorted(&dataset_dir().join("Test"))
        .into_iter()
        .filter(|d| d.is_dir())
        .map(|dir| {
            let label = dir.file_name().unwrap().to_string_lossy().into_owned();
            let photo = read_dir_sorted(&dir)
                .into_iter()
                .find(|p| p.extension().is_some_and(|e| e == "jpg"))
                .unwrap();
            (label, photo)
        })
        .collect()
}

fn multipart(field: &str, filename: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "verger-it-3b1f0c";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend(content);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A valid PNG header declaring `width × height` (and no pixel data).
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let crc = {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in &ihdr {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    };
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(13u32.to_be_bytes());
    out.extend(&ihdr);
    out.extend(crc.to_be_bytes());
    out
}

#[test]
fn serve_identifies_sample_photos_and_refuses_bad_requests() {
    let server = Server::start(&["--max-body", "64KiB"]);
    let health = server.get("/healthz").json;
    assert_eq!(health["labels"], 24, "{health}");
    assert!(
        health["engine"].as_str().unwrap().contains("onnx"),
        "{health}"
    );

    // One photo of every label, as the raw body.
    let photos = one_test_photo_per_label();
    assert_eq!(photos.len(), 24);
    let mut right = Vec::new();
    for (label, path) in &photos {
        let r = server.post("image/jpeg", &std::fs::read(path).unwrap());
        assert_eq!(r.status, 200, "{}: {}", path.display(), r.text);
        let top5 = r.json["top5"].as_array().unwrap();
        assert_eq!(top5.len(), 5, "{}", r.text);
        let sum: f64 = top5.iter().map(|e| e["confidence"].as_f64().unwrap()).sum();
        assert!(sum <= 1.0 + 1e-4, "top5 sums to {sum}: {}", r.text);
        assert_eq!(top5[0]["label"], r.json["label"], "{}", r.text);
        let confidence = r.json["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&confidence), "{}", r.text);
        if r.json["label"] == label.as_str() {
            // Every sample label has a row in the fruit table.
            assert!(r.json["info"]["botanical_name"].is_string(), "{}", r.text);
            right.push((label, path));
        }
    }
    assert!(
        right.len() >= 22,
        "only {} of 24 test photos identified: {:?}",
        right.len(),
        right
    );
    let (label, path) = right
        .iter()
        .find(|(l, _)| l.starts_with("Apple"))
        .expect("an apple identified");
    let r = server.post("image/jpeg", &std::fs::read(path).unwrap());
    assert_eq!(r.json["info"]["fruit"], "apple", "{}", r.text);
    assert_eq!(r.json["info"]["botanical_name"], "Malus domestica");
    assert!(r.json["info"]["energy_kcal_per_100g"].as_f64().unwrap() > 0.0);

    // The same photo as a multipart field.
    let (content_type, body) = multipart("image", "photo.jpg", &std::fs::read(path).unwrap());
    let r = server.post(&content_type, &body);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["label"], label.as_str(), "{}", r.text);

    // Bad requests: a clear JSON error, quickly.
    let jpeg = std::fs::read(path).unwrap();
    let cases: Vec<(&str, Vec<u8>, &[u16], &str)> = vec![
        (
            "text/plain",
            b"these are not the pixels you are looking for".to_vec(),
            &[415],
            "unsupported_content_type",
        ),
        (
            "application/octet-stream",
            b"these are not the pixels you are looking for".to_vec(),
            &[415],
            "not_an_image",
        ),
        (
            "image/jpeg",
            jpeg[..jpeg.len() / 3].to_vec(),
            &[400, 415],
            "corrupt_image",
        ),
        (
            "image/png",
            png_header_only(30_000, 30_000),
            &[413, 422],
            "image_too_large",
        ),
        (
            "image/jpeg",
            vec![0xFF; 100 * 1024],
            &[413],
            "body_too_large",
        ),
    ];
    for (content_type, body, statuses, kind) in cases {
        let r = server.post(content_type, &body);
        assert!(
            statuses.contains(&r.status),
            "{kind}: {} {}",
            r.status,
            r.text
        );
        assert_eq!(r.json["kind"], kind, "{}", r.text);
        assert!(
            r.json["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            r.text
        );
    }
    let r = server.get("/v1/nothing-here");
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(
        !r.text.contains("nothing-here"),
        "404 echoes the path: {}",
        r.text
    );
    assert!(r.json["request_id"].is_string(), "{}", r.text);
    let r = server.get("/v1/identify");
    assert_eq!(r.status, 405, "{}", r.text);

    // The counters moved, and the server still answers.
    let metric = |s: &str| server.metric(s);
    assert!(
        metric(r#"verger_http_requests_total{method="POST",route="/v1/identify",status="200"}"#)
            >= 26.0
    );
    assert_eq!(
        metric(r#"verger_http_errors_total{kind="image_too_large"}"#),
        1.0
    );
    assert_eq!(
        metric(r#"verger_http_errors_total{kind="body_too_large"}"#),
        1.0
    );
    assert_eq!(
        metric(r#"verger_http_errors_total{kind="not_an_image"}"#),
        1.0
    );
    assert_eq!(metric(r#"verger_http_errors_total{kind="not_found"}"#), 1.0);
    assert!(metric(r#"verger_http_request_duration_seconds_count{route="/v1/identify"}"#) >= 30.0);
    let r = server.post("image/jpeg", &jpeg);
    assert_eq!(
        (r.status, r.json["label"].as_str()),
        (200, Some(label.as_str()))
    );
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page.text.contains("name=\"viewport\""));
}

#[test]
fn serve_batches_concurrent_requests() {
    let server = Server::start(&["--batch-delay-ms", "20"]);
    let photos = one_test_photo_per_label();
    let answers: Vec<(String, Reply)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let (label, path) = photos[i % photos.len()].clone();
                let server = &server;
                scope.spawn(move || {
                    (
                        label,
                        server.post("image/jpeg", &std::fs::read(path).unwrap()),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut right = 0;
    for (label, r) in &answers {
        assert_eq!(r.status, 200, "{}", r.text);
        right += usize::from(r.json["label"] == label.as_str());
    }
    assert!(right >= 28, "{right} of 32 right under concurrency");
    let batches = server.metric("verger_inference_batch_size_count");
    let images = server.metric("verger_inference_batch_size_sum");
    assert_eq!(images, 32.0, "every image inferred once");
    assert!(
        batches < 32.0,
        "32 concurrent requests in {batches} inference calls: no batching"
    );
    // At least one batch held more than one image.
    let single = server.metric(r#"verger_inference_batch_size_bucket{le="1"}"#);
    assert!(single < batches, "all {batches} batches had one image");
}

#[test]
fn serve_refuses_a_classifier_of_another_feature_model() {
    let tmp = tempfile::tempdir().unwrap();
    let other_model = tmp.path().join("other.onnx");
    std::fs::write(&other_model, b"another feature model").unwrap();
    let out = serve_command(&CLASSIFIER, &other_model)
        .spawn()
        .wait()
        .assert_failure();
    let text = out.combined();
    let trained_on = crate::support::sha256_file(&model_path());
    let other = crate::support::sha256_file(&other_model);
    assert!(
        text.contains(&trained_on[..12]) && text.contains(&other[..12]),
        "both sha256 prefixes expected: {out:?}"
    );
    assert!(text.contains("sha256"), "{out:?}");
    assert!(!text.contains("listening"), "{out:?}");
}

/// The web page in headless Chromium: pick a photo, read the answer shown.
#[test]
fn serve_page_identifies_a_photo_in_headless_chromium() {
    let server = Server::start(&[]);
    let (label, photo) = one_test_photo_per_label()
        .into_iter()
        .find(|(l, _)| l == "Banana")
        .unwrap();
    // The page's security headers (its script runs under this policy below).
    let page = server.get("/");
    let csp = page.header("content-security-policy");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    let tmp = tempfile::tempdir().unwrap();
    let screenshot = tmp.path().join("serve.png");
    let output = std::process::Command::new(python())
        .arg(python_script("serve_page.py"))
        .arg("--url")
        .arg(&server.base)
        .arg("--image")
        .arg(&photo)
        .arg("--screenshot")
        .arg(&screenshot)
        .output()
        .expect("run tests/python/serve_page.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "serve_page.py failed\n--- stdout\n{stdout}\n--- stderr\n{}\n--- server\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.child.stderr()
    );
    let shown: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(shown["label"], label.as_str(), "{shown}");
    assert!(
        shown["confidence"].as_str().unwrap().contains('%'),
        "{shown}"
    );
    assert_eq!(shown["top5"].as_array().unwrap().len(), 5, "{shown}");
    assert!(shown["info"].as_str().unwrap().contains("Musa"), "{shown}");
    assert!(
        shown["console_errors"].as_array().unwrap().is_empty(),
        "{shown}"
    );
    assert!(
        shown["page_errors"].as_array().unwrap().is_empty(),
        "{shown}"
    );
    // Phone-sized: nothing wider than the 390 px viewport.
    assert!(shown["page_width"].as_u64().unwrap() <= 390, "{shown}");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 5_000);
}

/// Opens a connection that sends half a request head and then nothing.
fn stalled_connection(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"POST /v1/identify HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .unwrap();
    stream
}

/// Reads until the service closes the connection (a generous read timeout
/// only keeps a broken service from hanging the test); returns what came.
fn read_until_closed(mut stream: std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the service kept the connection open: {e}"),
        }
    }
}

#[test]
fn serve_closes_stalled_connections_while_answering_normal_requests() {
    // Fewer connection slots than stalled clients: the normal request below
    // only gets one once the header timeout has closed stalled ones.
    let server = Server::start(&["--header-timeout", "1", "--max-connections", "8"]);
    let stalled: Vec<_> = (0..12).map(|_| stalled_connection(server.addr())).collect();
    let silent = std::net::TcpStream::connect(server.addr()).unwrap();
    let (_, photo) = one_test_photo_per_label().swap_remove(0);
    let r = server.post("image/jpeg", &std::fs::read(&photo).unwrap());
    assert_eq!(r.status, 200, "{}", r.text);
    for stream in stalled.into_iter().chain([silent]) {
        let got = read_until_closed(stream);
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    // A kept-alive connection left idle after its answer is closed too.
    let mut idle = std::net::TcpStream::connect(server.addr()).unwrap();
    std::io::Write::write_all(&mut idle, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let got = read_until_closed(idle);
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn serve_stops_on_sigterm_without_waiting_for_stalled_connections() {
    // Timeouts far longer than the test's patience: only closing the
    // stalled connections at shutdown lets the process exit in time.
    let mut server = Server::start(&["--header-timeout", "3600", "--timeout", "3600"]);
    let stalled: Vec<_> = (0..5).map(|_| stalled_connection(server.addr())).collect();
    assert_eq!(server.get("/healthz").status, 200);
    let pid = i32::try_from(server.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = Instant::now();
    while !server.child.finished() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still running 60 s after SIGTERM:\n{}",
            server.child.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for stream in stalled {
        read_until_closed(stream);
    }
    assert!(server.child.stderr().contains("shutting down"));
}

#[test]
fn serve_survives_a_decompression_bomb_flood_with_bounded_memory() {
    const BUDGET_MIB: f64 = 100.0;
    let server = Server::start(&[
        "--decode-memory",
        "100MiB",
        "--decoders",
        "16",
        "--decode-wait",
        "0",
    ]);
    let (label, photo) = one_test_photo_per_label().swap_remove(0);
    let jpeg = std::fs::read(&photo).unwrap();
    assert_eq!(server.post("image/jpeg", &jpeg).status, 200);
    let before = server.peak_rss_mib();

    // 7,900² RGB needs 187 MB: over the whole budget, refused at once.
    let huge = verger_bench::hostile::bomb_png(7900).unwrap();
    assert!(huge.len() < 1_500_000, "{} bytes", huge.len());
    let r = server.post("image/png", &huge);
    assert_eq!(
        (r.status, r.json["kind"].as_str()),
        (413, Some("image_too_large")),
        "{}",
        r.text
    );
    // 5,000² needs 75 MB: one at a time fits; 16 at once do not.
    let bomb = verger_bench::hostile::bomb_png(5000).unwrap();
    let start = std::sync::Barrier::new(16);
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    server.post("image/png", &bomb)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );
    let busy = replies
        .iter()
        .find(|r| r.status == 503)
        .expect("a 503 in the flood");
    assert_eq!(busy.header("retry-after"), "1");
    assert_eq!(busy.json["kind"], "overloaded", "{}", busy.text);

    // Still up, still right, and its memory grew by at most the budget
    // (16 decodes at once would have taken 1.2 GB).
    let r = server.post("image/jpeg", &jpeg);
    assert_eq!(
        (r.status, r.json["label"].as_str()),
        (200, Some(label.as_str())),
        "{}",
        r.text
    );
    let after = server.peak_rss_mib();
    assert!(
        after < before + BUDGET_MIB + 60.0,
        "peak RSS {before:.0} → {after:.0} MiB with a {BUDGET_MIB} MiB decode budget"
    );
    assert_eq!(
        server.metric("verger_decode_memory_reserved_bytes"),
        0.0,
        "every reservation returned"
    );
}
