//! `verger executor`: Ballista's executor with verger's functions (the real
//! ones, around a model loaded once for the process's lifetime) and codec.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use verger_datafusion::{FeaturizeContext, FeaturizeUdf, PcaFitUdaf, PcaProjectUdf, StageMetrics};
use verger_model::{EngineConfig, ModelFile, Precision, SharedModel};

use crate::codec::{GRPC_MESSAGE_LIMIT, physical_codec, session_config};
use crate::part_write::{WorkerInfo, set_worker_info};

/// What `verger executor` takes from its flags.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// A stable name for logs and the scheduler's task records.
    pub id: String,
    pub scheduler_host: String,
    pub scheduler_port: u16,
    /// Address to listen on for Flight (shuffle and result fetches).
    pub bind_host: String,
    /// The name others reach this executor by (default: the address the
    /// scheduler sees it connect from).
    pub external_host: Option<String>,
    pub flight_port: u16,
    /// Tasks run at once.
    pub concurrent_tasks: usize,
    /// Where shuffle files go (default: a temporary folder).
    pub work_dir: Option<PathBuf>,
    /// How long to wait for the scheduler at start-up.
    pub connect_timeout_s: u16,
    pub model: Option<PathBuf>,
    /// Which weights (the client's run must use the same file).
    pub precision: Precision,
    pub engine: EngineConfig,
}

pub async fn run_executor(options: ExecutorOptions) -> Result<()> {
    // The model first: an executor that cannot featurize must not register.
    let (explicit, precision) = (options.model.clone(), options.precision);
    let engine = options.engine.clone();
    let model = tokio::task::spawn_blocking(move || {
        SharedModel::load(ModelFile::locate(explicit.as_deref(), precision)?, &engine)
    })
    .await??;
    set_worker_info(WorkerInfo {
        id: options.id.clone(),
        engine: model.engine_name().to_string(),
        model_sha256: model.file().sha256.clone(),
    });
    // How to featurize (pixel limit, expected model) comes with each job's plan.
    let featurize = Arc::new(FeaturizeContext::new(
        model,
        Arc::new(StageMetrics::default()),
    ));

    // Plans name the functions; tasks resolve them here.
    let mut functions = BallistaFunctionRegistry::default();
    let udfs = [
        ScalarUDF::from(FeaturizeUdf::new(featurize)),
        ScalarUDF::from(PcaProjectUdf::new()),
    ];
    for udf in udfs {
        functions
            .scalar_functions
            .insert(udf.name().to_string(), Arc::new(udf));
    }
    let pca_fit = AggregateUDF::from(PcaFitUdaf::new());
    functions
        .aggregate_functions
        .insert(pca_fit.name().to_string(), Arc::new(pca_fit));

    // Ballista's own default work dir is a TempDir it drops at once, so
    // always hand it one that lives as long as the process.
    let _temporary_work_dir;
    let work_dir = match &options.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create --work-dir {}", dir.display()))?;
            dir.clone()
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("verger-executor-")
                .tempdir()
                .context("cannot create a work dir")?;
            let path = dir.path().to_path_buf();
            _temporary_work_dir = dir;
            path
        }
    };
    let config = ExecutorProcessConfig {
        executor_id: options.id.clone(),
        bind_host: options.bind_host.clone(),
        external_host: options.external_host.clone(),
        port: options.flight_port,
        scheduler_host: options.scheduler_host.clone(),
        scheduler_port: options.scheduler_port,
        scheduler_connect_timeout_seconds: options.connect_timeout_s,
        vcores: options.concurrent_tasks,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: Some(work_dir.display().to_string()),
        // Shuffle files hold paths and features: do not keep them for days.
        job_data_clean_up_interval_seconds: 600,
        job_data_ttl_seconds: 3600,
        grpc_max_decoding_message_size: GRPC_MESSAGE_LIMIT as u32,
        grpc_max_encoding_message_size: GRPC_MESSAGE_LIMIT as u32,
        override_function_registry: Some(Arc::new(functions)),
        override_config_producer: Some(Arc::new(session_config)),
        override_physical_codec: Some(physical_codec()),
        ..ExecutorProcessConfig::default()
    };
    tracing::info!(
        id = options.id,
        scheduler = format!("{}:{}", options.scheduler_host, options.scheduler_port),
        flight_port = options.flight_port,
        concurrent_tasks = options.concurrent_tasks,
        "executor starting"
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the executor stopped")?;
    Ok(())
}
