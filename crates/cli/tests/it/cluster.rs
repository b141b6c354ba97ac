//! The same job on a Ballista cluster: a scheduler and two executors, real
//! processes on loopback, against a real S3 server (SeaweedFS). The result
//! must equal the embedded run's, both executors must featurize, each loads
//! the model once, and losing an executor mid-job loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sample::sample_run;
use crate::support::ballista::TestCluster;
use crate::support::seaweed::{SeaweedFs, free_ports};
use crate::support::{
    RunDir, Verger, dataset_dir, dataset_images, max_abs_diff, python_json, tempdir,
};

const SLICES: &str = "8";

fn download(s3: &SeaweedFs, prefix: &str, to: &Path) -> RunDir {
    s3.tool(["download".as_ref(), prefix.as_ref(), to.as_os_str()]);
    assert!(
        to.join("_SUCCESS").is_file(),
        "_SUCCESS missing in {prefix}"
    );
    RunDir::read(to)
}

/// Same rows as the embedded run of the sample: same paths (under the S3
/// prefix) and labels, features within 1e-5, no duplicates; same PCA within
/// 1e-6 up to sign.
fn assert_same_as_embedded(run: &RunDir, prefix: &str) {
    let embedded = &sample_run().run;
    let base = dataset_dir();
    let images = dataset_images();
    let paths: Vec<&str> = run.features.iter().map(|r| r.path.as_str()).collect();
    let unique: BTreeSet<&str> = paths.iter().copied().collect();
    assert_eq!(unique.len(), paths.len(), "duplicated rows in features/");
    let want: BTreeSet<String> = images
        .iter()
        .map(|p| {
            format!(
                "{prefix}{}",
                p.strip_prefix(&base).unwrap().to_str().unwrap()
            )
        })
        .collect();
    let got: BTreeSet<String> = unique.iter().map(|p| p.to_string()).collect();
    assert_eq!(got, want, "cluster rows differ from the input");
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    let mut worst = 0f32;
    for row in &run.features {
        let local = base.join(row.path.strip_prefix(prefix).unwrap());
        let e = embedded
            .feature(local.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} missing from the embedded run", row.path));
        assert_eq!(row.label, e.label, "{}", row.path);
        let d = max_abs_diff(&row.features, &e.features);
        assert!(d <= 1e-5, "features differ by {d} for {}", row.path);
        worst = worst.max(d);
    }
    eprintln!("cluster vs embedded: worst feature max-abs-diff {worst:e}");

    let (a, b) = (&run.pca_model, &embedded.pca_model);
    let numbers = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for key in ["explained_variance", "eigenvalues"] {
        let (x, y) = (numbers(&a[key]), numbers(&b[key]));
        assert_eq!(x.len(), y.len(), "{key}");
        for (x, y) in x.iter().zip(&y) {
            // Relative for eigenvalues (they are large), absolute for ratios.
            let scale = y.abs().max(1.0);
            assert!((x - y).abs() <= 1e-6 * scale, "{key}: {x} vs {y}");
        }
    }
    let components = |v: &Value| -> Vec<Vec<f64>> {
        v["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(numbers)
            .collect()
    };
    for (i, (x, y)) in components(a).iter().zip(&components(b)).enumerate() {
        let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        let sign = dot.signum();
        let d = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - sign * q).abs())
            .fold(0.0, f64::max);
        assert!(d <= 1e-6, "component {i} differs by {d} (up to sign)");
    }
    // The pca column follows the same model.
    let mut worst_pca = 0f64;
    for row in &run.features {
        let local = base.join(row.path.strip_prefix(prefix).unwrap());
        let e = embedded.feature(local.to_str().unwrap()).unwrap();
        for (x, y) in row.pca.iter().zip(&e.pca) {
            worst_pca = worst_pca.max((x.abs() - y.abs()).abs());
        }
    }
    assert!(worst_pca <= 1e-4, "pca column differs by {worst_pca}");
}

/// Successful featurize tasks per executor, from the scheduler's event log
/// (one file per job: `{"ev": "JobStart"|"TaskEnd"|"JobEnd", "data": {...}}`).
fn featurize_tasks_by_executor(cluster: &TestCluster) -> BTreeMap<String, usize> {
    let jobs = cluster.job_events();
    let is_featurize = |events: &&Vec<Value>| {
        events.iter().any(|e| {
            e["ev"] == "JobStart"
                && e["data"]["job_name"]
                    .as_str()
                    .is_some_and(|n| n.contains(" featurize → "))
        })
    };
    let featurize: Vec<&Vec<Value>> = jobs.iter().filter(is_featurize).collect();
    assert_eq!(featurize.len(), 1, "one featurize job expected: {jobs:#?}");
    let mut tasks = BTreeMap::new();
    for e in featurize[0].iter().filter(|e| e["ev"] == "TaskEnd") {
        if e["data"]["status"] == "Successful" {
            let executor = e["data"]["executor_id"].as_str().unwrap_or("?").to_string();
            *tasks.entry(executor).or_insert(0) += 1;
        }
    }
    tasks
}

fn model_loads_logged(log: &str) -> usize {
    log.lines().filter(|l| l.contains("model loaded")).count()
}

#[test]
fn cluster_run_equals_embedded_spreads_work_and_loads_the_model_once() {
    let s3 = SeaweedFs::with_sample();
    let cluster = TestCluster::start(&["exec-a", "exec-b"], &s3.env(), 30);
    let o = Verger::run_without_model("s3://fruits/images/", "s3://fruits/cluster/")
        .args(["--cluster", &cluster.url(), "--partitions", SLICES])
        .envs(&s3.env())
        .exec();
    if !o.status.success() {
        panic!("cluster run failed: {o:?}\n{}", cluster.all_logs());
    }
    let n = dataset_images().len();
    o.assert_summary(n, n, 0);

    let tmp = tempdir();
    let run = download(&s3, "s3://fruits/cluster/", &tmp.path().join("out"));
    assert_eq!(run.counts(), (n as u64, n as u64, 0));
    assert_same_as_embedded(&run, "s3://fruits/images/");

    // Work spread: both executors ran featurize tasks, per the scheduler's
    // task records and per the run's own summary.
    let by_executor = featurize_tasks_by_executor(&cluster);
    eprintln!("featurize tasks per executor (event log): {by_executor:?}");
    assert_eq!(
        by_executor.keys().cloned().collect::<Vec<_>>(),
        ["exec-a", "exec-b"],
        "both executors must featurize"
    );
    assert_eq!(by_executor.values().sum::<usize>(), 8, "one task per slice");
    let workers = &run.run_json["cluster"]["workers"];
    for id in ["exec-a", "exec-b"] {
        let w = &workers[id];
        assert!(
            w["images"].as_u64().unwrap() > 0,
            "{id} featurized nothing: {workers}"
        );
        // Several tasks, one model load.
        assert!(w["featurize_tasks"].as_u64().unwrap() >= 1, "{workers}");
        assert_eq!(w["model_loads"].as_u64(), Some(1), "{id}: {workers}");
        assert_eq!(model_loads_logged(&cluster.log(id)), 1, "{id} log");
    }
    assert_eq!(run.run_json["cluster"]["slices"].as_u64(), Some(8));
    // The client plans only: it never loads the model (featurize would fail
    // there rather than run on the client).
    assert!(!o.stderr.contains("model loaded"), "{o:?}");
    // The secret never reaches a plan, a log or the output.
    assert!(!cluster.all_logs().contains(&s3.secret_key));
    assert!(!o.combined().contains(&s3.secret_key));
}

#[test]
fn cluster_survives_an_executor_killed_mid_featurize() {
    let s3 = SeaweedFs::with_sample();
    let mut cluster = TestCluster::start(&["exec-a", "exec-b"], &s3.env(), 6);
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let run = Verger::run_without_model("s3://fruits/images/", "s3://fruits/killed/")
        .args(["--cluster", &cluster.url(), "--partitions", SLICES])
        .envs(&s3.env());
    let handle = std::thread::spawn(move || run.exec());

    // Kill exec-a once it is featurizing.
    let started = Instant::now();
    while !cluster.log("exec-a").contains("featurizing slice") {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "exec-a never started a featurize task\n{}",
            cluster.all_logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill_executor("exec-a");
    eprintln!("killed exec-a after {:.1?}", started.elapsed());
    let listed = s3.tool(["ls", "s3://fruits/killed/"]);
    assert!(
        !listed.to_string().contains("_SUCCESS"),
        "_SUCCESS on a partial output: {listed}"
    );

    let o = handle.join().unwrap();
    if !o.status.success() {
        panic!(
            "run after executor loss failed: {o:?}\n{}",
            cluster.all_logs()
        );
    }
    let n = dataset_images().len();
    o.assert_summary(n, n, 0);
    let run = download(&s3, "s3://fruits/killed/", &out);
    assert_eq!(run.counts(), (n as u64, n as u64, 0));
    assert_same_as_embedded(&run, "s3://fruits/images/");
    // The survivor finished the job: every slice's summary came from it
    // (a dead executor cannot serve results), each slice exactly once.
    let workers = &run.run_json["cluster"]["workers"];
    let names: Vec<&String> = workers.as_object().unwrap().keys().collect();
    assert_eq!(names, ["exec-b"], "{workers}");
    assert_eq!(
        workers["exec-b"]["featurize_tasks"].as_u64(),
        Some(8),
        "{workers}"
    );
    assert_eq!(
        workers["exec-b"]["images"].as_u64(),
        Some(n as u64),
        "{workers}"
    );
    assert_eq!(
        workers["exec-b"]["model_loads"].as_u64(),
        Some(1),
        "{workers}"
    );
    let by_executor = featurize_tasks_by_executor(&cluster);
    eprintln!("featurize tasks per executor (event log) after the kill: {by_executor:?}");
    assert!(
        by_executor.get("exec-b").is_some_and(|&t| t >= 8),
        "{by_executor:?}"
    );
}

#[test]
fn unreachable_scheduler_fails_with_a_clear_error() {
    let port = free_ports(1)[0];
    let tmp = tempdir();
    let out = tmp.path().join("out");
    let o = Verger::run_without_model(dataset_dir(), &out)
        .args(["--cluster", &format!("df://127.0.0.1:{port}")])
        .exec()
        .assert_failure();
    assert!(
        o.stderr.contains("cannot reach the Ballista scheduler")
            && o.stderr.contains(&format!("df://127.0.0.1:{port}")),
        "{o:?}"
    );
    assert!(!out.join("_SUCCESS").exists());
}

/// Every `run` flag either travels to the executors or is refused by name.
#[test]
fn executor_settings_are_refused_with_cluster_by_name() {
    let tmp = tempdir();
    let o = Verger::run_without_model(dataset_dir(), tmp.path().join("out"))
        .args(["--cluster", "df://127.0.0.1:9", "--threads", "2"])
        .args(["--engine", "tract"])
        .exec()
        .assert_failure();
    assert!(
        o.stderr
            .contains("--engine, --threads cannot go with --cluster"),
        "{o:?}"
    );
}

type Inventory = BTreeSet<(String, u64, i64, Option<String>)>;

fn inventory(dir: &Path) -> Inventory {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, UInt64Type};
    let mut rows = BTreeSet::new();
    for b in crate::support::output::read_batches(&dir.join("inventory")) {
        let paths = b.column_by_name("path").unwrap().as_string::<i32>();
        let sizes = b
            .column_by_name("size")
            .unwrap()
            .as_primitive::<UInt64Type>();
        let times = b
            .column_by_name("last_modified_ms")
            .unwrap()
            .as_primitive::<Int64Type>();
        let tags = b.column_by_name("e_tag").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            rows.insert((
                paths.value(i).to_string(),
                sizes.value(i),
                times.value(i),
                tags.is_valid(i).then(|| tags.value(i).to_string()),
            ));
        }
    }
    rows
}

/// The field names of a JSON tree, as `a.b.c` paths.
fn field_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(object) = value.as_object() {
        for (key, child) in object {
            let path = format!("{prefix}{key}");
            out.insert(path.clone());
            // Per-executor entries differ in name by design.
            if key != "workers" {
                field_paths(child, &format!("{path}."), out);
            }
        }
    }
}

/// The same output, embedded or on a cluster: rows, failures with their
/// kinds, inventory, PCA (up to sign) and the fields of run.json.
fn assert_same_output(clustered: &RunDir, embedded: &RunDir) {
    assert_eq!(clustered.counts(), embedded.counts());
    let errors = |run: &RunDir| -> BTreeSet<(String, String, String, String, String)> {
        run.errors
            .iter()
            .map(|e| {
                let e = e.clone();
                (e.path, e.label, e.stage, e.kind, e.reason)
            })
            .collect()
    };
    assert_eq!(errors(clustered), errors(embedded), "errors/ rows");
    let features = |run: &RunDir| -> BTreeSet<(String, String)> {
        run.features
            .iter()
            .map(|r| (r.path.clone(), r.label.clone()))
            .collect()
    };
    assert_eq!(features(clustered), features(embedded), "features/ rows");
    assert_eq!(
        features(clustered).len(),
        clustered.features.len(),
        "no duplicate rows"
    );
    for row in &clustered.features {
        let e = embedded.feature(&row.path).unwrap();
        assert!(
            max_abs_diff(&row.features, &e.features) <= 1e-5,
            "{}",
            row.path
        );
        for (x, y) in row.pca.iter().zip(&e.pca) {
            assert!((x.abs() - y.abs()).abs() <= 1e-4, "pca of {}", row.path);
        }
    }
    assert_eq!(
        inventory(&clustered.root),
        inventory(&embedded.root),
        "inventory/ rows"
    );
    for key in ["explained_variance", "eigenvalues"] {
        let (a, b) = (&clustered.pca_model[key], &embedded.pca_model[key]);
        for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                "{key}: {x} vs {y}"
            );
        }
    }
    assert_eq!(
        clustered.run_json["failures"], embedded.run_json["failures"],
        "failures by kind"
    );
    let (mut a, mut b) = (BTreeSet::new(), BTreeSet::new());
    field_paths(&clustered.run_json, "", &mut a);
    field_paths(&embedded.run_json, "", &mut b);
    a.remove("cluster.scheduler");
    a.remove("cluster.slices");
    a.remove("cluster.workers");
    assert_eq!(
        a, b,
        "run.json of a cluster run has the embedded run's fields"
    );
    assert!(clustered.run_json["cluster"].is_object() && embedded.run_json["cluster"].is_null());
}

/// Bad inputs, a pixel limit and tiny checkpoints: every flag reaches the
/// executors, failures are staged and typed like an embedded run's, and an
/// `--incremental` update on the cluster equals a fresh run of the new input.
#[test]
fn cluster_run_matches_embedded_with_bad_inputs_flags_and_incremental() {
    let tmp = tempdir();
    let base = tmp.path().canonicalize().unwrap();
    let root = base.join("Mixed Bag");
    python_json(
        "make_bad_inputs.py",
        [
            "mixed".as_ref(),
            root.as_os_str(),
            dataset_dir().as_os_str(),
        ],
    );
    let flags = [
        "--glob",
        "*.{jpg,png}",
        "--k",
        "3",
        "--max-pixels",
        "1000000",
        "--checkpoint-every",
        "2",
    ];
    let embedded_out = base.join("embedded");
    Verger::run(&root, &embedded_out)
        .args(flags)
        .exec()
        .assert_success();
    let cluster = TestCluster::start(&["exec-a", "exec-b"], &[], 30);
    let on_cluster = |out: &Path| {
        Verger::run_without_model(&root, out).args(flags).args([
            "--cluster",
            &cluster.url(),
            "--partitions",
            "4",
        ])
    };
    let cluster_out = base.join("cluster");
    let o = on_cluster(&cluster_out).exec();
    if !o.status.success() {
        panic!("cluster run failed: {o:?}\n{}", cluster.all_logs());
    }
    let (embedded, clustered) = (RunDir::read(&embedded_out), RunDir::read(&cluster_out));
    assert!(
        !clustered.errors.is_empty(),
        "the mixed tree has broken files"
    );
    let big = root.join("odd/big.jpg");
    let big = clustered
        .errors
        .iter()
        .find(|e| Path::new(&e.path) == big)
        .expect("--max-pixels 1000000 reached the executors: the 1.2 MP image is refused");
    assert_eq!(big.kind, "too_large");
    assert_same_output(&clustered, &embedded);

    // --max-errors travels too: the run stops before committing anything.
    let o = on_cluster(&base.join("strict"))
        .args(["--max-errors", "0"])
        .exec()
        .assert_failure();
    assert!(o.stderr.contains("--max-errors 0"), "{o:?}");
    assert!(!base.join("strict/_SUCCESS").exists());

    // New, changed and deleted files, then --incremental on the cluster.
    std::fs::remove_file(
        root.join("Kiwi")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    let lemon = root
        .join("Lemon")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(root.join("root level.jpg"), &lemon).unwrap();
    std::fs::copy(root.join("root level.jpg"), root.join("Banana/new one.jpg")).unwrap();
    let o = on_cluster(&cluster_out).arg("--incremental").exec();
    if !o.status.success() {
        panic!(
            "incremental cluster run failed: {o:?}\n{}",
            cluster.all_logs()
        );
    }
    let fresh_out = base.join("fresh");
    Verger::run(&root, &fresh_out)
        .args(flags)
        .exec()
        .assert_success();
    let (updated, fresh) = (RunDir::read(&cluster_out), RunDir::read(&fresh_out));
    assert_eq!(updated.run_json["counts"]["removed"].as_u64(), Some(1));
    assert_eq!(
        updated.run_json["counts"]["unchanged"].as_u64(),
        Some(fresh.counts().0 - 2),
        "only the new and the changed file were featurized again"
    );
    assert_same_output(&updated, &fresh);
}

/// An executor holding another model is refused, and both models are named.
#[test]
fn a_cluster_whose_executor_holds_another_model_is_refused() {
    let tmp = tempdir();
    // The same network with one more (unknown, ignored) protobuf field: a
    // valid model whose sha256 differs.
    let other = tmp.path().join("other.onnx");
    let mut bytes = std::fs::read(crate::support::model_path()).unwrap();
    bytes.extend_from_slice(&[0xC2, 0x3E, 0x01, b'x']);
    std::fs::write(&other, &bytes).unwrap();
    let cluster = TestCluster::start_with_model(&["exec-odd"], &[], 30, &other);
    let input = tmp.path().join("in");
    crate::support::copy_sample_subset(&input, "Test", &["Banana", "Kiwi"], 2);
    let out = tmp.path().join("out");
    let o = Verger::run_without_model(&input, &out)
        .args(["--cluster", &cluster.url(), "--partitions", "2"])
        .exec()
        .assert_failure();
    let client = &crate::support::sha256_file(&crate::support::model_path())[..12];
    let executor = &crate::support::sha256_file(&other)[..12];
    assert!(
        o.stderr.contains(client) && o.stderr.contains(executor),
        "both models named: {o:?}"
    );
    assert!(!out.join("_SUCCESS").exists());
}

#[test]
fn a_killed_cluster_run_resumes_without_duplicating_rows() {
    let s3 = SeaweedFs::with_sample();
    let mut cluster = TestCluster::start(&["exec-a", "exec-b"], &s3.env(), 6);
    let checkpoints = || {
        s3.tool(["ls", "s3://fruits/resumable/_staging/features/"])
            .to_string()
            .matches(".parquet")
            .count()
    };
    let run = || {
        Verger::run_without_model("s3://fruits/images/", "s3://fruits/resumable/")
            .args(["--cluster", &cluster.url(), "--partitions", SLICES])
            .args(["--checkpoint-every", "32"])
            .envs(&s3.env())
    };
    // The client dies once some checkpoints exist; its job may go on running.
    let mut client = run().spawn();
    let started = Instant::now();
    while checkpoints() < 6 {
        assert!(
            !client.finished(),
            "the run ended too soon: {}",
            client.stderr()
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint was written"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    client.kill();
    // And an executor is lost while the resumed job runs.
    let resumed = run().arg("--resume").spawn();
    while !cluster.log("exec-a").contains("featurizing slice") {
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill_executor("exec-a");
    let o = resumed.wait();
    if !o.status.success() {
        panic!("resumed cluster run failed: {o:?}\n{}", cluster.all_logs());
    }
    let n = dataset_images().len();
    o.assert_summary(n, n, 0);
    let tmp = tempdir();
    let run = download(&s3, "s3://fruits/resumable/", &tmp.path().join("out"));
    assert!(
        run.run_json["counts"]["resumed"].as_u64().unwrap() > 0,
        "{}",
        run.run_json
    );
    assert_same_as_embedded(&run, "s3://fruits/images/");
    assert!(
        !tmp.path().join("out/_staging").exists(),
        "staging left behind"
    );
}
