//! `verger`: the command line. Flags in, a pipeline call out; no logic of its own.

mod classify;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use verger_bench::pipeline::{BenchConfig, bench, bench_listing, listing_table, table};
use verger_pipeline::{DEFAULT_CLUSTER_SLICES, Placement, ProgressMode, RunConfig, Start};

#[derive(Parser)]
#[command(
    name = "verger",
    version,
    about = "Fruit photos → MobileNetV2 transfer-learning features → PCA → Parquet",
    long_about = "verger lists the images under a folder or an S3 prefix (label = parent folder name), \
turns each into a 1280-d MobileNetV2 feature vector, fits a PCA on all of them and writes \
Parquet that pandas, pyarrow, Spark and DuckDB read as-is.\n\n\
S3 settings come from the standard AWS environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
AWS_SESSION_TOKEN, AWS_REGION (default eu-west-1), AWS_ENDPOINT_URL and AWS_ALLOW_HTTP=true \
for a local S3-compatible server. Logs: VERGER_LOG=debug (or RUST_LOG).",
    after_help = "Examples:\n  \
verger run --input ../shared/datasets/fruits360-sample --output out/sample\n  \
verger run --input s3://fruits/images/ --output s3://fruits/results/ --k 5\n  \
verger run --input s3://fruits/images/ --output s3://fruits/results/ --resume   # after a crash\n  \
verger run --input s3://fruits/images/ --output s3://fruits/results/ --incremental   # new photos\n  \
verger bench --images 2000\n  \
verger bench --images 4000 --cluster-executors 0,1,2\n  \
verger train --features out/sample --out model/   # fruit classifier on Training/\n  \
verger evaluate --classifier model/ --features out/sample   # scored on Test/\n\n\
On a Ballista cluster (one scheduler, an executor per worker):\n  \
verger scheduler --bind 0.0.0.0:50050\n  \
verger executor --scheduler sched-host:50050 --concurrent-tasks 2\n  \
verger run --cluster df://sched-host:50050 --input s3://fruits/images/ --output s3://fruits/results/\n\n\
The Ballista ports (scheduler 50050, executors' Flight 50051) have no authentication: anyone who \
can reach them can run plans. Keep them on a private network that admits only the cluster's hosts."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline once: list, featurize, fit PCA, write Parquet.
    Run(RunArgs),
    /// Measure the pipeline against the model-only ceiling (and peak memory).
    Bench(BenchArgs),
    /// Run a Ballista scheduler that accepts verger jobs (no model or store access needed).
    /// Its port has no authentication: keep it on a private network.
    Scheduler(SchedulerArgs),
    /// Run a Ballista executor with verger's functions; it loads the model once and
    /// reads/writes S3 with its own AWS environment (instance role, env vars).
    /// Its Flight port has no authentication: keep it on a private network.
    Executor(ExecutorArgs),
    /// Write a self-contained HTML report (plots as PNG) of a finished run's output.
    #[command(long_about = REPORT_ABOUT, after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
    /// Fit the fruit classifier (logistic regression) on a run's Training/ features.
    #[command(long_about = classify::TRAIN_ABOUT, after_help = classify::TRAIN_EXAMPLES)]
    Train(classify::TrainArgs),
    /// Score a trained classifier on a run's Test/ features (top-1/5, per class, confusion, kNN).
    #[command(long_about = classify::EVALUATE_ABOUT, after_help = classify::EVALUATE_EXAMPLES)]
    Evaluate(classify::EvaluateArgs),
    /// Serve the photo → fruit service: POST /v1/identify, a web page at /, /healthz, /metrics.
    #[command(long_about = SERVE_ABOUT, after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Load-test a running `verger serve`: latency percentiles, throughput, errors.
    #[command(long_about = BENCH_SERVE_ABOUT, after_help = BENCH_SERVE_EXAMPLES)]
    BenchServe(BenchServeArgs),
}

const REPORT_ABOUT: &str = "Write a self-contained HTML report of a finished `verger run` output: \
index.html plus the PNGs it shows, in one folder that opens offline (no script, no network).\n\n\
The page shows the explained-variance scree plot with its cumulative curve; the images in the \
plane of PCA components 1 and 2, coloured by label (the 20 labels with most images named, the \
rest grey \"other\"); images per label; the failures grouped by stage and reason, with an \
example path each; the run's parameters, counts and timings from run.json. With --evaluation \
it adds the classifier's top-1, top-5 and kNN figures, per-class precision and recall, and the \
confusion matrix as a heat map.\n\n\
Only the label and pca columns are read (not the 1280-d features), and the scatter draws a \
uniform sample of at most 20,000 images, so large outputs report quickly.";

const REPORT_EXAMPLES: &str = "Examples:\n  \
verger report --input out/sample --out report/\n  \
verger report --input s3://fruits/results/ --out report/ --evaluation model/evaluation.json\n  \
then open report/index.html in a browser";

#[derive(Args)]
struct ReportArgs {
    /// The output of `verger run` to describe: a folder or s3://bucket/prefix (it must hold _SUCCESS)
    #[arg(long, short)]
    input: String,
    /// Folder (or s3://bucket/prefix) the page and its PNGs are written to; created if missing,
    /// files of the same name replaced
    #[arg(long, short, default_value = "report")]
    out: String,
    /// evaluation.json written by `verger evaluate`: adds accuracy, per-class scores and the
    /// confusion matrix
    #[arg(long, value_name = "FILE")]
    evaluation: Option<String>,
}

#[derive(Args)]
struct SchedulerArgs {
    /// Address and port to listen on (gRPC, REST /api, /healthz and /readyz share it)
    #[arg(long, default_value = "127.0.0.1:50050")]
    bind: std::net::SocketAddr,
    /// Host name executors and clients use to reach this scheduler [default: the bind address]
    #[arg(long)]
    external_host: Option<String>,
    /// Seconds without a heartbeat after which an executor is declared lost and its tasks re-run
    #[arg(long, default_value_t = 30)]
    executor_timeout: u64,
    /// Seconds between checks for lost executors
    #[arg(long, default_value_t = 5)]
    expire_interval: u64,
    /// /readyz answers 200 once this many executors are registered
    #[arg(long, default_value_t = 1)]
    min_executors: usize,
    /// Write one JSON-lines event log per job here (which executor ran which task)
    #[arg(long)]
    event_log_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ExecutorArgs {
    /// The scheduler, as host:port (or df://host:port)
    #[arg(long, default_value = "127.0.0.1:50050")]
    scheduler: String,
    /// A stable name for this executor in logs and task records [default: a random id]
    #[arg(long)]
    id: Option<String>,
    /// Address to listen on for Flight (shuffle data and results)
    #[arg(long, default_value = "127.0.0.1")]
    bind_host: String,
    /// Host name others use to reach this executor [default: as the scheduler sees it]
    #[arg(long)]
    external_host: Option<String>,
    /// Flight port
    #[arg(long, default_value_t = 50051)]
    flight_port: u16,
    /// Tasks run at once (each one reads and decodes while another's batch is in the model)
    #[arg(long, default_value_t = 2)]
    concurrent_tasks: usize,
    /// Folder for shuffle files [default: a temporary folder]
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Seconds to wait for the scheduler at start-up
    #[arg(long, default_value_t = 60)]
    connect_timeout: u16,
    /// Which weights: fp32 (the shared model) or int8 (built by tools/quantize_int8.py);
    /// the clients' runs must use the same
    #[arg(long, default_value = "fp32")]
    precision: verger_model::Precision,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args)]
struct ModelArgs {
    /// The ONNX model [default: the shared MobileNetV2, found as shared/models/… beside the project]
    #[arg(long, env = "VERGER_MODEL")]
    model: Option<PathBuf>,
    /// Inference engine: ort (ONNX Runtime, fastest), tract (pure Rust), auto (ort if its
    /// library is found) [default: auto]
    #[arg(long)]
    engine: Option<EngineArg>,
    /// ONNX Runtime shared library (libonnxruntime.so from the onnxruntime wheel)
    #[arg(long = "ort-lib")]
    ort_library: Option<PathBuf>,
    /// Images per inference batch
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Inference threads in all [default: all cores]. A run splits them into one model
    /// session per partition (two 1-thread sessions outrun one 2-thread session), an executor
    /// into one per task slot
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct RunArgs {
    /// Images to process: a local folder or s3://bucket/prefix (searched recursively)
    #[arg(long, short)]
    input: String,
    /// Where the result goes: a local folder or s3://bucket/prefix
    #[arg(long, short)]
    output: String,
    /// Which file names are images (matched on the name, case-insensitively)
    #[arg(long, default_value = "*.jpg")]
    glob: String,
    /// Number of PCA components
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Centre features before projecting (scikit-learn convention); the default
    /// projects uncentred, like spark.ml's PCAModel
    #[arg(long)]
    center: bool,
    /// Replace an earlier verger result at --output. Only verger's own files (features/,
    /// errors/, inventory/, _staging/, pca_model.json, run.json, _SUCCESS) are removed; anything
    /// else stays and is named. A folder verger did not make is refused
    #[arg(long, conflicts_with_all = ["resume", "incremental"])]
    overwrite: bool,
    /// Continue a run that was interrupted (killed, crashed, power loss) at --output: the
    /// images it already finished are skipped, the rest are done, then PCA and output as usual
    #[arg(long, conflicts_with = "incremental")]
    resume: bool,
    /// Update the complete earlier run at --output after the input changed: only new and
    /// changed images are featurized, rows of deleted ones are dropped, PCA is fitted again.
    /// (An interrupted --incremental run is finished with --resume alone.)
    #[arg(long)]
    incremental: bool,
    /// Images per checkpoint file and task: finished work becomes durable every N images,
    /// so a kill loses at most N images per task
    #[arg(long, default_value_t = 256, value_name = "N")]
    checkpoint_every: usize,
    /// Fail the run when more than N images cannot be processed
    #[arg(long, value_name = "N")]
    max_errors: Option<u64>,
    /// Refuse images larger than this many pixels (protects memory from huge or hostile files)
    #[arg(long, default_value_t = 64_000_000)]
    max_pixels: u64,
    /// Parallel tasks reading and decoding images [default: all cores]
    #[arg(long)]
    partitions: Option<usize>,
    /// Progress display: auto (bar on a terminal, lines otherwise), bar, lines, off
    #[arg(long, default_value = "auto")]
    progress: ProgressArg,
    /// Run on a Ballista cluster: the scheduler as df://host:port. --partitions is then the
    /// number of slices (tasks) the input is split into [default: 16]. Every other flag
    /// travels to the executors, except --engine, --ort-lib and --threads, which each
    /// `verger executor` sets for itself (refused here). Ballista's ports have no
    /// authentication: keep the cluster on a private network
    #[arg(long, env = "VERGER_CLUSTER", value_name = "URL")]
    cluster: Option<String>,
    /// Which weights: fp32 (the shared model) or int8 (the same network with its
    /// quantization-aware-trained scales, built by tools/quantize_int8.py into models/;
    /// features within a cosine of 0.99 of fp32). run.json records it with the model's sha256;
    /// on a cluster the executors must hold the same file
    #[arg(long, default_value = "fp32")]
    precision: verger_model::Precision,
    /// Also featurize views of every photo: crops and mirror images, decoded once. `training`
    /// makes 22 (the whole photo, 5 crops at 60 % and 5 at 50 % of each side, each also
    /// mirrored), `serving` the 12 that `verger serve` averages. They go to `views/` (path,
    /// label, view, features), one row per view, never into `features/`; `verger train`
    /// trains on them and `verger evaluate` averages them. Costs one inference per view
    #[arg(long, value_name = "SET")]
    views: Option<verger_image::views::ViewSet>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Image counts to run, comma-separated (e.g. 2000,20000 to show memory stays flat)
    #[arg(long, value_delimiter = ',', default_value = "2000")]
    images: Vec<usize>,
    /// Folder of images to repeat
    #[arg(long, default_value = "../shared/datasets/fruits360-sample")]
    dataset: PathBuf,
    /// Engines to measure, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "ort")]
    engines: Vec<EngineArg>,
    /// Batches of --batch-size images timed for the model-only ceiling (run in the
    /// pipeline's own inference calls, on every session at once)
    #[arg(long, default_value_t = 40)]
    ceiling_batches: usize,
    /// Runs of every row, in rounds: each row shows its fastest run (the slowest
    /// beside it) and the ceiling is measured again after every round, best kept.
    /// On a shared machine 3 steadies the ratios
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
    repeat: u16,
    /// Folder for the repeated inputs and outputs [default: a temporary folder]
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Also write the results as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to run, comma-separated: 0 = embedded, N = a local Ballista scheduler
    /// with N executors sharing this machine (e.g. 0,1,2)
    #[arg(long, value_delimiter = ',', default_value = "0")]
    cluster_executors: Vec<usize>,
    /// Instead: the listing-scale benchmark on synthetic collections of this many tiny
    /// objects (e.g. 10000,100000): listing time, peak RSS, a killed and resumed run
    #[arg(long, value_delimiter = ',', value_name = "OBJECTS")]
    listing: Option<Vec<usize>>,
    /// Weights to measure, comma-separated: fp32 (the shared model), int8 (built by
    /// tools/quantize_int8.py into models/)
    #[arg(long, value_delimiter = ',', default_value = "fp32")]
    precision: Vec<verger_model::Precision>,
    /// Images to feed: sample (the dataset's own) or large (4032x3024 phone-sized JPEGs of
    /// about 2 MB, made from the dataset in the work folder)
    #[arg(long, default_value = "sample")]
    photos: verger_bench::pipeline::Photos,
    /// Also run the Python peer (Pillow with draft() + onnxruntime, fp32, same threads and
    /// inference calls of the same size) on the same images, with the project's .venv (or VERGER_PYTHON)
    #[arg(long)]
    peer: bool,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    Auto,
    Ort,
    Tract,
}

impl From<EngineArg> for verger_pipeline::EngineChoice {
    fn from(engine: EngineArg) -> Self {
        match engine {
            EngineArg::Auto => Self::Auto,
            EngineArg::Ort => Self::Ort,
            EngineArg::Tract => Self::Tract,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ProgressArg {
    Auto,
    Bar,
    Lines,
    Off,
}

impl From<ProgressArg> for ProgressMode {
    fn from(mode: ProgressArg) -> Self {
        match mode {
            ProgressArg::Auto => Self::Auto,
            ProgressArg::Bar => Self::Bar,
            ProgressArg::Lines => Self::Lines,
            ProgressArg::Off => Self::Off,
        }
    }
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let filter = std::env::var("VERGER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| {
            "warn,verger=info,verger_pipeline=info,verger_model=info,verger_cluster=info,verger_report=info,verger_serve=info".into()
        });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let outcome = match cli.command {
        Command::Run(args) => run(args),
        Command::Bench(args) => run_bench(args),
        Command::Scheduler(args) => run_scheduler(args),
        Command::Executor(args) => run_executor(args),
        Command::Report(args) => run_report(args),
        Command::Train(args) => runtime().and_then(|rt| classify::train(args, rt)),
        Command::Evaluate(args) => runtime().and_then(|rt| classify::evaluate(args, rt)),
        Command::Serve(args) => run_serve(args),
        Command::BenchServe(args) => run_bench_serve(args),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("verger: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates its own heap arena, and tokio's
/// blocking pool starts many threads: memory freed in one arena is not
/// reused by another, so peak RSS grew with the number of checkpoint files a
/// `--resume` read (+320 MiB at 100k images). Two arenas keep it flat and
/// cost nothing measurable on this workload (see README, Benchmark).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = RunConfig::new(args.input, args.output);
    config.glob = args.glob;
    config.k = args.k;
    config.center = args.center;
    config.start = match (args.overwrite, args.resume, args.incremental) {
        (true, _, _) => Start::Overwrite,
        (_, true, _) => Start::Resume,
        (_, _, true) => Start::Incremental,
        _ => Start::Fresh,
    };
    config.checkpoint_every = args.checkpoint_every;
    config.max_errors = args.max_errors;
    config.max_pixels = args.max_pixels;
    config.views = args.views;
    config.progress = args.progress.into();
    config.model = args.model.model;
    config.precision = args.precision;
    config.engine = args.model.engine.map(Into::into);
    config.ort_library = args.model.ort_library;
    config.batch_size = args.model.batch_size;
    config.threads = args.model.threads;
    if let Some(partitions) = args.partitions {
        config.partitions = partitions;
    } else if args.cluster.is_some() {
        config.partitions = DEFAULT_CLUSTER_SLICES;
    }
    if let Some(url) = args.cluster {
        config.placement = Placement::Cluster(url);
    }
    let record = runtime()?.block_on(verger_pipeline::run(&config))?;
    println!("{}", record.summary_line());
    Ok(())
}

fn run_report(args: ReportArgs) -> anyhow::Result<()> {
    let mut config = verger_report::ReportConfig::new(args.input, args.out);
    config.evaluation = args.evaluation;
    let written = runtime()?.block_on(verger_report::write_report(&config))?;
    println!(
        "verger: report of {} images, {} labels, {} errors -> {}",
        written.images, written.labels, written.errors, written.index
    );
    Ok(())
}

fn run_scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let options = verger_cluster::SchedulerOptions {
        bind: args.bind,
        external_host: args.external_host,
        executor_timeout_s: args.executor_timeout.max(2),
        expire_interval_s: args.expire_interval.max(1),
        min_executors: args.min_executors,
        event_log_dir: args.event_log_dir.map(|d| d.display().to_string()),
    };
    runtime()?.block_on(verger_cluster::run_scheduler(options))
}

fn run_executor(args: ExecutorArgs) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = args.model.threads.unwrap_or(cores).max(1);
    let scheduler = args
        .scheduler
        .strip_prefix("df://")
        .unwrap_or(&args.scheduler);
    let (host, port) = match scheduler.rsplit_once(':') {
        Some((host, port)) => (host.to_string(), port.parse()?),
        None => (scheduler.to_string(), verger_cluster::client::DEFAULT_PORT),
    };
    let options = verger_cluster::ExecutorOptions {
        id: args
            .id
            .unwrap_or_else(|| format!("executor-{}", std::process::id())),
        scheduler_host: host,
        scheduler_port: port,
        bind_host: args.bind_host,
        external_host: args.external_host,
        flight_port: args.flight_port,
        concurrent_tasks: args.concurrent_tasks.max(1),
        work_dir: args.work_dir,
        connect_timeout_s: args.connect_timeout,
        model: args.model.model,
        precision: args.precision,
        engine: verger_model::EngineConfig {
            choice: args.model.engine.unwrap_or(EngineArg::Auto).into(),
            threads,
            // Each task slot infers its own batches.
            sessions: verger_model::sessions_for(threads, args.concurrent_tasks.max(1)),
            ort_library: args.model.ort_library,
            // `featurize` infers in chunks of at most PREFERRED_BATCH
            // tensors; tract pads every call to its compiled batch.
            batch_size: args
                .model
                .batch_size
                .clamp(1, verger_model::PREFERRED_BATCH),
        },
    };
    runtime()?.block_on(verger_cluster::run_executor(options))
}

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = BenchConfig {
        dataset: args.dataset,
        image_counts: args.images,
        engines: args.engines.into_iter().map(Into::into).collect(),
        precisions: args.precision,
        photos: args.photos,
        peer: args.peer,
        batch_size: args.model.batch_size.max(1),
        threads: args.model.threads.unwrap_or(cores),
        model: args.model.model,
        ort_library: args.model.ort_library,
        work_dir: args.work_dir,
        ceiling_batches: args.ceiling_batches,
        cluster_executors: args.cluster_executors,
        repeat: usize::from(args.repeat),
    };
    if let Some(counts) = args.listing {
        let rows = bench_listing(&counts, &config, &std::env::current_exe()?)?;
        println!("{}", listing_table(&rows));
        if let Some(path) = args.json {
            std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)?;
        }
        return Ok(());
    }
    let rows = bench(&config, &std::env::current_exe()?)?;
    println!("{}", table(&rows));
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}

const SERVE_ABOUT: &str = "Serve the photo → fruit service behind the app.\n\n\
The feature model and the classifier (from `verger train`) are loaded once; a classifier trained \
on another feature model is refused (their sha256 must match).\n\n\
Endpoints:\n  \
POST /v1/identify  the photo (JPEG or PNG) as the body, or as the multipart/form-data field \
\"image\" → {label, confidence, top5: [{label, confidence}], info: {common_name, \
botanical_name, family, energy_kcal_per_100g, ...} | null}\n  \
GET  /             a web page: choose or drop a photo, see the answer (works on a phone)\n  \
GET  /healthz      {status, engine, model_sha256, labels}\n  \
GET  /metrics      Prometheus text: requests by route and status, latency, errors by kind, \
batch sizes\n\n\
Limits: an upload over --max-body gets 413; a Content-Type other than image/*, \
application/octet-stream or multipart/form-data 415; not a JPEG/PNG 415; a corrupt image 400; an \
image over --max-pixels 413 before any pixel is decoded. Before decoding, each image reserves the \
memory its header says it needs from --decode-memory: more than the whole budget is 413 at once, \
no room within --decode-wait 503 with Retry-After. Over --max-in-flight requests or a full queue: \
503. A connection that does not finish a request head within --header-timeout (also the idle \
keep-alive timeout) is closed; over --max-connections, new connections wait. Error answers are \
generic, with a request id that the log repeats with the detail. Requests arriving within \
--batch-delay-ms of each other share one inference call of up to --max-batch images.\n\n\
It speaks plain HTTP/1.1: on a public address, put it behind a TLS-terminating proxy.";

const SERVE_EXAMPLES: &str = "Examples:\n  \
verger train --features out/sample --out model/\n  \
verger serve --classifier model/ --bind 127.0.0.1:8080\n  \
curl --data-binary @banana.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8080/v1/identify\n  \
curl -F image=@banana.jpg http://127.0.0.1:8080/v1/identify\n  \
verger serve --classifier model/ --bind 0.0.0.0:8080 --max-body 20MiB --max-batch 16";

#[derive(Args)]
struct ServeArgs {
    /// Folder holding classifier.json, made by `verger train`
    #[arg(long, value_name = "DIR")]
    classifier: PathBuf,
    /// Address and port to listen on (0.0.0.0 = every interface; port 0 = any free port,
    /// printed in the log)
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: std::net::SocketAddr,
    /// Largest upload accepted (413 above): bytes, or with KiB, MiB, KB, MB
    #[arg(long, default_value = "10MiB", value_parser = parse_size, value_name = "SIZE")]
    max_body: usize,
    /// Most images per inference call: requests arriving together are batched up to this
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Milliseconds the first image of a batch waits for others before the batch runs
    #[arg(long, default_value_t = 5, value_name = "MS")]
    batch_delay_ms: u64,
    /// Refuse images larger than this many pixels (checked from the header: decompression bombs)
    #[arg(long, default_value_t = 64_000_000)]
    max_pixels: u64,
    /// Images waiting for the model at most; more get 503 at once instead of waiting
    #[arg(long, default_value_t = 256, value_name = "IMAGES")]
    queue: usize,
    /// Seconds allowed to receive an upload (408 after) and to wait for the model (503 after);
    /// also how long requests in flight get to finish after SIGTERM
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
    /// Seconds a connection may take to send a request head (and may stay idle between
    /// requests) before it is closed
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    header_timeout: u64,
    /// Connections open at once at most; more wait in the accept backlog
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Requests handled at once at most; more get 503 at once
    #[arg(long, default_value_t = 128)]
    max_in_flight: usize,
    /// Memory all decodes in progress may take together (each image reserves its need, read
    /// from its header, before decoding): bytes, or with KiB, MiB, GiB
    #[arg(long, default_value = "512MiB", value_parser = parse_size, value_name = "SIZE")]
    decode_memory: usize,
    /// Images decoded at once [default: cores]
    #[arg(long)]
    decoders: Option<usize>,
    /// Seconds an image waits for room in the decode budget before a 503
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    decode_wait: u64,
    /// Serve /healthz and /metrics on this address instead of --bind (e.g. 127.0.0.1:9090)
    #[arg(long, value_name = "ADDR")]
    admin_bind: Option<std::net::SocketAddr>,
    /// The ONNX model [default: the shared MobileNetV2, found as shared/models/… beside the project]
    #[arg(long, env = "VERGER_MODEL")]
    model: Option<PathBuf>,
    /// Inference engine: ort (ONNX Runtime, fastest), tract (pure Rust), auto (ort if its library is found)
    #[arg(long, default_value = "auto")]
    engine: EngineArg,
    /// ONNX Runtime shared library (libonnxruntime.so from the onnxruntime wheel)
    #[arg(long = "ort-lib", env = "ORT_DYLIB_PATH")]
    ort_library: Option<PathBuf>,
    /// Inference threads [default: all cores], all in one model session so that a lone photo
    /// is answered fast
    #[arg(long)]
    threads: Option<usize>,
    /// Which weights: fp32 (the shared model) or int8 (built by tools/quantize_int8.py); the
    /// classifier must have been trained on features of the same model
    #[arg(long, default_value = "fp32")]
    precision: verger_model::Precision,
}

const BENCH_SERVE_ABOUT: &str = "Load-test a running `verger serve` (start it first).\n\n\
For each --concurrency level, that many client threads send the photos under --images \
(round robin) to POST /v1/identify, each waiting for its answer before sending the next, \
until --requests answers have come back. Reported per level: p50/p90/p99/max latency, \
throughput, errors, answers naming the photo's folder, and the mean inference batch (from \
/metrics). With --hostile, each level runs again alongside stalled connections and \
decompression-bomb uploads, and the hostile clients' answers are reported. Send it only to a \
server of yours: the loopback address or a test host.";

const BENCH_SERVE_EXAMPLES: &str = "Examples:\n  \
verger serve --classifier model/ &\n  \
verger bench-serve --url http://127.0.0.1:8080 --requests 2000 --concurrency 1,16\n  \
verger bench-serve --concurrency 16 --hostile --stalled 500 --bombs 40 --server-pid $SERVE_PID   # SERVE_PID=$! after starting the service";

#[derive(Args)]
struct BenchServeArgs {
    /// The service's base URL
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Timed requests per concurrency level (after a short untimed warm-up)
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrency levels, comma-separated (1,16 shows what batching gains)
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    concurrency: Vec<usize>,
    /// Folder of photos (searched recursively; the parent folder is the expected label)
    #[arg(long, default_value = "../shared/datasets/fruits360-sample/Test")]
    images: PathBuf,
    /// Seconds before one request counts as failed
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
    /// Also write the results as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run each level twice: alone, then alongside --stalled connections that send half a
    /// request head and stall, and --bombs clients sending small PNGs of --bomb-side² pixels
    #[arg(long)]
    hostile: bool,
    /// With --hostile: connections kept stalled in the middle of their request head
    #[arg(long, default_value_t = 500)]
    stalled: usize,
    /// With --hostile: clients each sending decompression-bomb PNGs back to back
    #[arg(long, default_value_t = 40)]
    bombs: usize,
    /// With --hostile: side of the bomb image, pixels (7900: a 0.9 MB PNG, 187 MB decoded)
    #[arg(long, default_value_t = 7900)]
    bomb_side: u32,
    /// The service's process id, to report its peak resident memory (VmHWM) at the end
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
}

/// `10MiB`, `512KiB`, `2MB`, `1000000`.
fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 10MiB, 512KiB, 1000000)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB, KB or MB)"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = verger_serve::ServeConfig::new(args.classifier);
    config.model = args.model;
    config.precision = args.precision;
    config.engine.choice = args.engine.into();
    config.engine.ort_library = args.ort_library;
    if let Some(threads) = args.threads {
        config.engine.threads = threads.max(1);
    }
    config.batch.max_batch = args.max_batch.max(1);
    config.batch.delay = std::time::Duration::from_millis(args.batch_delay_ms);
    config.engine.batch_size = config.batch.max_batch;
    config.limits.max_body = args.max_body;
    config.limits.max_pixels = args.max_pixels;
    config.limits.queue_capacity = args.queue.max(1);
    config.limits.read_timeout = std::time::Duration::from_secs(args.timeout.max(1));
    config.limits.inference_timeout = config.limits.read_timeout;
    config.limits.shutdown_grace = config.limits.read_timeout;
    config.limits.header_timeout = std::time::Duration::from_secs(args.header_timeout.max(1));
    config.limits.max_connections = args.max_connections.max(1);
    config.limits.max_in_flight = args.max_in_flight.max(1);
    config.limits.decode_memory = args.decode_memory as u64;
    config.limits.decode_wait = std::time::Duration::from_secs(args.decode_wait);
    if let Some(decoders) = args.decoders {
        config.limits.decoders = decoders.max(1);
    }
    let service = verger_serve::Service::load(&config)?;
    runtime()?.block_on(async move {
        let listener = listen(args.bind).await?;
        let admin = match args.admin_bind {
            Some(addr) => Some(listen(addr).await?),
            None => None,
        };
        service
            .serve_split(listener, admin, verger_serve::shutdown_signal())
            .await
    })
}

async fn listen(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

fn run_bench_serve(args: BenchServeArgs) -> anyhow::Result<()> {
    let config = verger_bench::serve_load::LoadTestConfig {
        url: args.url,
        requests: args.requests.max(1),
        concurrency: args.concurrency,
        images: args.images,
        timeout: std::time::Duration::from_secs(args.timeout.max(1)),
        hostile: args
            .hostile
            .then_some(verger_bench::hostile::HostileConfig {
                stalled: args.stalled,
                bombs: args.bombs,
                bomb_side: args.bomb_side,
            }),
    };
    let reports = verger_bench::serve_load::run(&config)?;
    println!("{}", verger_bench::serve_load::table(&reports));
    if let Some(pid) = args.server_pid {
        match verger_bench::hostile::peak_rss_mib(pid) {
            Some(mib) => println!("service peak RSS (VmHWM of pid {pid}): {mib:.0} MiB"),
            None => eprintln!("cannot read /proc/{pid}/status for the peak RSS"),
        }
    }
    for report in &reports {
        for error in &report.first_errors {
            eprintln!("concurrency {}: {error}", report.concurrency);
        }
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&reports)?)?;
    }
    Ok(())
}
