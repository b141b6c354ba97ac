//! S3 input and output against a local SeaweedFS server.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;

use crate::sample::sample_run;
use crate::support::seaweed::SeaweedFs;
use crate::support::{
    RunDir, RunOutput, Verger, dataset_dir, dataset_images, max_abs_diff, mentions_any,
    parent_name, tempdir, walk_files,
};

/// Everything text-like a run left behind: stdout, stderr and every JSON/text
/// file of a downloaded output tree.
fn assert_secret_absent(secret: &str, o: &RunOutput, out: Option<&Path>) {
    assert!(!o.stdout.contains(secret), "secret leaked to stdout");
    assert!(!o.stderr.contains(secret), "secret leaked to stderr");
    if let Some(dir) = out {
        for f in walk_files(dir) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret leaked into {}",
                f.display()
            );
        }
    }
}

#[test]
fn s3_to_s3_matches_local_run() {
    let s3 = SeaweedFs::start();
    s3.tool(["mb", "fruits"]);
    let sample = dataset_dir();
    let args: [&OsStr; 3] = [
        "upload".as_ref(),
        sample.as_os_str(),
        "s3://fruits/images/".as_ref(),
    ];
    let up = s3.tool(args);
    let images = dataset_images();
    // The sample dir also has README/MANIFEST files; only *.jpg are listed by verger.
    assert!(up["uploaded"].as_u64().unwrap() >= images.len() as u64);

    let o = Verger::run("s3://fruits/images/", "s3://fruits/results/")
        .envs(&s3.env())
        .exec()
        .assert_success();
    let n = images.len();
    o.assert_summary(n, n, 0);

    let tmp = tempdir();
    let dl = tmp.path().join("results");
    s3.tool([
        "download".as_ref(),
        "s3://fruits/results/".as_ref(),
        dl.as_os_str(),
    ]);
    let run = RunDir::read(&dl);
    assert!(
        dl.join("_SUCCESS").is_file(),
        "_SUCCESS missing in S3 output"
    );
    assert_eq!(run.counts(), (n as u64, n as u64, 0));
    assert_eq!(run.features.len(), n);
    assert!(run.errors.is_empty(), "{:?}", run.errors);

    // Paths are s3://bucket/key, labels the parent "folder"; features equal the local run's.
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
    assert_secret_absent(&s3.secret_key, &o, Some(&dl));

    // The S3 output exists now: a second run without --overwrite is refused.
    let again = Verger::run("s3://fruits/images/", "s3://fruits/results/")
        .envs(&s3.env())
        .exec()
        .assert_failure();
    assert!(again.combined().contains("--overwrite"), "{again:?}");
    assert_secret_absent(&s3.secret_key, &again, None);
}

#[test]
fn s3_wrong_secret_is_a_clear_error_without_leaking_it() {
    let s3 = SeaweedFs::start();
    s3.tool(["mb", "fruits"]);
    let tmp = tempdir();
    let input = tmp.path().join("in");
    crate::support::copy_sample_subset(&input, "Test", &["Kiwi"], 2);
    s3.tool([
        "upload".as_ref(),
        input.as_os_str(),
        "s3://fruits/few/".as_ref(),
    ]);

    let wrong = format!("WRONG-{}", s3.secret_key.chars().rev().collect::<String>());
    assert_ne!(wrong, s3.secret_key);
    let out = tmp.path().join("out");
    let o = Verger::run("s3://fruits/few/", &out)
        .envs(&s3.env_with_secret(&wrong))
        .exec()
        .assert_failure();
    eprintln!("wrong secret run: {o:?}");
    assert!(
        mentions_any(
            &o.stderr,
            &["access", "credential", "forbidden", "denied", "signature"]
        ),
        "stderr should say the credentials were refused: {o:?}"
    );
    assert_secret_absent(&wrong, &o, None);
    assert_secret_absent(&s3.secret_key, &o, None);
    assert!(!out.join("_SUCCESS").exists());
}

/// A bucket that does not exist is a permanent error: the run stops and
/// says which bucket, without any secret. (How long it takes is the store
/// client's retry policy, unit-tested in verger-store; no clock here.)
#[test]
fn s3_missing_bucket_stops_and_names_it() {
    let s3 = SeaweedFs::start();
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let o = Verger::run("s3://no-such-bucket-here/images/", &out)
        .envs(&s3.env())
        .exec()
        .assert_failure();
    assert!(
        o.stderr.contains("s3://no-such-bucket-here/images"),
        "the error must name the bucket and prefix: {o:?}"
    );
    assert!(
        mentions_any(&o.stderr, &["no such bucket", "nosuchbucket", "not found"]),
        "the error must say the bucket is missing: {o:?}"
    );
    assert_secret_absent(&s3.secret_key, &o, None);
    assert!(!out.join("_SUCCESS").exists());
}

/// A prefix with a space, an object directly under it (label = the prefix's
/// last segment), and keys with non-ASCII and URL-special characters.
#[test]
fn s3_awkward_keys_and_object_at_prefix_root() {
    let s3 = SeaweedFs::start();
    s3.tool(["mb", "fruits"]);
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let copied = crate::support::copy_sample_subset(&input, "Test", &["Lemon", "Mango"], 3);
    let extra = [
        "loose.jpg",
        "Äpfel Grün/ñ 1.jpg",
        "Mango/hash#and%20percent.jpg",
    ];
    for (i, rel) in extra.iter().enumerate() {
        let dst = input.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&copied[i], dst).unwrap();
    }
    let args: [&OsStr; 3] = [
        "upload".as_ref(),
        input.as_os_str(),
        "s3://fruits/My Batch/".as_ref(),
    ];
    s3.tool(args);

    let out = tmp.path().join("out");
    let o = Verger::run("s3://fruits/My Batch/", &out)
        .envs(&s3.env())
        .args(["--k", "2"])
        .exec()
        .assert_success();
    let run = RunDir::read(&out);
    let mut want: BTreeSet<String> = copied
        .iter()
        .map(|p| {
            format!(
                "s3://fruits/My Batch/{}",
                p.strip_prefix(&input).unwrap().to_str().unwrap()
            )
        })
        .collect();
    want.extend(
        extra
            .iter()
            .map(|rel| format!("s3://fruits/My Batch/{rel}")),
    );
    let got: BTreeSet<String> = run.features.iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        got, want,
        "features paths\n{o:?}\nerrors: {:#?}",
        run.errors
    );
    assert!(run.errors.is_empty(), "{:#?}", run.errors);
    let loose = run.feature("s3://fruits/My Batch/loose.jpg").unwrap();
    assert_eq!(loose.label, "My Batch");
    assert_eq!(
        run.feature("s3://fruits/My Batch/Äpfel Grün/ñ 1.jpg")
            .unwrap()
            .label,
        "Äpfel Grün"
    );
    for r in &run.features {
        assert_eq!(r.label, parent_name(&r.path), "{}", r.path);
    }
}

/// S3 output: refused when it exists, and `--overwrite` leaves no object of
/// the previous result behind, while an object verger did not write stays.
#[test]
fn s3_output_overwrite_removes_stale_objects() {
    let s3 = SeaweedFs::start();
    s3.tool(["mb", "fruits"]);
    let tmp = tempdir();
    let input = tmp.path().join("in");
    let copied = crate::support::copy_sample_subset(&input, "Test", &["Peach", "Plum"], 2);
    let args: [&OsStr; 3] = [
        "upload".as_ref(),
        input.as_os_str(),
        "s3://fruits/in/".as_ref(),
    ];
    s3.tool(args);
    Verger::run("s3://fruits/in/", "s3://fruits/out/")
        .envs(&s3.env())
        .args(["--k", "2"])
        .exec()
        .assert_success();

    // Leftovers an older run could have left.
    let stale = tmp.path().join("stale");
    std::fs::create_dir_all(stale.join("features")).unwrap();
    std::fs::write(stale.join("stale.txt"), "old").unwrap();
    std::fs::write(stale.join("features/old.parquet"), "not parquet").unwrap();
    let args: [&OsStr; 3] = [
        "upload".as_ref(),
        stale.as_os_str(),
        "s3://fruits/out/".as_ref(),
    ];
    s3.tool(args);

    let refused = Verger::run("s3://fruits/in/", "s3://fruits/out/")
        .envs(&s3.env())
        .args(["--k", "2"])
        .exec()
        .assert_failure();
    assert!(refused.combined().contains("--overwrite"), "{refused:?}");

    let o = Verger::run("s3://fruits/in/", "s3://fruits/out/")
        .envs(&s3.env())
        .args(["--k", "2", "--overwrite"])
        .exec()
        .assert_success();
    let keys: Vec<String> = s3.tool(["ls", "s3://fruits/out/"])["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert!(
        keys.contains(&"out/stale.txt".to_string()),
        "--overwrite deleted stale.txt, which verger did not write: {keys:?}"
    );
    assert!(o.stderr.contains("stale.txt"), "it is named: {o:?}");
    assert!(
        !keys.contains(&"out/features/old.parquet".to_string()),
        "old.parquet survived: {keys:?}"
    );
    assert!(keys.contains(&"out/_SUCCESS".to_string()), "{keys:?}");
    let dl = tmp.path().join("dl");
    s3.tool([
        "download".as_ref(),
        "s3://fruits/out/".as_ref(),
        dl.as_os_str(),
    ]);
    let run = RunDir::read(&dl);
    assert_eq!(run.features.len(), copied.len(), "{o:?}");
    assert_eq!(run.counts(), (copied.len() as u64, copied.len() as u64, 0));
}

/// Deleting many objects goes out in bulk-delete requests, never one request
/// per object; and a bucket root is never an output.
#[test]
fn s3_deletes_go_in_bulk_and_a_bucket_root_is_refused() {
    use crate::support::fault_proxy::{FaultPlan, FaultProxy};
    let s3 = SeaweedFs::start();
    s3.tool(["mb", "fruits"]);
    let tmp = tempdir();
    let local = tmp.path().join("in");
    let images = crate::support::copy_sample_subset(&local, "Test", &["Kiwi", "Lemon"], 6);
    s3.tool([
        "upload".as_ref(),
        local.as_os_str(),
        "s3://fruits/few/".as_ref(),
    ]);
    let proxy = FaultProxy::start(s3.s3_port, FaultPlan::pass_through());
    let mut env = s3.env();
    env.push(("AWS_ENDPOINT_URL".into(), proxy.endpoint()));
    // One checkpoint per image: the commit removes `_staging/` and its
    // dozen files at the end of the run.
    Verger::run("s3://fruits/few/", "s3://fruits/bulk/")
        .args(["--checkpoint-every", "1", "--k", "2"])
        .envs(&env)
        .exec()
        .assert_success();
    let (deletes, _) = proxy.matching("DELETE", "");
    let (bulk, _) = proxy.matching("POST", "delete");
    assert!(
        bulk + deletes < images.len(),
        "{} checkpoints removed with {bulk} bulk and {deletes} single requests",
        images.len()
    );
    let listed = s3.tool(["ls", "s3://fruits/bulk/"]).to_string();
    assert!(!listed.contains("_staging"), "{listed}");

    let o = Verger::run(&local, "s3://fruits")
        .envs(&s3.env())
        .exec()
        .assert_failure();
    assert!(o.stderr.contains("whole bucket"), "{o:?}");
    let o = Verger::run("s3://fruits/few/", "s3://fruits/few/results/")
        .envs(&s3.env())
        .exec()
        .assert_failure();
    assert!(o.stderr.contains("overlap"), "{o:?}");
}
