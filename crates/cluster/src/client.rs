//! The client side of a cluster run: plans each phase locally with plain
//! DataFusion, submits the physical plan to the scheduler, and collects only
//! the per-task summaries (features stay in the store).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion_proto::protobuf::PhysicalPlanNode;
use verger_datafusion::{FeaturizeOptions, phases};
use verger_output::{StagingSpec, TaskSummary};
use verger_pca::{PcaModel, PcaStats};

use crate::codec::{physical_codec, session_config};
use crate::part_write::{PartKind, PartWriteExec, PartWriteSpec, summaries};
use crate::slices::{ImageListSpec, SLICE_COLUMN, SlicedTable, StagedReadSpec};

/// Default scheduler port, as in Ballista.
pub const DEFAULT_PORT: u16 = 50050;

/// A Ballista scheduler to submit to: `df://host:port` (or `host[:port]`).
#[derive(Debug, Clone)]
pub struct Cluster {
    host: String,
    port: u16,
    session_id: String,
}

impl Cluster {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("df://")
            .unwrap_or(url)
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .with_context(|| format!("invalid port in --cluster {url:?}"))?,
            ),
            None => (rest, DEFAULT_PORT),
        };
        if host.is_empty() {
            bail!("invalid --cluster {url:?}: expected df://host:port");
        }
        Ok(Cluster {
            host: host.to_string(),
            port,
            session_id: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// `df://host:port`, as users write it.
    pub fn display(&self) -> String {
        format!("df://{}:{}", self.host, self.port)
    }

    /// Fails within seconds, with the address, when nothing listens there.
    pub async fn check_reachable(&self) -> Result<()> {
        let address = format!("{}:{}", self.host, self.port);
        match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&address),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => bail!(
                "cannot reach the Ballista scheduler at {}: {e} (is `verger scheduler` running there?)",
                self.display()
            ),
            Err(_) => bail!(
                "cannot reach the Ballista scheduler at {}: no answer within 5 s",
                self.display()
            ),
        }
    }

    /// Cancels the jobs still queued or running on the scheduler that write
    /// to `output` (those of an interrupted client: a killed client's job
    /// goes on running, and would write beside a new run). Returns their ids.
    pub async fn cancel_jobs_writing(&self, output: &str) -> Result<Vec<String>> {
        let base = format!("http://{}:{}", self.host, self.port);
        let suffix = job_suffix(output);
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into();
            let jobs: Vec<JobStatus> = agent
                .get(format!("{base}/api/jobs"))
                .call()
                .and_then(|mut r| r.body_mut().read_json())
                .with_context(|| format!("cannot list the jobs of the scheduler at {base}"))?;
            let mut cancelled = Vec::new();
            for job in jobs
                .iter()
                .filter(|j| j.is_live() && j.job_name.ends_with(&suffix))
            {
                tracing::warn!(
                    job = job.job_id,
                    name = job.job_name,
                    "cancelling the job of an interrupted run on the same output"
                );
                agent
                    .patch(format!("{base}/api/job/{}", job.job_id))
                    .send_empty()
                    .with_context(|| format!("cannot cancel job {}", job.job_id))?;
                cancelled.push(job.job_id.clone());
            }
            // Its tasks stop writing once the scheduler has them cancelled.
            let started = std::time::Instant::now();
            while !cancelled.is_empty() && started.elapsed() < Duration::from_secs(30) {
                let jobs: Vec<JobStatus> = agent
                    .get(format!("{base}/api/jobs"))
                    .call()
                    .and_then(|mut r| r.body_mut().read_json())?;
                if !jobs
                    .iter()
                    .any(|j| j.is_live() && cancelled.contains(&j.job_id))
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            anyhow::Ok(cancelled)
        })
        .await?
    }

    fn planner(&self, slices: u32) -> Result<SessionContext> {
        let config = session_config().with_target_partitions(slices as usize);
        let ctx = SessionContext::new_with_config(config);
        let mut state = ctx.state();
        verger_datafusion::register_planning_functions(&mut state)?;
        Ok(SessionContext::new_with_state(state))
    }

    async fn submit(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        slices: u32,
        job_name: &str,
    ) -> Result<Vec<RecordBatch>> {
        tracing::debug!(
            "{job_name} plan:\n{}",
            datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
        );
        let config = session_config()
            .with_target_partitions(slices as usize)
            .with_ballista_job_name(job_name);
        let codec = physical_codec();
        let stream = execute_physical_plan::<PhysicalPlanNode>(
            format!("http://{}:{}", self.host, self.port),
            &config.ballista_config(),
            plan,
            codec.as_ref(),
            self.session_id.clone(),
            config,
        )
        .await
        .with_context(|| {
            format!(
                "{job_name}: the scheduler at {} refused the job",
                self.display()
            )
        })?;
        datafusion::physical_plan::common::collect(stream)
            .await
            .with_context(|| format!("{job_name}: the job failed on the cluster"))
    }

    /// Submits, and once more if the first attempt fails: every task writes
    /// under names taken from its slice, so a second run replaces files
    /// rather than adding rows. (An executor lost after the job finished
    /// but before its results were fetched fails the first attempt.)
    async fn submit_with_retry(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        slices: u32,
        job_name: &str,
    ) -> Result<Vec<RecordBatch>> {
        match self.submit(plan.clone(), slices, job_name).await {
            Ok(batches) => Ok(batches),
            Err(first) => {
                tracing::warn!(
                    error = format!("{first:#}"),
                    "{job_name}: retrying the job once"
                );
                self.submit(plan, slices, job_name).await
            }
        }
    }

    /// Phase 1: every image of each slice not yet done ends up in the
    /// slice's staged features or staged failures. One summary per slice.
    pub async fn featurize(&self, job: &FeaturizeJob, job_name: &str) -> Result<Vec<TaskSummary>> {
        let ctx = self.planner(job.slices)?;
        let spec = ImageListSpec {
            root: job.input.clone(),
            glob: job.glob.clone(),
            batch_size: job.batch_size,
            output: job.output.clone(),
            attempt: job.staging.attempt.clone(),
        };
        let images = ctx.read_table(Arc::new(SlicedTable::images(spec, job.slices)))?;
        let plan = phases::featurize(&ctx, images, &job.input, &job.options, &[SLICE_COLUMN])?
            .create_physical_plan()
            .await?;
        let plan = Arc::new(PartWriteExec::try_new(
            plan,
            PartWriteSpec {
                output: job.output.clone(),
                kind: PartKind::Staging(job.staging.clone()),
            },
        )?);
        let batches = self.submit_with_retry(plan, job.slices, job_name).await?;
        Ok(summaries(&batches)?)
    }

    /// Phase 2: the merged PCA statistics of everything staged.
    pub async fn fit(&self, output: &str, slices: u32, job_name: &str) -> Result<PcaStats> {
        let ctx = self.planner(slices)?;
        let spec = StagedReadSpec {
            output: output.to_string(),
        };
        let staged = ctx.read_table(Arc::new(SlicedTable::staged(spec, slices)))?;
        let plan = phases::fit(&ctx, staged)?.create_physical_plan().await?;
        let batches = self.submit_with_retry(plan, slices, job_name).await?;
        Ok(phases::stats_of(&batches)?)
    }

    /// Phase 3: staged rows with their PCA projection, to `features/`.
    pub async fn project(
        &self,
        output: &str,
        pca: &PcaModel,
        slices: u32,
        job_name: &str,
    ) -> Result<Vec<TaskSummary>> {
        let ctx = self.planner(slices)?;
        let spec = StagedReadSpec {
            output: output.to_string(),
        };
        let staged = ctx.read_table(Arc::new(SlicedTable::staged(spec, slices)))?;
        let plan = phases::project(&ctx, staged, pca, &[SLICE_COLUMN])?
            .create_physical_plan()
            .await?;
        let plan = Arc::new(PartWriteExec::try_new(
            plan,
            PartWriteSpec {
                output: output.to_string(),
                kind: PartKind::Features,
            },
        )?);
        let batches = self.submit_with_retry(plan, slices, job_name).await?;
        Ok(summaries(&batches)?)
    }
}

/// A job as the scheduler's REST API lists it.
#[derive(Debug, serde::Deserialize)]
struct JobStatus {
    job_id: String,
    job_name: String,
    status: String,
}

impl JobStatus {
    fn is_live(&self) -> bool {
        matches!(self.status.as_str(), "Queued" | "Running")
    }
}

/// How every job name of a run ends: the output it writes to, so a later
/// run on the same output finds (and cancels) an interrupted run's jobs.
pub fn job_suffix(output: &str) -> String {
    format!(" → {output}")
}

/// Phase 1 of a run, as the client hands it to the cluster: everything an
/// executor needs travels in the plan, nothing comes from its own flags.
#[derive(Debug, Clone)]
pub struct FeaturizeJob {
    pub input: String,
    pub glob: String,
    pub batch_size: usize,
    pub output: String,
    pub slices: u32,
    pub options: FeaturizeOptions,
    pub staging: StagingSpec,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_parse_with_and_without_scheme_and_port() {
        let c = Cluster::parse("df://sched-host:50060").unwrap();
        assert_eq!(c.display(), "df://sched-host:50060");
        assert_eq!(
            Cluster::parse("10.0.0.5").unwrap().display(),
            "df://10.0.0.5:50050"
        );
        assert!(Cluster::parse("df://host:notaport").is_err());
        assert!(Cluster::parse("df://").is_err());
    }
}
