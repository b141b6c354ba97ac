//! The routes and limits against stand-in model and classifier (fast, no
//! ONNX Runtime): a real listener on 127.0.0.1 and a real HTTP client.
//! The real model and classifier are tested through the binary in
//! crates/cli/tests/it/serve.rs.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{
    BatchConfig, Classify, Featurize, Identification, Limits, Ranking, RejectRule, ServedModel,
    Service,
};

/// Features = the mean of each colour plane (3 values).
struct PlaneMeans {
    calls: AtomicUsize,
    largest_batch: AtomicUsize,
    delay: Duration,
}

impl Featurize for PlaneMeans {
    fn features(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.largest_batch.fetch_max(batch, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let plane = 224 * 224;
        Ok(input
            .chunks(plane)
            .map(|p| p.iter().sum::<f32>() / plane as f32)
            .collect())
    }
}

/// Red → "Apple Red 1", green → "Kiwi", blue → "Rambutan" (not in the
/// table); a grey photo (no colour above 0.4) is rejected as uncertain.
struct DominantColour {
    labels: Vec<String>,
}

impl Classify for DominantColour {
    fn labels(&self) -> &[String] {
        &self.labels
    }
    fn identify(&self, features: &[f32], k: usize) -> Result<Vec<Identification>, String> {
        Ok(features
            .chunks(3)
            .map(|row| {
                let exp: Vec<f32> = row.iter().map(|v| (4.0 * v).exp()).collect();
                let total: f32 = exp.iter().sum();
                let mut ranking: Ranking = exp.iter().map(|e| e / total).enumerate().collect();
                ranking.sort_by(|a, b| b.1.total_cmp(&a.1));
                ranking.truncate(k);
                let rejected = (ranking[0].1 < 0.4).then_some(RejectRule::MaxSoftmax);
                Identification { ranking, rejected }
            })
            .collect())
    }
}

struct Server {
    base: String,
    model: Arc<PlaneMeans>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn limits() -> Limits {
    Limits {
        max_body: 64 * 1024,
        max_pixels: 4_000_000,
        read_timeout: Duration::from_secs(5),
        inference_timeout: Duration::from_secs(5),
        queue_capacity: 64,
        decoders: 2,
        ..Limits::default()
    }
}

fn start(limits: Limits, model_delay: Duration) -> Server {
    let model = Arc::new(PlaneMeans {
        calls: AtomicUsize::new(0),
        largest_batch: AtomicUsize::new(0),
        delay: model_delay,
    });
    let classifier = Arc::new(DominantColour {
        labels: ["Apple Red 1", "Kiwi", "Rambutan"]
            .map(String::from)
            .to_vec(),
    });
    let service = Service::from_parts(
        Arc::clone(&model) as Arc<dyn Featurize>,
        classifier,
        ServedModel {
            engine: "stand-in".into(),
            model_sha256: "0".repeat(64),
            labels: 3,
        },
        limits,
        BatchConfig {
            max_batch: 8,
            delay: Duration::from_millis(20),
            top_k: 5,
        },
    );
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            service
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    Server {
        base: format!("http://{addr}"),
        model,
        stop: Some(stop),
        thread: Some(thread),
    }
}

fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .build()
        .into()
}

struct Reply {
    status: u16,
    json: serde_json::Value,
    text: String,
    allow: Option<String>,
    headers: ureq::http::HeaderMap,
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
    let allow = response
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_string());
    let headers = response.headers().clone();
    let text = response.body_mut().read_to_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        json,
        text,
        allow,
        headers,
    }
}

fn post(server: &Server, content_type: &str, body: &[u8]) -> Reply {
    reply(
        client()
            .post(format!("{}/v1/identify", server.base))
            .header("Content-Type", content_type)
            .send(body),
    )
}

fn get(server: &Server, path: &str) -> Reply {
    reply(client().get(format!("{}{path}", server.base)).call())
}

fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb(rgb));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A valid PNG header declaring `width × height`, and no pixels.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(13u32.to_be_bytes());
    out.extend(&ihdr);
    out.extend(crc32(&ihdr).to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
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
}

fn multipart(field: &str, filename: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "verger-test-boundary-7f3a";
    let mut body = Vec::new();
    body.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\
             Content-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend(content);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn identifies_a_raw_body_with_top5_and_info() {
    let server = start(limits(), Duration::ZERO);
    let r = post(&server, "image/png", &png(64, 48, [230, 20, 20]));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["label"], "Apple Red 1", "{}", r.text);
    let top5 = r.json["top5"].as_array().unwrap();
    assert_eq!(top5.len(), 3, "three labels only: {}", r.text);
    assert_eq!(top5[0]["label"], r.json["label"]);
    assert_eq!(top5[0]["confidence"], r.json["confidence"]);
    let sum: f64 = top5.iter().map(|e| e["confidence"].as_f64().unwrap()).sum();
    assert!(sum <= 1.0 + 1e-5, "{sum}");
    assert_eq!(r.json["info"]["fruit"], "apple", "{}", r.text);
    assert_eq!(r.json["info"]["botanical_name"], "Malus domestica");
    assert!(
        r.json["info"]["source_url"]
            .as_str()
            .unwrap()
            .contains("171688")
    );

    // A label the table lacks: an answer, with info = null.
    let r = post(&server, "image/png", &png(30, 30, [10, 10, 240]));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["label"], "Rambutan");
    assert!(r.json["info"].is_null(), "{}", r.text);
}

#[test]
fn a_rejected_photo_has_a_null_label_a_reason_and_still_a_ranked_top5() {
    let server = start(limits(), Duration::ZERO);
    let r = post(&server, "image/png", &png(32, 32, [128, 128, 128]));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json["label"].is_null(), "{}", r.text);
    assert_eq!(r.json["rejected"], "uncertain", "{}", r.text);
    assert_eq!(r.json["rejected_by"], "max_softmax", "{}", r.text);
    assert!(
        r.json["info"].is_null(),
        "no fruit card for a rejected photo: {}",
        r.text
    );
    let top5 = r.json["top5"].as_array().unwrap();
    assert_eq!(top5.len(), 3, "{}", r.text);
    let confidences: Vec<f64> = top5
        .iter()
        .map(|e| e["confidence"].as_f64().unwrap())
        .collect();
    assert!(
        confidences.windows(2).all(|w| w[0] >= w[1]),
        "ranked: {confidences:?}"
    );

    // An answered photo says it was not rejected.
    let r = post(&server, "image/png", &png(32, 32, [230, 20, 20]));
    assert_eq!(r.json["label"], "Apple Red 1", "{}", r.text);
    assert!(r.json["rejected"].is_null(), "{}", r.text);
}

#[test]
fn identifies_a_multipart_field() {
    let server = start(limits(), Duration::ZERO);
    let (content_type, body) = multipart("image", "kiwi.png", &png(40, 40, [20, 220, 20]));
    let r = post(&server, &content_type, &body);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["label"], "Kiwi");
    // Any file field will do when none is named "image".
    let (content_type, body) = multipart("upload", "kiwi.png", &png(40, 40, [20, 220, 20]));
    assert_eq!(post(&server, &content_type, &body).json["label"], "Kiwi");
    // A form without a file says so.
    let boundary = "b0";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--{boundary}--\r\n"
    );
    let r = post(
        &server,
        &format!("multipart/form-data; boundary={boundary}"),
        body.as_bytes(),
    );
    assert_eq!(
        (r.status, r.json["kind"].as_str()),
        (400, Some("no_image_field")),
        "{}",
        r.text
    );
}

#[test]
fn bad_requests_get_clear_errors_and_the_server_carries_on() {
    let server = start(limits(), Duration::ZERO);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "text/plain",
            b"this is not a photo".to_vec(),
            415,
            "unsupported_content_type",
        ),
        (
            "image/png",
            b"this is not a photo".to_vec(),
            415,
            "not_an_image",
        ),
        ("image/png", Vec::new(), 400, "empty_body"),
        (
            "image/png",
            png(64, 64, [1, 2, 3])[..60].to_vec(),
            400,
            "corrupt_image",
        ),
        (
            "image/png",
            png_header_only(30_000, 30_000),
            413,
            "image_too_large",
        ),
        ("image/png", vec![0u8; 100 * 1024], 413, "body_too_large"),
    ];
    for (content_type, body, status, kind) in cases {
        let started = Instant::now();
        let r = post(&server, content_type, &body);
        assert_eq!(r.status, status, "{kind}: {}", r.text);
        assert_eq!(r.json["kind"], kind, "{}", r.text);
        assert!(
            r.json["error"].as_str().is_some_and(|m| m.len() > 10),
            "{}",
            r.text
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{kind} took {:?}",
            started.elapsed()
        );
    }
    // Multipart over the limit.
    let (content_type, body) = multipart("image", "big.png", &vec![7u8; 100 * 1024]);
    let r = post(&server, &content_type, &body);
    assert_eq!(
        (r.status, r.json["kind"].as_str()),
        (413, Some("body_too_large")),
        "{}",
        r.text
    );

    let r = get(&server, "/no/such/page");
    assert_eq!(
        (r.status, r.json["kind"].as_str()),
        (404, Some("not_found")),
        "{}",
        r.text
    );
    let r = get(&server, "/v1/identify");
    assert_eq!(r.status, 405, "{}", r.text);
    assert_eq!(r.allow.as_deref(), Some("POST"));
    assert_eq!(r.json["kind"], "method_not_allowed");
    let r = reply(client().delete(format!("{}/healthz", server.base)).call());
    assert_eq!(r.status, 405, "{}", r.text);

    // Still answering.
    let r = post(&server, "image/png", &png(20, 20, [200, 0, 0]));
    assert_eq!(r.status, 200, "{}", r.text);
    let metrics = get(&server, "/metrics").text;
    for line in [
        r#"verger_http_errors_total{kind="not_an_image"} 1"#,
        r#"verger_http_errors_total{kind="image_too_large"} 1"#,
        r#"verger_http_errors_total{kind="body_too_large"} 2"#,
        r#"verger_http_errors_total{kind="not_found"} 1"#,
        r#"verger_http_errors_total{kind="overloaded"} 0"#,
        r#"verger_http_requests_total{method="POST",route="/v1/identify",status="200"} 1"#,
        r#"verger_http_requests_total{method="GET",route="other",status="404"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(metrics.contains("verger_http_request_duration_seconds_bucket"));
}

#[test]
fn concurrent_requests_share_batches() {
    // A slow model: requests pile up while a batch runs.
    let server = start(limits(), Duration::from_millis(60));
    let answers: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let server = &server;
                scope.spawn(move || {
                    let colour = [[220, 10, 10], [10, 220, 10], [10, 10, 220]][i % 3];
                    post(server, "image/png", &png(32, 32, colour))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, r) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "{}", r.text);
        let want = ["Apple Red 1", "Kiwi", "Rambutan"][i % 3];
        assert_eq!(r.json["label"], want, "each request gets its own answer");
    }
    let calls = server.model.calls.load(Ordering::SeqCst);
    assert!(calls < 16, "16 requests in {calls} model calls");
    assert!(server.model.largest_batch.load(Ordering::SeqCst) > 1);
    let metrics = get(&server, "/metrics").text;
    assert!(
        metrics.contains("verger_inference_batch_size_count"),
        "{metrics}"
    );
}

#[test]
fn a_full_queue_answers_503_instead_of_stalling() {
    let tight = Limits {
        queue_capacity: 1,
        ..limits()
    };
    let server = start(tight, Duration::from_millis(300));
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| post(&server, "image/png", &png(16, 16, [200, 0, 0])).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
}

#[test]
fn page_health_and_metrics() {
    let server = start(limits(), Duration::ZERO);
    let page = get(&server, "/");
    assert_eq!(page.status, 200);
    for needle in [
        "<meta name=\"viewport\"",
        "/v1/identify",
        "type=\"file\"",
        "drop",
    ] {
        assert!(page.text.contains(needle), "{needle}");
    }
    assert!(!page.text.contains("https://cdn"), "no CDN");
    let health = get(&server, "/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.json["status"], "ok");
    assert_eq!(health.json["labels"], 3);
    let metrics = get(&server, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text
            .contains("# TYPE verger_http_requests_total counter")
    );
}

#[test]
fn errors_are_generic_with_a_request_id_and_never_echo_the_path() {
    let server = start(limits(), Duration::ZERO);
    let r = get(&server, "/probe-4f1c/admin.php");
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(!r.text.contains("probe-4f1c"), "path echoed: {}", r.text);
    let id = r.header("x-request-id");
    assert_eq!(id.len(), 32, "{:?}", r.headers);
    assert_eq!(r.json["request_id"], id, "{}", r.text);
    // A corrupt image: the decoder's words stay in the log.
    let r = post(&server, "image/png", &png(64, 64, [1, 2, 3])[..60]);
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.json["error"], "the image is corrupt or truncated",
        "{}",
        r.text
    );
    assert_ne!(r.json["request_id"], id, "each request has its own id");
    // Success answers carry an id too.
    let r = post(&server, "image/png", &png(20, 20, [200, 0, 0]));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-request-id").len(), 32);
}

#[test]
fn an_image_needing_more_than_the_whole_decode_budget_gets_413() {
    let tight = Limits {
        decode_memory: 1024 * 1024,
        ..limits()
    };
    let server = start(tight, Duration::ZERO);
    // 1000 × 1000 RGB: 3 MB decoded, over the 1 MiB budget.
    let r = post(&server, "image/png", &png(1000, 1000, [10, 200, 10]));
    assert_eq!(
        (r.status, r.json["kind"].as_str()),
        (413, Some("image_too_large")),
        "{}",
        r.text
    );
    // A small one fits, and the budget is back to zero afterwards.
    let r = post(&server, "image/png", &png(100, 100, [10, 200, 10]));
    assert_eq!(r.status, 200, "{}", r.text);
    let metrics = get(&server, "/metrics").text;
    assert!(
        metrics.contains("verger_decode_memory_reserved_bytes 0"),
        "{metrics}"
    );
}

#[test]
fn security_headers_on_the_page_and_the_api() {
    let server = start(limits(), Duration::ZERO);
    let page = get(&server, "/");
    let csp = page.header("content-security-policy");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    for r in [&page, &get(&server, "/healthz"), &get(&server, "/nothing")] {
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        assert_eq!(r.header("referrer-policy"), "no-referrer");
        assert_eq!(r.header("x-frame-options"), "DENY");
        assert!(
            r.header("content-security-policy")
                .contains("frame-ancestors 'none'")
        );
    }
    let api = get(&server, "/healthz");
    assert_eq!(
        api.header("content-security-policy"),
        "default-src 'none'; frame-ancestors 'none'"
    );
}
