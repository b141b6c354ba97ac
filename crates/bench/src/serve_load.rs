//! `verger bench-serve`: a bounded load test of a running `verger serve`.
//!
//! For each concurrency level, N client threads send the photos of a folder
//! (round robin) to `POST /v1/identify` until the request budget is spent,
//! each waiting for its answer before sending the next, and the run reports
//! latency percentiles, throughput, errors, how many answers named the
//! photo's folder, and the mean inference batch (from `/metrics`). Meant for
//! loopback or a test host: the number of requests is fixed up front.
//!
//! With a [`HostileConfig`] (`--hostile`), each level runs twice: alone, then
//! alongside stalled connections and decompression bombs
//! ([`crate::hostile`]), so the two rows show what the hostile load costs a
//! normal request.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::hostile::{Hostile, HostileConfig, HostileReport};

#[derive(Debug, Clone)]
pub struct LoadTestConfig {
    /// The service, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Timed requests per concurrency level.
    pub requests: usize,
    /// Concurrency levels to run, one after the other.
    pub concurrency: Vec<usize>,
    /// Folder searched recursively for `.jpg`/`.jpeg`/`.png` photos; each
    /// one's parent folder is the label the answer should name.
    pub images: PathBuf,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Also run each level alongside this hostile load.
    pub hostile: Option<HostileConfig>,
}

/// The figures of one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    /// Answers whose label is the photo's folder name.
    pub correct: usize,
    pub wall_s: f64,
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Images per inference call during this level (from `/metrics`).
    pub mean_batch: Option<f64>,
    /// The first few error messages, for diagnosis.
    pub first_errors: Vec<String>,
    /// What the hostile clients saw, when this level ran alongside them.
    pub hostile: Option<HostileReport>,
}

struct Photo {
    label: String,
    bytes: Vec<u8>,
    content_type: &'static str,
}

/// Runs every level of `config.concurrency` and returns one report each.
pub fn run(config: &LoadTestConfig) -> anyhow::Result<Vec<LoadReport>> {
    let photos = Arc::new(load_photos(&config.images)?);
    let base = config.url.trim_end_matches('/').to_string();
    let agent = agent(config.timeout);
    let health = agent
        .get(format!("{base}/healthz"))
        .call()
        .with_context(|| format!("{base}/healthz: is `verger serve` running there?"))?;
    anyhow::ensure!(
        health.status().is_success(),
        "{base}/healthz answered {}",
        health.status()
    );
    let mut reports = Vec::new();
    for &concurrency in &config.concurrency {
        let concurrency = concurrency.max(1);
        // Warm-up (not timed): first calls allocate the engine's buffers.
        drive(&base, &photos, concurrency, concurrency * 2, config.timeout);
        reports.push(level(config, &agent, &base, &photos, concurrency));
        if let Some(hostile) = &config.hostile {
            let clients = Hostile::start(&base, hostile, config.timeout)?;
            // Let the stalled connections open and the bombs start arriving.
            std::thread::sleep(Duration::from_secs(2));
            let mut report = level(config, &agent, &base, &photos, concurrency);
            report.hostile = Some(clients.stop());
            reports.push(report);
        }
    }
    Ok(reports)
}

/// One timed run of `config.requests` requests at `concurrency`.
fn level(
    config: &LoadTestConfig,
    agent: &ureq::Agent,
    base: &str,
    photos: &Arc<Vec<Photo>>,
    concurrency: usize,
) -> LoadReport {
    let before = batch_totals(agent, base);
    let started = Instant::now();
    let outcomes = drive(base, photos, concurrency, config.requests, config.timeout);
    let wall = started.elapsed();
    let after = batch_totals(agent, base);
    let mean_batch = match (before, after) {
        (Some((s0, c0)), Some((s1, c1))) if c1 > c0 => Some((s1 - s0) / (c1 - c0)),
        _ => None,
    };
    summarise(concurrency, &outcomes, wall, mean_batch)
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

fn load_photos(dir: &Path) -> anyhow::Result<Vec<Photo>> {
    let mut photos = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let entries =
            std::fs::read_dir(&folder).with_context(|| format!("listing {}", folder.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            let content_type = match ext.as_deref() {
                Some("jpg" | "jpeg") => "image/jpeg",
                Some("png") => "image/png",
                _ => continue,
            };
            let label = path
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            photos.push(Photo {
                label,
                bytes,
                content_type,
            });
        }
    }
    anyhow::ensure!(
        !photos.is_empty(),
        "no .jpg, .jpeg or .png photos under {}",
        dir.display()
    );
    // A fixed order, so two runs send the same sequence.
    photos.sort_by(|a, b| (&a.label, a.bytes.len()).cmp(&(&b.label, b.bytes.len())));
    Ok(photos)
}

struct Outcome {
    latency: Duration,
    /// `Ok(whether the answer named the photo's folder)` or `Err(reason)`.
    result: Result<bool, String>,
}

/// `requests` requests from `concurrency` threads, each sending its next
/// photo once the previous answer arrived.
fn drive(
    base: &str,
    photos: &Arc<Vec<Photo>>,
    concurrency: usize,
    requests: usize,
    timeout: Duration,
) -> Vec<Outcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{base}/v1/identify");
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let next = Arc::clone(&next);
            let photos = Arc::clone(photos);
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = agent(timeout);
                let mut outcomes = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break;
                    }
                    // Spread the photos: consecutive requests get different fruits.
                    let index = (i * 7919) % photos.len();
                    let photo = &photos[index];
                    let started = Instant::now();
                    let result = identify_once(&agent, &url, photo).map(|l| l == photo.label);
                    outcomes.push(Outcome {
                        latency: started.elapsed(),
                        result,
                    });
                }
                outcomes
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_default())
        .collect()
}

fn identify_once(agent: &ureq::Agent, url: &str, photo: &Photo) -> Result<String, String> {
    let mut response = agent
        .post(url)
        .header("Content-Type", photo.content_type)
        .send(&photo.bytes[..])
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    let answer: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    answer["label"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no label in {body}"))
}

/// `(sum, count)` of the service's batch-size histogram.
fn batch_totals(agent: &ureq::Agent, base: &str) -> Option<(f64, f64)> {
    let text = agent
        .get(format!("{base}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    Some((
        value("verger_inference_batch_size_sum ")?,
        value("verger_inference_batch_size_count ")?,
    ))
}

fn summarise(
    concurrency: usize,
    outcomes: &[Outcome],
    wall: Duration,
    mean_batch: Option<f64>,
) -> LoadReport {
    let mut latencies: Vec<f64> = outcomes
        .iter()
        .map(|o| o.latency.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let errors: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err())
        .collect();
    let correct = outcomes.iter().filter(|o| o.result == Ok(true)).count();
    let wall_s = wall.as_secs_f64();
    LoadReport {
        concurrency,
        requests: outcomes.len(),
        errors: errors.len(),
        correct,
        wall_s,
        throughput_rps: if wall_s > 0.0 {
            outcomes.len() as f64 / wall_s
        } else {
            0.0
        },
        p50_ms: percentile(&latencies, 0.50),
        p90_ms: percentile(&latencies, 0.90),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        mean_batch,
        first_errors: errors.into_iter().take(5).cloned().collect(),
        hostile: None,
    }
}

/// "N stalled (K closed), bombs: 413 × a, 503 × b".
fn hostile_summary(h: &HostileReport) -> String {
    let answers: Vec<String> = h
        .bomb_answers
        .iter()
        .map(|(status, n)| format!("{status} × {n}"))
        .collect();
    format!(
        "{} stalled opened ({} closed by the service); bombs: {}",
        h.stalled_opened,
        h.stalled_closed_by_service,
        answers.join(", ")
    )
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A Markdown table of the reports.
pub fn table(reports: &[LoadReport]) -> String {
    let mut out = String::from(
        "| concurrency | hostile load | requests | errors | correct | throughput req/s | p50 ms | p90 ms | p99 ms | max ms | mean batch |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
            r.concurrency,
            r.hostile
                .as_ref()
                .map_or("none".to_string(), hostile_summary),
            r.requests,
            r.errors,
            r.correct,
            r.throughput_rps,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.mean_batch.map_or("–".to_string(), |b| format!("{b:.1}")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
