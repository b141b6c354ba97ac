//! `verger scheduler`: Ballista's scheduler with verger's codec and
//! planning-only functions (it decodes plans by function name, never runs
//! them, so it needs neither the model nor any store).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use ballista_scheduler::scheduler_server::SessionBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

use crate::codec::{GRPC_MESSAGE_LIMIT, physical_codec, session_config};

/// The only origin whose pages may call the scheduler's REST API: none.
const SCHEDULER_CORS_ORIGIN: &str = "https://no-browser-access.invalid";

/// What `verger scheduler` takes from its flags.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub bind: SocketAddr,
    /// The name executors and clients reach this host by (default: the
    /// bind address, or the host name when binding every interface).
    pub external_host: Option<String>,
    /// An executor silent for this long is declared lost and its tasks are
    /// run again elsewhere.
    pub executor_timeout_s: u64,
    /// How often lost executors are looked for.
    pub expire_interval_s: u64,
    /// `/readyz` answers 200 once this many executors are registered.
    pub min_executors: usize,
    /// One JSON-lines event log per job (task → executor), if set.
    pub event_log_dir: Option<String>,
}

pub async fn run_scheduler(options: SchedulerOptions) -> Result<()> {
    let session_builder: SessionBuilder = Arc::new(|config: SessionConfig| {
        let mut state = ballista_core::utils::default_session_builder(config)?;
        verger_datafusion::register_planning_functions(&mut state)?;
        Ok(state)
    });
    let external_host = options.external_host.clone().unwrap_or_else(|| {
        if options.bind.ip().is_unspecified() {
            hostname()
        } else {
            options.bind.ip().to_string()
        }
    });
    let config = SchedulerConfig {
        bind_host: options.bind.ip().to_string(),
        bind_port: options.bind.port(),
        external_host,
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        task_distribution: TaskDistributionPolicy::Bias,
        executor_timeout_seconds: options.executor_timeout_s,
        expire_dead_executor_interval_seconds: options.expire_interval_s,
        no_executors_grace_period_seconds: options.executor_timeout_s,
        task_max_failures: 4,
        stage_max_failures: 4,
        min_ready_executors: options.min_executors,
        event_log_dir: options.event_log_dir.clone(),
        grpc_server_max_decoding_message_size: GRPC_MESSAGE_LIMIT as u32,
        grpc_server_max_encoding_message_size: GRPC_MESSAGE_LIMIT as u32,
        grpc_client_max_message_size: GRPC_MESSAGE_LIMIT as u32,
        override_config_producer: Some(Arc::new(session_config)),
        override_session_builder: Some(session_builder),
        override_physical_codec: Some(physical_codec()),
        // Ballista's default lets pages from http://localhost:8080 (where
        // `verger serve` listens by default) call the scheduler's REST API
        // from a browser. No browser needs it: the only origin allowed is
        // one that cannot exist (.invalid never resolves, RFC 2606); an
        // empty list would mean Ballista's default again.
        cors_allowed_origins: SCHEDULER_CORS_ORIGIN.to_string(),
        ..SchedulerConfig::default()
    };
    config.validate().context("invalid scheduler settings")?;
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .context("cannot set up the scheduler's state")?;
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config))
            .await
            .context("cannot start the scheduler")?;
    let listener = tokio::net::TcpListener::bind(options.bind)
        .await
        .with_context(|| format!("cannot listen on {}", options.bind))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        executor_timeout_s = options.executor_timeout_s,
        "scheduler listening (gRPC, REST /api, /healthz, /readyz on one port)"
    );
    tokio::select! {
        served = start_grpc_service_with_listener(listener, scheduler) => {
            served.context("the scheduler stopped")?;
        }
        _ = shutdown_signal() => tracing::info!("scheduler stopping"),
    }
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
