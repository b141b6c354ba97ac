//! `--resume`: a run killed with SIGKILL part-way (like a power loss) picks
//! up where it stopped, and the result equals an uninterrupted run's: same
//! rows, nothing missing, nothing twice.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sample::sample_run;
use crate::support::seaweed::SeaweedFs;
use crate::support::{
    RunDir, RunOutput, Verger, dataset_dir, dataset_images, max_abs_diff, numbers_after,
    python_json, tempdir,
};

/// Small checkpoints so a kill a few seconds in leaves several behind.
const CHECKPOINT: &str = "32";

/// Checkpoint files of the staged features under a local output.
fn local_checkpoints(out: &Path) -> usize {
    std::fs::read_dir(out.join("_staging/features"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Starts `run`, waits until `ready()` holds, then SIGKILLs it.
fn kill_when(run: Verger, ready: impl Fn() -> bool) -> RunOutput {
    let mut child = run.spawn();
    let started = Instant::now();
    while !ready() {
        assert!(
            !child.finished(),
            "the run ended before it could be killed: {}",
            child.stderr()
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "never ready to kill: {}",
            child.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()
}

/// The `--resume` summary says how many images were already done.
fn resumed_count(o: &RunOutput) -> u64 {
    let line = o
        .stdout
        .lines()
        .rev()
        .find(|l| l.contains("already done"))
        .unwrap_or_else(|| panic!("no 'already done' in the summary: {o:?}"));
    numbers_after(line, "errors (")
}

/// Features rows equal the embedded sample run's (paths mapped by `to_local`).
fn assert_equals_sample(run: &RunDir, to_local: impl Fn(&str) -> String) {
    let n = dataset_images().len();
    let paths: Vec<&str> = run.features.iter().map(|r| r.path.as_str()).collect();
    let unique: BTreeSet<&str> = paths.iter().copied().collect();
    assert_eq!(unique.len(), paths.len(), "a row appears twice");
    assert_eq!(paths.len(), n, "rows missing");
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert_eq!(run.counts().0, n as u64);
    let reference = &sample_run().run;
    for row in &run.features {
        let local = to_local(&row.path);
        let want = reference
            .feature(&local)
            .unwrap_or_else(|| panic!("{local} is not in the sample run"));
        assert_eq!(row.label, want.label);
        let d = max_abs_diff(&row.features, &want.features);
        assert!(d <= 1e-5, "{}: features differ by {d}", row.path);
        for (a, b) in row.pca.iter().zip(&want.pca) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{}: pca {a} vs {b}",
                row.path
            );
        }
    }
}

#[test]
fn a_killed_local_run_resumes_and_equals_an_uninterrupted_run() {
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let flags = ["--checkpoint-every", CHECKPOINT, "--partitions", "2"];
    let killed = kill_when(Verger::run(dataset_dir(), &out).args(flags), || {
        local_checkpoints(&out) >= 6
    });
    assert!(!killed.status.success(), "{killed:?}");
    assert!(!out.join("_SUCCESS").exists(), "_SUCCESS after a kill");
    let durable = local_checkpoints(&out);

    let o = Verger::run(dataset_dir(), &out)
        .args(flags)
        .arg("--resume")
        .exec()
        .assert_success();
    let n = dataset_images().len();
    o.assert_summary(n, n, 0);
    let skipped = resumed_count(&o);
    // Every checkpoint seen before the kill (32 images each) was kept.
    assert!(
        skipped >= (durable * 32) as u64 && skipped < n as u64,
        "skipped {skipped} with {durable} checkpoints of 32"
    );
    let run = RunDir::read(&out);
    assert_eq!(run.run_json["counts"]["resumed"].as_u64(), Some(skipped));
    assert!(!out.join("_staging").exists(), "staging left behind");
    assert_equals_sample(&run, |p| p.to_string());

    // Resuming a complete run is refused, with the reason.
    let again = Verger::run(dataset_dir(), &out)
        .arg("--resume")
        .exec()
        .assert_failure();
    assert!(again.stderr.contains("already completed"), "{again:?}");
}

#[test]
fn a_killed_s3_run_resumes_and_equals_an_uninterrupted_run() {
    let s3 = SeaweedFs::with_sample();
    let flags = ["--checkpoint-every", CHECKPOINT, "--partitions", "2"];
    let staged = || {
        s3.tool(["ls", "s3://fruits/resumed/_staging/features/"])
            .to_string()
            .matches(".parquet")
            .count()
    };
    let killed = kill_when(
        Verger::run("s3://fruits/images/", "s3://fruits/resumed/")
            .args(flags)
            .envs(&s3.env()),
        || staged() >= 4,
    );
    assert!(!killed.status.success());
    let o = Verger::run("s3://fruits/images/", "s3://fruits/resumed/")
        .args(flags)
        .arg("--resume")
        .envs(&s3.env())
        .exec()
        .assert_success();
    let n = dataset_images().len();
    o.assert_summary(n, n, 0);
    let skipped = resumed_count(&o);
    assert!(skipped >= 4 * 32 && skipped < n as u64, "skipped {skipped}");

    let tmp = tempdir();
    let dl = tmp.path().join("dl");
    s3.tool([
        "download".as_ref(),
        "s3://fruits/resumed/".as_ref(),
        dl.as_os_str(),
    ]);
    assert!(dl.join("_SUCCESS").is_file());
    assert!(!dl.join("_staging").exists(), "staging left behind");
    let base = dataset_dir();
    assert_equals_sample(&RunDir::read(&dl), |p| {
        base.join(p.strip_prefix("s3://fruits/images/").unwrap())
            .to_str()
            .unwrap()
            .to_string()
    });
}

/// A tiny deterministic generator, seeded from the clock (printed, so a
/// failure can be replayed with VERGER_TEST_SEED).
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Self {
        let seed = std::env::var("VERGER_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("random kills: VERGER_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn runs_killed_at_random_points_resume_to_the_uninterrupted_result() {
    // Good and broken images together, so errors/ is part of the invariant.
    let tmp = tempdir();
    let base = tmp.path().canonicalize().unwrap();
    let root = base.join("Mixed");
    python_json(
        "make_bad_inputs.py",
        [
            "mixed".as_ref(),
            root.as_os_str(),
            dataset_dir().as_os_str(),
        ],
    );
    for label in std::fs::read_dir(dataset_dir().join("Test")).unwrap() {
        let label = label.unwrap();
        let dir = root.join(label.file_name());
        std::fs::create_dir_all(&dir).unwrap();
        for image in std::fs::read_dir(label.path()).unwrap() {
            let image = image.unwrap();
            std::os::unix::fs::symlink(image.path(), dir.join(image.file_name())).unwrap();
        }
    }
    // Checkpoints of 4 images, so failures too become durable early.
    let flags = [
        "--glob",
        "*.{jpg,png}",
        "--checkpoint-every",
        "4",
        "--partitions",
        "2",
    ];
    let reference_out = base.join("reference");
    Verger::run(&root, &reference_out)
        .args(flags)
        .exec()
        .assert_success();
    let reference = RunDir::read(&reference_out);
    assert!(!reference.errors.is_empty(), "the tree has broken files");

    let mut rng = Rng::from_env_or_clock();
    let out = base.join("out");
    let mut resume = false;
    for round in 0..3 {
        let mut run = Verger::run(&root, &out).args(flags);
        if resume {
            run = run.arg("--resume");
        }
        let after = Duration::from_millis(300 + rng.below(3000));
        let started = Instant::now();
        let mut child = run.spawn();
        while started.elapsed() < after && !child.finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let o = child.kill();
        eprintln!("round {round}: killed after {after:?} ({})", o.status);
        if out.join("_SUCCESS").exists() {
            break; // it completed before the kill landed
        }
        resume = true;
    }
    if !out.join("_SUCCESS").exists() {
        Verger::run(&root, &out)
            .args(flags)
            .arg("--resume")
            .exec()
            .assert_success();
    }
    let run = RunDir::read(&out);
    let (listed, features, errors) = run.counts();
    assert_eq!(features + errors, listed, "features + errors = listed");
    assert_eq!(run.counts().0, reference.counts().0);
    let rows = |r: &RunDir| -> (Vec<String>, Vec<(String, String, String)>) {
        let mut f: Vec<String> = r.features.iter().map(|x| x.path.clone()).collect();
        let mut e: Vec<(String, String, String)> = r
            .errors
            .iter()
            .map(|x| (x.path.clone(), x.stage.clone(), x.reason.clone()))
            .collect();
        f.sort();
        e.sort();
        (f, e)
    };
    // Sorted lists, not sets: a duplicate would show.
    assert_eq!(rows(&run), rows(&reference));
    assert_eq!(run.features.len() as u64, features);
    assert_eq!(run.errors.len() as u64, errors);
    for row in &run.features {
        let want = reference.feature(&row.path).unwrap();
        assert!(
            max_abs_diff(&row.features, &want.features) <= 1e-5,
            "{}",
            row.path
        );
    }
}

#[test]
fn resume_refuses_another_job_and_starts_fresh_on_an_empty_output() {
    let tmp = tempdir();
    let input = tmp.path().join("in");
    crate::support::copy_sample_subset(&input, "Test", &["Kiwi", "Lemon"], 10);
    let out = tmp.path().join("out");
    // Nothing there yet: --resume simply runs.
    let o = Verger::run(&input, &out)
        .arg("--resume")
        .exec()
        .assert_success();
    o.assert_summary(20, 20, 0);
    assert!(!o.stdout.contains("already done"), "{o:?}");

    // An interrupted run of another job (simulated by its job file) is not
    // mixed with this one.
    std::fs::remove_file(out.join("_SUCCESS")).unwrap();
    std::fs::create_dir_all(out.join("_staging")).unwrap();
    std::fs::write(
        out.join("_staging/job.json"),
        format!(
            r#"{{"input":"{}","glob":"*.png","model_sha256":"x","max_pixels":1}}"#,
            input.canonicalize().unwrap().display()
        ),
    )
    .unwrap();
    let refused = Verger::run(&input, &out)
        .arg("--resume")
        .exec()
        .assert_failure();
    assert!(
        refused.stderr.contains("glob: *.png → *.jpg") && refused.stderr.contains("--overwrite"),
        "{refused:?}"
    );
    let both = Verger::run(&input, &out)
        .args(["--resume", "--overwrite"])
        .exec()
        .assert_failure();
    assert!(both.stderr.contains("--resume"), "{both:?}");
}
