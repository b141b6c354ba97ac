//! `verger bench`: the pipeline against the bare model, measured in one run.
//!
//! The machine is shared and CPUs differ, so the headline is a ratio taken in
//! one go: end-to-end images/s of a real `verger run` (a child process, so its
//! peak RSS is its own) over the *model-only ceiling* (batched inference on
//! tensors prepared beforehand, same engine, same threads split into the same
//! sessions, same inference batch size).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use verger_model::{EngineChoice, EngineConfig, INPUT_LEN, ModelFile, Precision, SharedModel};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The images to repeat (the shared sample by default).
    pub dataset: PathBuf,
    /// Sizes to run, e.g. `[2000, 20000]` to show memory stays flat.
    pub image_counts: Vec<usize>,
    pub engines: Vec<EngineChoice>,
    /// Which weights to measure, e.g. `[Fp32, Int8]`.
    pub precisions: Vec<Precision>,
    /// The sample's own images, or phone-sized JPEGs made from them.
    pub photos: Photos,
    /// Also run the Python peer (`peer/pillow_draft.py`) on the same images.
    pub peer: bool,
    pub batch_size: usize,
    pub threads: usize,
    pub model: Option<PathBuf>,
    pub ort_library: Option<PathBuf>,
    /// Where the repeated inputs and outputs go (a temporary folder by default).
    pub work_dir: Option<PathBuf>,
    /// Batches of `batch_size` images timed for the ceiling (before and
    /// after the runs), inferred in calls of [`BenchConfig::inference_batch`].
    pub ceiling_batches: usize,
    /// Where to run: 0 = embedded, N = a local Ballista scheduler with N
    /// executors sharing this machine (e.g. `[0, 1, 2]`).
    pub cluster_executors: Vec<usize>,
    /// Runs of every row, in rounds; each row keeps its fastest run
    /// ([`BenchRow::fold`]) and the ceiling is measured once more after
    /// every round, so both sides of a ratio are a best of several.
    pub repeat: usize,
}

impl BenchConfig {
    /// Images per inference call, as `featurize` makes them: the ceiling and
    /// the Python peer use the same, so all three run the model alike.
    pub fn inference_batch(&self) -> usize {
        self.batch_size.clamp(1, verger_model::PREFERRED_BATCH)
    }
}

/// What the benchmark feeds the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Photos {
    /// The dataset's images as they are (Fruits-360: 100×100).
    #[default]
    Sample,
    /// 4032×3024 JPEGs of about 2 MB made from them in the work folder, as
    /// a phone takes them (see [`crate::photos`]).
    Large,
}

impl std::str::FromStr for Photos {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sample" => Ok(Photos::Sample),
            "large" => Ok(Photos::Large),
            other => Err(format!(
                "unknown photos {other:?} (expected sample or large)"
            )),
        }
    }
}

/// Images per second of time spent in each stage; `None` when the stage was
/// not timed (a cluster run does not list ahead).
#[derive(Debug, Clone, Serialize)]
pub struct StageRates {
    pub list: Option<f64>,
    pub read: Option<f64>,
    pub decode_resize: Option<f64>,
    pub inference: Option<f64>,
    pub pca_fit: Option<f64>,
    pub write: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub engine: String,
    /// `fp32` or `int8`.
    pub precision: String,
    /// `embedded`, or `cluster-N` (scheduler + N executors).
    pub mode: String,
    pub images: usize,
    pub ceiling_images_per_s: f64,
    pub end_to_end_images_per_s: f64,
    pub ratio: f64,
    /// End to end over the fp32 ceiling of the same engine (when measured):
    /// one scale for int8 rows and the peer.
    pub ratio_to_fp32_ceiling: Option<f64>,
    pub wall_s: f64,
    /// The highest peak RSS of all the runs.
    pub peak_rss_mib: f64,
    pub stage_images_per_s: StageRates,
    pub errors: u64,
    /// Runs measured for this row; the figures above are the fastest's.
    pub runs: usize,
    /// End-to-end images/s of the slowest run: how wide the noise was.
    pub slowest_images_per_s: f64,
}

impl BenchRow {
    /// Folds another run of the same row in. A shared machine only ever
    /// slows a run down, so the fastest run is the one that says what the
    /// pipeline can do: its figures are kept, the slowest rate is kept
    /// beside them, and memory is the highest seen in any run.
    pub fn fold(self, other: BenchRow) -> BenchRow {
        let runs = self.runs + other.runs;
        let slowest = self.slowest_images_per_s.min(other.slowest_images_per_s);
        let peak_rss_mib = self.peak_rss_mib.max(other.peak_rss_mib);
        let fastest = if other.end_to_end_images_per_s > self.end_to_end_images_per_s {
            other
        } else {
            self
        };
        BenchRow {
            runs,
            slowest_images_per_s: slowest,
            peak_rss_mib,
            ..fastest
        }
    }
}

/// Runs the benchmark and returns one row per (precision, engine, size,
/// placement), then one per size for the Python peer when asked.
pub fn bench(config: &BenchConfig, verger_exe: &Path) -> Result<Vec<BenchRow>> {
    if config.model.is_some() && config.precisions.len() > 1 {
        bail!("--model names one file: measure one --precision with it, or drop --model");
    }
    let work = match &config.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::Builder::new()
                .prefix("verger-bench-")
                .tempdir_in(dir)?
        }
        None => tempfile::Builder::new().prefix("verger-bench-").tempdir()?,
    };
    let images = BenchImages::prepare(config, work.path())?;
    let mut rows = Vec::new();
    for &precision in &config.precisions {
        let file = ModelFile::locate(config.model.as_deref(), precision)?;
        for &engine in &config.engines {
            rows.extend(bench_engine(config, verger_exe, &file, engine, &images)?);
        }
    }
    if config.peer {
        let fp32 = ModelFile::locate(config.model.as_deref(), Precision::Fp32)?;
        for &count in &config.image_counts {
            let mut best = bench_peer(config, &fp32, &images, count)?;
            for _ in 1..config.repeat.max(1) {
                best = best.fold(bench_peer(config, &fp32, &images, count)?);
            }
            rows.push(best);
        }
    }
    relate_to_fp32_ceiling(&mut rows);
    Ok(rows)
}

/// The images a benchmark repeats: the dataset's own, or phone-sized
/// JPEGs made from it (`--photos large`), and the repeated inputs.
struct BenchImages {
    dataset: PathBuf,
    sample: Vec<PathBuf>,
    work: PathBuf,
}

impl BenchImages {
    fn prepare(config: &BenchConfig, work: &Path) -> Result<Self> {
        // Absolute, so the symlinks made below resolve from any folder.
        let dataset = std::fs::canonicalize(&config.dataset)
            .with_context(|| format!("cannot find the dataset {}", config.dataset.display()))?;
        let (dataset, sample) = match config.photos {
            Photos::Sample => {
                let sample = sample_images(&dataset)?;
                (dataset, sample)
            }
            Photos::Large => {
                let made = work.join("large-photos");
                let most = config.image_counts.iter().copied().max().unwrap_or(0);
                let sample = make_large_photos(&dataset, &made, most.min(LARGE_DISTINCT))?;
                (made, sample)
            }
        };
        if sample.is_empty() {
            bail!("no .jpg images under {}", config.dataset.display());
        }
        Ok(BenchImages {
            dataset,
            sample,
            work: work.to_path_buf(),
        })
    }

    /// `count` images as symlinks to the sample (made once per count).
    fn input(&self, count: usize) -> Result<PathBuf> {
        let input = self.work.join(format!("input-{count}"));
        if !input.exists() {
            repeat_sample(&self.sample, &self.dataset, &input, count)?;
        }
        Ok(input)
    }
}

/// Distinct phone-sized photos made for `--photos large`: more would only
/// lengthen the set-up, since each is read from disk anew every time.
const LARGE_DISTINCT: usize = 48;

/// `count` 4032×3024 JPEGs (about 2 MB each, see [`crate::photos`]) made
/// from the dataset's images into `target/<label>/`, on every core.
fn make_large_photos(dataset: &Path, target: &Path, count: usize) -> Result<Vec<PathBuf>> {
    let split = ["Test", "Validation"]
        .iter()
        .map(|s| dataset.join(s))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| dataset.to_path_buf());
    let sources = crate::photos::pick_images(&split, count)?;
    eprintln!(
        "bench: making {} phone-sized JPEGs ({}x{}) from {}…",
        sources.len(),
        crate::photos::PHONE.0,
        crate::photos::PHONE.1,
        split.display()
    );
    let chunk = sources.len().div_ceil(cores()).max(1);
    let made: Vec<Result<Vec<PathBuf>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, source)| {
                            write_large_photo(source, target, (c * chunk + i) as u64)
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a photo maker panicked")))
            })
            .collect()
    });
    let mut photos = Vec::new();
    for part in made {
        photos.extend(part?);
    }
    photos.sort();
    Ok(photos)
}

fn write_large_photo(source: &Path, target: &Path, seed: u64) -> Result<PathBuf> {
    let label = source
        .parent()
        .and_then(Path::file_name)
        .context("a sample image sits in a label folder")?;
    let path = target.join(label).join(format!("phone-{seed:03}.jpg"));
    std::fs::create_dir_all(target.join(label))?;
    std::fs::write(
        &path,
        crate::photos::phone_jpeg(source, crate::photos::PHONE, seed)?,
    )
    .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The rows of one (precision, engine): its model-only ceiling, then a real
/// `verger run` per size and placement.
fn bench_engine(
    config: &BenchConfig,
    verger_exe: &Path,
    file: &ModelFile,
    engine: EngineChoice,
    images: &BenchImages,
) -> Result<Vec<BenchRow>> {
    let inference_batch = config.inference_batch();
    let engine_config = EngineConfig {
        choice: engine,
        threads: config.threads,
        // The layout an embedded `verger run` chooses: one session per
        // partition, and a run has one partition per core.
        sessions: verger_model::sessions_for(config.threads, cores()),
        ort_library: config.ort_library.clone(),
        batch_size: inference_batch,
    };
    let model = SharedModel::load(file.clone(), &engine_config)?;
    let name = format!("{} {}", model.engine_name(), file.precision);
    // As many images as `ceiling_batches` of `--batch-size`, in the calls
    // the pipeline makes.
    let calls = (config.ceiling_batches * config.batch_size).div_ceil(inference_batch);
    let ceiling = || model_ceiling(&model, &images.sample, inference_batch, calls);
    let mut best_ceiling = ceiling()?;
    eprintln!(
        "bench: {name} model-only ceiling {best_ceiling:.1} images/s (batch {inference_batch}, {} threads in {} sessions)",
        config.threads,
        model.sessions()
    );
    let repeat = config.repeat.max(1);
    let placements: Vec<(usize, usize)> = config
        .image_counts
        .iter()
        .flat_map(|&count| config.cluster_executors.iter().map(move |&e| (count, e)))
        .collect();
    // One slot per placement; each round folds its run in.
    let mut best: Vec<Option<BenchRow>> = vec![None; placements.len()];
    for round in 1..=repeat {
        for (slot, &(count, executors)) in best.iter_mut().zip(&placements) {
            let mode = match executors {
                0 => "embedded".to_string(),
                n => format!("cluster-{n}"),
            };
            let input = images.input(count)?;
            let output = images.work.join(format!(
                "output-{}-{}-{count}-{mode}",
                model.engine_name(),
                file.precision
            ));
            let target = Target {
                quiet: false,
                engine,
                model: file,
                input: &input,
                output: &output,
            };
            let measured = measure_run(verger_exe, config, &target, executors, &images.work)?;
            let row = to_row(&model, &mode, count, best_ceiling, &measured)?;
            eprintln!(
                "bench: {name} {mode} {count} images (run {round} of {repeat}): {:.1} images/s end to end, peak RSS {:.0} MiB",
                row.end_to_end_images_per_s, row.peak_rss_mib
            );
            std::fs::remove_dir_all(&output).ok();
            *slot = Some(match slot.take() {
                Some(earlier) => earlier.fold(row),
                None => row,
            });
        }
        // The machine is shared: measure the ceiling again after every
        // round and keep the highest figure, so a slow moment never
        // flatters the ratio.
        let again = ceiling()?;
        eprintln!("bench: {name} model-only ceiling again {again:.1} images/s");
        best_ceiling = best_ceiling.max(again);
    }
    let mut rows: Vec<BenchRow> = best.into_iter().flatten().collect();
    for row in &mut rows {
        row.ceiling_images_per_s = best_ceiling;
        row.ratio = row.end_to_end_images_per_s / best_ceiling;
    }
    Ok(rows)
}

/// One `verger run`, embedded or on a local cluster of `executors`.
fn measure_run(
    verger_exe: &Path,
    config: &BenchConfig,
    target: &Target,
    executors: usize,
    work: &Path,
) -> Result<ChildRun> {
    if executors == 0 {
        return run_child(verger_exe, config, target, &[]);
    }
    let cluster = LocalCluster::start(verger_exe, config, target, executors, work)?;
    // Four slices per executor task slot keep every slot busy.
    let slices = (executors * 2 * 4).to_string();
    let mut measured = run_child(
        verger_exe,
        config,
        target,
        &["--cluster", &cluster.url(), "--partitions", &slices],
    )?;
    measured.peak_rss_kib = cluster.stop();
    Ok(measured)
}

/// The Python peer (`peer/pillow_draft.py`) on the same `count` images, with
/// the fp32 model, the same threads, and inference calls of the same size.
fn bench_peer(
    config: &BenchConfig,
    fp32: &ModelFile,
    images: &BenchImages,
    count: usize,
) -> Result<BenchRow> {
    let input = images.input(count)?;
    let script = images.work.join("pillow_draft.py");
    std::fs::write(&script, include_str!("../peer/pillow_draft.py"))?;
    let mut paths = Vec::new();
    collect_jpgs(&input, &mut paths)?;
    paths.sort();
    let list = images.work.join(format!("peer-{count}.txt"));
    let lines: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    std::fs::write(&list, lines.join("\n"))?;
    let python = peer_python();
    let started = Instant::now();
    let mut child = std::process::Command::new(&python)
        .arg(&script)
        .arg(&fp32.path)
        .arg(config.threads.to_string())
        .arg(config.inference_batch().to_string())
        .arg(&list)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start the Python peer with {}", python.display()))?;
    let pid = child.id();
    // Its one JSON line is read on another thread while this one samples
    // its memory until it exits.
    let pipe = child.stdout.take().context("the peer's stdout is piped")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::io::BufReader::new(pipe), &mut out).map(|_| out)
    });
    let (status, peak_rss_kib) = wait_with_peak_rss(pid)?;
    let out = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the thread reading the peer's output panicked"))??;
    let wall_s = started.elapsed().as_secs_f64();
    if status != 0 {
        bail!(
            "the Python peer failed (wait status {status}); it needs onnxruntime, numpy and pillow ({})",
            python.display()
        );
    }
    let peer: PeerResult = serde_json::from_str(out.trim())
        .with_context(|| format!("the Python peer printed {out:?}, not its JSON line"))?;
    let n = peer.images as f64;
    Ok(BenchRow {
        engine: "python: Pillow draft + onnxruntime".into(),
        precision: "fp32".into(),
        mode: "peer".into(),
        images: peer.images,
        ceiling_images_per_s: f64::NAN,
        end_to_end_images_per_s: n / wall_s,
        ratio: f64::NAN,
        ratio_to_fp32_ceiling: None,
        wall_s,
        peak_rss_mib: peak_rss_kib as f64 / 1024.0,
        stage_images_per_s: StageRates {
            list: None,
            read: None,
            decode_resize: (peer.decode_s > 0.0).then(|| n / peer.decode_s),
            inference: (peer.inference_s > 0.0).then(|| n / peer.inference_s),
            pca_fit: None,
            write: None,
        },
        errors: 0,
        runs: 1,
        slowest_images_per_s: n / wall_s,
    })
}

#[derive(serde::Deserialize)]
struct PeerResult {
    images: usize,
    decode_s: f64,
    inference_s: f64,
}

/// `.venv/bin/python` of the project (found upwards from here), else
/// `python3`; `VERGER_PYTHON` overrides.
fn peer_python() -> PathBuf {
    if let Some(python) = std::env::var_os("VERGER_PYTHON") {
        return PathBuf::from(python);
    }
    std::env::current_dir()
        .ok()
        .and_then(|dir| {
            dir.ancestors()
                .map(|d| d.join(".venv/bin/python"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn collect_jpgs(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_jpgs(&path, found)?;
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("jpg"))
        {
            found.push(path);
        }
    }
    Ok(())
}

/// Every row against the fp32 ceiling of its engine (the peer against
/// onnxruntime's), so int8 and the peer read on one scale.
fn relate_to_fp32_ceiling(rows: &mut [BenchRow]) {
    let fp32_ceiling = |engine: &str| {
        rows.iter()
            .find(|r| r.precision == "fp32" && r.mode != "peer" && r.engine == engine)
            .map(|r| r.ceiling_images_per_s)
    };
    let ceilings: Vec<Option<f64>> = rows
        .iter()
        .map(|r| {
            let engine = if r.mode == "peer" {
                "onnxruntime"
            } else {
                r.engine.as_str()
            };
            fp32_ceiling(engine)
        })
        .collect();
    for (row, ceiling) in rows.iter_mut().zip(ceilings) {
        row.ratio_to_fp32_ceiling = ceiling.map(|c| row.end_to_end_images_per_s / c);
        if let Some(c) = ceiling.filter(|_| row.mode == "peer") {
            row.ceiling_images_per_s = c;
            row.ratio = row.end_to_end_images_per_s / c;
        }
    }
}

fn sample_images(dataset: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dataset.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg"))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// `count` inputs as symlinks to the sample, keeping each image's label folder.
fn repeat_sample(sample: &[PathBuf], dataset: &Path, target: &Path, count: usize) -> Result<()> {
    for i in 0..count {
        let source = &sample[i % sample.len()];
        let relative = source.strip_prefix(dataset).unwrap_or(source);
        let copy = target
            .join(format!("rep{:04}", i / sample.len()))
            .join(relative);
        std::fs::create_dir_all(copy.parent().expect("has a parent"))?;
        std::os::unix::fs::symlink(source, &copy)
            .with_context(|| format!("cannot link {}", copy.display()))?;
    }
    Ok(())
}

/// Batched inference on prepared tensors: what the engine alone can do.
fn model_ceiling(
    model: &SharedModel,
    sample: &[PathBuf],
    batch: usize,
    batches: usize,
) -> Result<f64> {
    let mut tensor = vec![0f32; batch * INPUT_LEN];
    for (i, chunk) in tensor.chunks_mut(INPUT_LEN).enumerate() {
        let bytes = std::fs::read(&sample[i % sample.len()])?;
        verger_image::preprocess_into(&bytes, &Default::default(), chunk)?;
    }
    // One caller per session, as a run's partitions call it.
    let callers = model.sessions();
    let calls = |count: usize| -> Result<()> {
        std::thread::scope(|scope| {
            let running: Vec<_> = (0..callers)
                .map(|caller| {
                    let tensor = &tensor;
                    // Caller `c` makes calls c, c + callers, ...: `count` in all.
                    let mine = (caller..count).step_by(callers).count();
                    scope.spawn(move || -> Result<()> {
                        for _ in 0..mine {
                            model.features(tensor, batch)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            running
                .into_iter()
                .try_for_each(|caller| caller.join().expect("a ceiling caller panicked"))
        })
    };
    calls(callers)?; // warm-up: every session once
    let started = Instant::now();
    calls(batches.max(1))?;
    Ok((batches.max(1) * batch) as f64 / started.elapsed().as_secs_f64())
}

/// Cores as `verger run` counts them for its default partitions.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

struct ChildRun {
    wall_s: f64,
    peak_rss_kib: i64,
    record: verger_output::RunRecord,
}

/// What one measured run works on.
struct Target<'a> {
    quiet: bool,
    engine: EngineChoice,
    model: &'a ModelFile,
    input: &'a Path,
    output: &'a Path,
}

fn engine_flag(engine: EngineChoice) -> &'static str {
    match engine {
        EngineChoice::Auto => "auto",
        EngineChoice::Ort => "ort",
        EngineChoice::Tract => "tract",
    }
}

fn run_child(
    exe: &Path,
    config: &BenchConfig,
    target: &Target,
    extra: &[&str],
) -> Result<ChildRun> {
    let mut command = std::process::Command::new(exe);
    command
        .arg("run")
        .arg("--input")
        .arg(target.input)
        .arg("--output")
        .arg(target.output)
        .args(["--progress", "off", "--engine", engine_flag(target.engine)])
        .arg("--batch-size")
        .arg(config.batch_size.to_string())
        .arg("--threads")
        .arg(config.threads.to_string())
        .arg("--model")
        .arg(&target.model.path)
        .args(["--precision", target.model.precision.as_str()])
        .args(extra);
    if !extra.contains(&"--resume") {
        command.arg("--overwrite");
    }
    if target.quiet {
        // One warning per failed object would drown the benchmark's output.
        command.env("VERGER_LOG", "error");
    }
    if let Some(lib) = &config.ort_library {
        command.arg("--ort-lib").arg(lib);
    }
    let started = Instant::now();
    let child = command.spawn().context("cannot start verger run")?;
    let (status, peak_rss_kib) = wait_with_peak_rss(child.id())?;
    let wall_s = started.elapsed().as_secs_f64();
    if status != 0 {
        bail!("verger run failed during the benchmark (wait status {status})");
    }
    let run_file = target.output.join(verger_output::RUN_FILE);
    let record = verger_output::RunRecord::decode(
        &std::fs::read(&run_file)?,
        &run_file.display().to_string(),
    )?;
    Ok(ChildRun {
        wall_s,
        peak_rss_kib,
        record,
    })
}

/// Waits for one child and returns its wait status and its own peak resident
/// set in KiB: its `VmHWM`, read every 10 ms until it exits (a high-water
/// mark, so only growth in its last 10 ms could be missed).
///
/// Not `wait4`'s `ru_maxrss`: Linux carries the maximum over `execve`, and
/// the child starts as a copy (or, with `posix_spawn`, a borrower) of this
/// process's memory, so every child would report at least this process's
/// own resident set, models and ceiling arenas included. A 200 MiB Python
/// peer showed as 290 MiB that way.
fn wait_with_peak_rss(pid: u32) -> Result<(i32, i64)> {
    let mut peak = 0;
    loop {
        let mut status = 0;
        // SAFETY: wait4 only writes into `status`; the child is ours and is
        // reaped exactly once, here (WNOHANG returns 0 while it runs).
        let waited = unsafe {
            libc::wait4(
                pid as libc::pid_t,
                &mut status,
                libc::WNOHANG,
                std::ptr::null_mut(),
            )
        };
        if waited < 0 {
            bail!(
                "waiting for a benchmark child failed: {}",
                std::io::Error::last_os_error()
            );
        }
        if waited > 0 {
            return Ok((status, peak));
        }
        if let Some(now) = peak_rss_kib(pid) {
            peak = peak.max(now);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn to_row(
    model: &SharedModel,
    mode: &str,
    images: usize,
    ceiling: f64,
    run: &ChildRun,
) -> Result<BenchRow> {
    let (timings, stages) = (&run.record.timings, &run.record.timings.stages);
    let n = images as f64;
    let rate = |seconds: f64| (seconds > 0.0).then(|| n / seconds);
    // The run's own total excludes process start; the wall time includes it.
    let end_to_end = n / run.wall_s;
    Ok(BenchRow {
        engine: model.engine_name().to_string(),
        precision: model.file().precision.to_string(),
        mode: mode.to_string(),
        images,
        ceiling_images_per_s: ceiling,
        end_to_end_images_per_s: end_to_end,
        ratio: end_to_end / ceiling,
        ratio_to_fp32_ceiling: None,
        wall_s: run.wall_s,
        peak_rss_mib: run.peak_rss_kib as f64 / 1024.0,
        stage_images_per_s: StageRates {
            list: rate(stages.list_s),
            read: rate(stages.read_s),
            decode_resize: rate(stages.decode_resize_s),
            inference: rate(stages.inference_s),
            pca_fit: rate(timings.pca_fit_s),
            write: rate(timings.project_write_s),
        },
        errors: run.record.counts.errors,
        runs: 1,
        slowest_images_per_s: end_to_end,
    })
}

/// A Markdown table of the rows, for the terminal and for notes.
pub fn table(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "| engine | precision | mode | images | ceiling img/s | end-to-end img/s | ratio | vs fp32 ceiling | runs (slowest img/s) | peak RSS MiB | list | read | decode+resize | inference | PCA fit | write |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let show = |rate: Option<f64>, decimals: usize| match rate {
        Some(rate) => format!("{rate:.decimals$}"),
        None => "–".to_string(),
    };
    for r in rows {
        let s = &r.stage_images_per_s;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1}% | {} | {} ({:.1}) | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            r.engine,
            r.precision,
            r.mode,
            r.images,
            r.ceiling_images_per_s,
            r.end_to_end_images_per_s,
            r.ratio * 100.0,
            r.ratio_to_fp32_ceiling
                .map_or("–".to_string(), |x| format!("{:.1}%", x * 100.0)),
            r.runs,
            r.slowest_images_per_s,
            r.peak_rss_mib,
            show(s.list, 0),
            show(s.read, 0),
            show(s.decode_resize, 0),
            show(s.inference, 1),
            show(s.pca_fit, 0),
            show(s.write, 0)
        ));
    }
    out
}

/// A scheduler and `executors` executors on loopback, children of this
/// process, sharing the machine: each executor gets its share of the
/// inference threads.
struct LocalCluster {
    port: u16,
    scheduler: std::process::Child,
    executors: Vec<std::process::Child>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalCluster {
    fn start(
        exe: &Path,
        config: &BenchConfig,
        target: &Target,
        executors: usize,
        work: &Path,
    ) -> Result<Self> {
        let port = free_port()?;
        let quiet = || std::process::Stdio::null();
        let scheduler = std::process::Command::new(exe)
            .args(["scheduler", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--min-executors", &executors.to_string()])
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .context("cannot start verger scheduler")?;
        let mut cluster = LocalCluster {
            port,
            scheduler,
            executors: Vec::new(),
        };
        let threads = (config.threads / executors).max(1);
        for i in 0..executors {
            let mut command = std::process::Command::new(exe);
            command
                .args(["executor", "--id", &format!("bench-{i}")])
                .args(["--scheduler", &format!("127.0.0.1:{port}")])
                .args(["--flight-port", &free_port()?.to_string()])
                .args(["--concurrent-tasks", "2"])
                .args(["--threads", &threads.to_string()])
                .args(["--engine", engine_flag(target.engine)])
                .arg("--batch-size")
                .arg(config.batch_size.to_string())
                .arg("--model")
                .arg(&target.model.path)
                .args(["--precision", target.model.precision.as_str()])
                .arg("--work-dir")
                .arg(work.join(format!("executor-{i}")))
                .stdout(quiet())
                .stderr(quiet());
            if let Some(lib) = &config.ort_library {
                command.arg("--ort-lib").arg(lib);
            }
            cluster
                .executors
                .push(command.spawn().context("cannot start verger executor")?);
        }
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn url(&self) -> String {
        format!("df://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) -> Result<()> {
        use std::io::{Read, Write};
        let started = Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(120) {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let mut response = String::new();
                let asked = stream.write_all(
                    b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                );
                if asked.is_ok()
                    && stream.read_to_string(&mut response).is_ok()
                    && response.starts_with("HTTP/1.1 200")
                {
                    return Ok(());
                }
            }
            for executor in &mut self.executors {
                if let Some(status) = executor.try_wait()? {
                    bail!("a benchmark executor exited early ({status})");
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        bail!("the benchmark cluster was not ready within 120 s")
    }

    /// Stops everything; returns the sum of the executors' peak RSS (KiB).
    fn stop(mut self) -> i64 {
        let mut peak = 0;
        for executor in &self.executors {
            peak += peak_rss_kib(executor.id()).unwrap_or(0);
        }
        for executor in &mut self.executors {
            let _ = executor.kill();
            let _ = executor.wait();
        }
        let _ = self.scheduler.kill();
        let _ = self.scheduler.wait();
        peak
    }
}

/// `VmHWM` of a live process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One size of the listing-scale benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct ListingRow {
    pub objects: usize,
    /// Of which valid images (the rest are tiny non-images: they exercise
    /// listing, reading and error accounting without the model's cost).
    pub images: usize,
    /// The count-only listing on its own.
    pub list_s: f64,
    pub wall_s: f64,
    pub peak_rss_mib: f64,
    /// A run killed half-way, then `--resume`: its peak RSS (it holds the
    /// paths already done) and how many it skipped.
    pub resume_peak_rss_mib: f64,
    pub resume_skipped: u64,
    pub error_rows: u64,
}

/// Valid images in every synthetic collection, whatever its size: two full
/// inference batches, side by side in one folder.
const TINY_VALID_IMAGES: usize = 64;

/// `objects` files: [`TINY_VALID_IMAGES`] real images under `dir/fruit/`, the
/// rest tiny non-images under `dir/label-NNN/`.
///
/// The valid images sit together so that every run (full or resumed, 10k or
/// 100k objects) fills whole inference batches. Peak memory is set by the
/// batch, not by the number of objects: ONNX Runtime's working set for 32
/// images is about 300 MiB. Spreading the valid images thinly (one in 1,000)
/// made a full run infer one image at a time, while a resumed run, whose
/// skip filter removes the done non-images between them, inferred full
/// batches, and the two peaks could not be compared.
fn tiny_collection(dir: &Path, objects: usize, image: &[u8]) -> Result<usize> {
    let images = TINY_VALID_IMAGES.min(objects);
    let fruit = dir.join("fruit");
    std::fs::create_dir_all(&fruit)?;
    for i in 0..images {
        std::fs::write(fruit.join(format!("img-{i:07}.jpg")), image)?;
    }
    for i in images..objects {
        let folder = dir.join(format!("label-{:03}", i % 100));
        if i < images + 100 {
            std::fs::create_dir_all(&folder)?;
        }
        std::fs::write(
            folder.join(format!("obj-{i:07}.jpg")),
            b"not an image: a placeholder a few bytes long",
        )?;
    }
    Ok(images)
}

/// Listing, checkpoints and error accounting at scale: a synthetic
/// collection of `counts` tiny objects, a full run and a killed-then-resumed
/// run each, with peak RSS.
pub fn bench_listing(
    counts: &[usize],
    config: &BenchConfig,
    verger_exe: &Path,
) -> Result<Vec<ListingRow>> {
    let dataset = std::fs::canonicalize(&config.dataset)
        .with_context(|| format!("cannot find the dataset {}", config.dataset.display()))?;
    let image = std::fs::read(
        sample_images(&dataset)?
            .first()
            .context("no .jpg in the dataset")?,
    )?;
    let work = tempfile::Builder::new()
        .prefix("verger-bench-listing-")
        .tempdir_in(config.work_dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let model = ModelFile::locate(config.model.as_deref(), Precision::Fp32)?;
    let mut rows = Vec::new();
    for &objects in counts {
        let input = work.path().join(format!("input-{objects}"));
        eprintln!("bench: writing {objects} tiny objects…");
        let images = tiny_collection(&input, objects, &image)?;
        let output = work.path().join(format!("output-{objects}"));
        let target = Target {
            quiet: true,
            engine: config.engines.first().copied().unwrap_or_default(),
            model: &model,
            input: &input,
            output: &output,
        };
        let full = run_child(verger_exe, config, &target, &["--k", "2"])?;
        let (list_s, error_rows) = (full.record.timings.stages.list_s, full.record.counts.errors);

        // Killed once half the checkpoints of a full run exist, then resumed.
        let resumed_output = work.path().join(format!("resumed-{objects}"));
        std::fs::remove_dir_all(&output).ok();
        let mut child = std::process::Command::new(verger_exe)
            .arg("run")
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&resumed_output)
            .args(["--progress", "off", "--k", "2", "--model"])
            .env("VERGER_LOG", "error")
            .arg(&model.path)
            .args(
                config
                    .ort_library
                    .iter()
                    .flat_map(|l| [std::ffi::OsStr::new("--ort-lib"), l.as_os_str()]),
            )
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let staged_errors = resumed_output.join("_staging/errors");
        // A run stages about objects / 256 checkpoints (most objects fail):
        // wait for half of those.
        let half = (objects / 256 / 2).max(1);
        while std::fs::read_dir(&staged_errors)
            .map(|d| d.count())
            .unwrap_or(0)
            < half
        {
            if child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().ok();
        child.wait()?;
        let resume_target = Target {
            output: &resumed_output,
            ..target
        };
        let resumed = run_child(
            verger_exe,
            config,
            &resume_target,
            &["--k", "2", "--resume"],
        )
        .context("the resumed run failed")?;
        let resume_skipped = resumed.record.counts.resumed;
        std::fs::remove_dir_all(&resumed_output).ok();
        std::fs::remove_dir_all(&input).ok();
        let row = ListingRow {
            objects,
            images,
            list_s,
            wall_s: full.wall_s,
            peak_rss_mib: full.peak_rss_kib as f64 / 1024.0,
            resume_peak_rss_mib: resumed.peak_rss_kib as f64 / 1024.0,
            resume_skipped,
            error_rows,
        };
        eprintln!("bench: {row:?}");
        rows.push(row);
    }
    Ok(rows)
}

/// A Markdown table of the listing benchmark.
pub fn listing_table(rows: &[ListingRow]) -> String {
    let mut out = String::from(
        "| objects | valid images | listing s | run wall s | peak RSS MiB | resumed: skipped | resumed: peak RSS MiB | error rows |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.1} | {:.0} | {} | {:.0} | {} |\n",
            r.objects,
            r.images,
            r.list_s,
            r.wall_s,
            r.peak_rss_mib,
            r.resume_skipped,
            r.resume_peak_rss_mib,
            r.error_rows
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child's peak is its own, not the benchmark's: this process holds
    /// 256 MiB when it starts `dd` with a 64 MiB buffer.
    #[test]
    #[expect(
        clippy::zombie_processes,
        reason = "wait_with_peak_rss reaps the child by its pid"
    )]
    fn a_childs_peak_memory_is_its_own() {
        let held = std::hint::black_box(vec![1u8; 256 << 20]);
        let child = std::process::Command::new("dd")
            .args(["if=/dev/zero", "of=/dev/null", "bs=64M", "count=40"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dd runs");
        let (status, peak_kib) = wait_with_peak_rss(child.id()).unwrap();
        assert_eq!(status, 0);
        let peak_mib = peak_kib / 1024;
        assert!(
            (60..200).contains(&peak_mib),
            "dd's peak was {peak_mib} MiB; this process holds {} MiB",
            held.len() >> 20
        );
    }

    fn run_of(images_per_s: f64, peak_rss_mib: f64, inference: f64) -> BenchRow {
        BenchRow {
            engine: "onnxruntime".into(),
            precision: "fp32".into(),
            mode: "embedded".into(),
            images: 2000,
            ceiling_images_per_s: 400.0,
            end_to_end_images_per_s: images_per_s,
            ratio: images_per_s / 400.0,
            ratio_to_fp32_ceiling: None,
            wall_s: 2000.0 / images_per_s,
            peak_rss_mib,
            stage_images_per_s: StageRates {
                list: None,
                read: None,
                decode_resize: None,
                inference: Some(inference),
                pca_fit: None,
                write: None,
            },
            errors: 0,
            runs: 1,
            slowest_images_per_s: images_per_s,
        }
    }

    /// Repeated runs keep the fastest run's figures whatever the order, the
    /// slowest rate beside them, and the highest memory of any run.
    #[test]
    fn repeated_runs_keep_the_fastest_and_the_most_memory() {
        let runs = [
            run_of(350.0, 260.0, 201.0),
            run_of(380.0, 250.0, 207.0),
            run_of(340.0, 280.0, 199.0),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
            let folded = order
                .iter()
                .map(|&i| runs[i].clone())
                .reduce(BenchRow::fold)
                .unwrap();
            assert_eq!(folded.runs, 3);
            assert_eq!(folded.end_to_end_images_per_s, 380.0);
            assert_eq!(folded.wall_s, 2000.0 / 380.0);
            assert_eq!(folded.stage_images_per_s.inference, Some(207.0));
            assert_eq!(folded.slowest_images_per_s, 340.0);
            assert_eq!(folded.peak_rss_mib, 280.0);
        }
        let table = table(&[runs[0].clone().fold(runs[1].clone())]);
        assert!(table.contains("| 380.0 |"), "{table}");
        assert!(table.contains("| 2 (350.0) |"), "{table}");
    }
}
