//! Storage faults: transient S3 errors (resets, 503 SlowDown, delays, a
//! server restart in the middle of a run) are retried and the run completes
//! with the same result as a local run; a read that still fails after the
//! retries is an `errors/` row, not a failed run.
//!
//! The faults come from a real SeaweedFS server (restarted for real) and a
//! fault-injecting proxy in front of it (`support::fault_proxy`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::sample::sample_run;
use crate::support::fault_proxy::{Fault, FaultPlan, FaultProxy};
use crate::support::seaweed::SeaweedFs;
use crate::support::{
    RunDir, RunOutput, Verger, copy_sample_subset, dataset_dir, dataset_images, max_abs_diff,
    mentions_any, parent_name, tempdir,
};

/// The server's environment with the endpoint moved to the proxy.
fn env_through(s3: &SeaweedFs, proxy: &FaultProxy) -> Vec<(String, String)> {
    let mut env = s3.env();
    env.push(("AWS_ENDPOINT_URL".into(), proxy.endpoint()));
    env
}

/// Download `s3://fruits/results/` and check it is the whole sample, with the
/// features of the embedded local run (as `s3::s3_to_s3_matches_local_run`).
fn assert_results_match_local_run(s3: &SeaweedFs, o: &RunOutput) {
    let images = dataset_images();
    let n = images.len();
    o.assert_summary(n, n, 0);
    let tmp = tempdir();
    let dl = tmp.path().join("results");
    s3.tool([
        "download".as_ref(),
        "s3://fruits/results/".as_ref(),
        dl.as_os_str(),
    ]);
    assert!(dl.join("_SUCCESS").is_file(), "_SUCCESS missing: {o:?}");
    let run = RunDir::read(&dl);
    assert!(run.errors.is_empty(), "{:#?}", run.errors);
    assert_eq!(run.counts(), (n as u64, n as u64, 0));
    assert_eq!(run.features.len(), n);

    let local = &sample_run().run;
    let base = dataset_dir();
    let want: BTreeSet<String> = images
        .iter()
        .map(|p| {
            format!(
                "s3://fruits/images/{}",
                p.strip_prefix(&base).unwrap().to_str().unwrap()
            )
        })
        .collect();
    let got: BTreeSet<String> = run.features.iter().map(|r| r.path.clone()).collect();
    assert_eq!(got, want);
    let mut worst = 0f32;
    for r in &run.features {
        assert_eq!(r.label, parent_name(&r.path), "{}", r.path);
        let rel = r.path.strip_prefix("s3://fruits/images/").unwrap();
        let l = local
            .feature(base.join(rel).to_str().unwrap())
            .unwrap_or_else(|| panic!("{rel} missing from the local run"));
        assert_eq!(r.label, l.label);
        let d = max_abs_diff(&r.features, &l.features);
        assert!(d <= 1e-5, "S3 vs local max abs diff {d} for {rel}");
        worst = worst.max(d);
    }
    eprintln!("S3 vs local: worst max-abs-diff {worst:e}");
    assert!(
        !o.combined().contains(&s3.secret_key),
        "secret leaked: {o:?}"
    );
}

/// About a quarter of all requests (reads, listings, writes, deletes) fail
/// with a reset or a 503 SlowDown, a few more are delayed: the run retries
/// them and its result is the local run's.
#[test]
fn s3_run_completes_through_resets_and_slow_downs() {
    let s3 = SeaweedFs::with_sample();
    let proxy = FaultProxy::start(
        s3.s3_port,
        FaultPlan {
            reset: 0.12,
            slow_down: 0.12,
            delay: 0.05,
            delay_for: Duration::from_millis(300),
            always_fail: Vec::new(),
            seed: 0x5eed_f00d,
        },
    );
    let o = Verger::run("s3://fruits/images/", "s3://fruits/results/")
        .envs(&env_through(&s3, &proxy))
        .exec();
    let counts = proxy.counts();
    eprintln!("fault proxy: {counts:?}");
    let o = o.assert_success();

    assert!(counts.resets > 0, "no reset injected: {counts:?}");
    assert!(
        counts.slow_downs > 0,
        "no 503 SlowDown injected: {counts:?}"
    );
    assert!(counts.delays > 0, "no delay injected: {counts:?}");
    // Image reads themselves were hit, not only the bookkeeping around them.
    let (reads, forwarded) = proxy.matching("GET", "/fruits/images/");
    assert!(
        reads > forwarded,
        "no image read was faulted ({reads} reads, {forwarded} forwarded)"
    );
    // Every image needed one forwarded read at least.
    assert!(
        forwarded >= dataset_images().len(),
        "{forwarded} forwarded reads"
    );
    // Writes are few (a dozen requests), so whether one was hit is only shown.
    let write_faults = proxy
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && r.fault != Fault::None)
        .count();
    eprintln!("faulted non-GET requests (writes, deletes, HEADs): {write_faults}");

    assert_results_match_local_run(&s3, &o);
}

/// The server is stopped a quarter of the way through the reads and started
/// again (same ports, same data) a few seconds later: the run waits for it
/// and completes with every image featurized, none in `errors/`.
#[test]
fn s3_run_survives_a_server_restart() {
    let mut s3 = SeaweedFs::with_sample();
    // A pass-through proxy: it only shows how far the run has got.
    let proxy = FaultProxy::start(s3.s3_port, FaultPlan::pass_through());
    let env = env_through(&s3, &proxy);
    let run = std::thread::spawn(move || {
        Verger::run("s3://fruits/images/", "s3://fruits/results/")
            .envs(&env)
            .exec()
    });

    let n = dataset_images().len();
    let started = Instant::now();
    loop {
        let (_, read) = proxy.matching("GET", "/fruits/images/");
        if read >= n / 4 {
            break;
        }
        if run.is_finished() {
            let o = run.join().unwrap();
            panic!("the run ended after {read} image reads, before the restart: {o:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the run read only {read} images in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, read_before) = proxy.matching("GET", "/fruits/images/");
    let restart_started = Instant::now();
    s3.restart(Duration::from_secs(4));
    let outage = restart_started.elapsed();
    let refused_during_outage = proxy.counts().upstream_refused;
    assert!(
        !run.is_finished(),
        "the run finished during the outage: the restart was not mid-run"
    );

    let o = run.join().unwrap();
    let counts = proxy.counts();
    let (_, read_total) = proxy.matching("GET", "/fruits/images/");
    eprintln!(
        "restart: server down/starting for {outage:.1?} after {read_before} image reads; \
         {read_total} image reads in all; proxy {counts:?}"
    );
    let o = o.assert_success();
    assert!(
        refused_during_outage > 0,
        "no request reached the server while it was down: {counts:?}"
    );
    assert!(
        read_total > read_before,
        "no image was read after the restart ({read_before} before, {read_total} in all)"
    );
    assert_results_match_local_run(&s3, &o);
}

/// A read that keeps failing (503 SlowDown on every attempt) is retried
/// `VERGER_S3_MAX_RETRIES` times, then becomes an `errors/` row with the
/// image's path and the reason; the other images are featurized.
#[test]
fn s3_read_failing_after_retries_is_an_error_row() {
    let s3 = SeaweedFs::start();
    s3.tool(["mb", "fruits"]);
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let copied = copy_sample_subset(&input, "Test", &["Kiwi", "Lemon"], 3);
    s3.tool([
        "upload".as_ref(),
        input.as_os_str(),
        "s3://fruits/few/".as_ref(),
    ]);
    let rel = copied[0]
        .strip_prefix(&input)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        rel.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c)),
        "{rel} would be percent-encoded in the request"
    );
    let poisoned = format!("/fruits/few/{rel}");
    let proxy = FaultProxy::start(
        s3.s3_port,
        FaultPlan {
            always_fail: vec![poisoned.clone()],
            ..FaultPlan::pass_through()
        },
    );
    let out = tmp.path().join("out");
    let o = Verger::run("s3://fruits/few/", &out)
        .envs(&env_through(&s3, &proxy))
        .env("VERGER_S3_MAX_RETRIES", "2")
        .args(["--k", "2"])
        .exec()
        .assert_success();
    let n = copied.len();
    o.assert_summary(n, n - 1, 1);

    let run = RunDir::read(&out);
    assert_eq!(run.counts(), (n as u64, n as u64 - 1, 1));
    assert_eq!(run.errors.len(), 1, "{:#?}", run.errors);
    let e = &run.errors[0];
    assert_eq!(e.path, format!("s3://fruits/few/{rel}"));
    assert_eq!(e.label, parent_name(&e.path));
    assert_eq!(e.stage, "read");
    assert!(
        mentions_any(&e.reason, &["503", "slowdown", "slow down"]),
        "the reason should say what the server answered: {e:?}"
    );
    assert!(
        e.reason.contains("after 2 retries"),
        "the reason should say it was retried: {e:?}"
    );
    assert!(!e.reason.contains(&s3.secret_key));
    assert!(run.feature(&e.path).is_none());
    // The first attempt and exactly the two retries asked for.
    let (attempts, forwarded) = proxy.matching("GET", &poisoned);
    assert_eq!((attempts, forwarded), (3, 0), "{:#?}", proxy.requests());
}
