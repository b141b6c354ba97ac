//! The cluster backend: each phase is one Ballista job. The client never
//! loads the model or touches a feature vector: executors read and write the
//! store, the client gets one [`TaskSummary`] per slice back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use verger_cluster::{Cluster, FeaturizeJob};
use verger_model::ModelFile;
use verger_output::{ClusterRecord, FeatureModel, TaskSummary, WorkerRecord};
use verger_pca::{PcaModel, PcaStats};
use verger_store::Location;

use crate::backend::Phase1;
use crate::config::RunConfig;

pub(crate) struct OnCluster {
    cluster: Cluster,
    slices: u32,
    glob: String,
    batch_size: usize,
    /// The model the client would run: every executor must hold the same.
    model: ModelFile,
    /// Names the run's Ballista jobs (`verger <run> featurize → <output>`, …).
    run_id: String,
    output: String,
}

impl OnCluster {
    /// Checks the scheduler answers, cancels what an interrupted run left
    /// running on `output`, and hashes the client's model file (the
    /// executors' must match it; the client never loads it).
    pub(crate) async fn start(
        config: &RunConfig,
        model: ModelFile,
        url: &str,
        output: &Location,
    ) -> Result<Self> {
        let cluster = Cluster::parse(url)?;
        cluster.check_reachable().await?;
        cluster.cancel_jobs_writing(output.display_root()).await?;
        Ok(OnCluster {
            cluster,
            slices: u32::try_from(config.partitions).unwrap_or(u32::MAX).max(1),
            glob: config.glob.clone(),
            batch_size: config.batch_size,
            model,
            run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
            output: output.display_root().to_string(),
        })
    }

    pub(crate) fn slices(&self) -> u32 {
        self.slices
    }

    pub(crate) fn model_sha256(&self) -> &str {
        &self.model.sha256
    }

    fn job_name(&self, phase: &str) -> String {
        format!(
            "verger {} {phase}{}",
            self.run_id,
            verger_cluster::client::job_suffix(&self.output)
        )
    }

    /// Phase 1: one task per slice; each skips the images the checkpoints
    /// of its slice already hold.
    pub(crate) async fn featurize(&self, phase: &Phase1<'_>) -> Result<Vec<TaskSummary>> {
        tracing::info!(
            scheduler = self.cluster.display(),
            slices = self.slices,
            input = phase.input.display_root(),
            output = phase.output.display_root(),
            "submitting to the cluster"
        );
        let job = FeaturizeJob {
            input: phase.input.display_root().to_string(),
            glob: self.glob.clone(),
            batch_size: self.batch_size,
            output: phase.output.display_root().to_string(),
            slices: self.slices,
            options: phase.options.clone(),
            staging: phase.staging.clone(),
        };
        let name = self.job_name("featurize");
        while_waiting("featurize", self.cluster.featurize(&job, &name)).await
    }

    pub(crate) async fn fit(&self, output: &Location) -> Result<PcaStats> {
        let name = self.job_name("pca-fit");
        while_waiting(
            "fit",
            self.cluster.fit(output.display_root(), self.slices, &name),
        )
        .await
    }

    pub(crate) async fn project(&self, output: &Location, pca: &PcaModel) -> Result<u64> {
        let name = self.job_name("project");
        let written = while_waiting(
            "project",
            self.cluster
                .project(output.display_root(), pca, self.slices, &name),
        )
        .await?;
        Ok(written.iter().map(|s| s.rows).sum())
    }

    /// The model every executor ran, which must be the client's.
    pub(crate) fn model(&self, summaries: &[TaskSummary]) -> Result<FeatureModel> {
        let engine = one_model(summaries, &self.model.sha256)?;
        Ok(FeatureModel {
            path: format!(
                "{} (on the client; each executor loads its own copy)",
                self.model.path.display()
            ),
            sha256: self.model.sha256.clone(),
            engine,
            precision: self.model.precision.to_string(),
        })
    }

    pub(crate) fn record(&self, summaries: &[TaskSummary]) -> ClusterRecord {
        let mut workers: BTreeMap<String, WorkerRecord> = BTreeMap::new();
        for s in summaries {
            let worker = workers.entry(s.worker.clone()).or_default();
            worker.featurize_tasks += 1;
            worker.images += s.listed;
            worker.model_loads = worker.model_loads.max(s.model_loads);
            worker.pid = s.pid;
        }
        ClusterRecord {
            scheduler: self.cluster.display(),
            slices: self.slices,
            workers,
        }
    }
}

/// Every executor that featurized must have run the client's model (the
/// `featurize` function already refuses another, this names them all);
/// returns the engine they ran it with.
fn one_model(summaries: &[TaskSummary], client_sha256: &str) -> Result<String> {
    let mut models: BTreeMap<&str, (&str, Vec<&str>)> = BTreeMap::new();
    for s in summaries.iter().filter(|s| s.listed > s.skipped) {
        let entry = models
            .entry(s.model_sha256.as_str())
            .or_insert((s.engine.as_str(), vec![]));
        if !entry.1.contains(&s.worker.as_str()) {
            entry.1.push(s.worker.as_str());
        }
    }
    let short = |sha: &str| sha[..12.min(sha.len())].to_string();
    if models.len() > 1 || models.keys().any(|sha| *sha != client_sha256) {
        let detail: Vec<String> = models
            .iter()
            .map(|(sha, (_, workers))| format!("{} on {}", short(sha), workers.join(", ")))
            .collect();
        bail!(
            "the executors ran model(s) {} but the client's model is {}: every executor must \
             load the same file",
            detail.join("; "),
            short(client_sha256)
        );
    }
    Ok(models
        .into_values()
        .next()
        .map(|(engine, _)| engine.to_string())
        .unwrap_or_default())
}

/// Logs a line every 10 s while a phase runs on the cluster.
async fn while_waiting<T>(phase: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {
                tracing::info!(phase, elapsed_s = started.elapsed().as_secs(), "running on the cluster");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(worker: &str, sha: &str) -> TaskSummary {
        TaskSummary {
            listed: 3,
            worker: worker.into(),
            model_sha256: sha.into(),
            engine: "onnxruntime".into(),
            ..TaskSummary::default()
        }
    }

    #[test]
    fn executors_with_another_model_are_named_with_both_sha256s() {
        let ok = [summary("a", "aaaa1111"), summary("b", "aaaa1111")];
        assert_eq!(one_model(&ok, "aaaa1111").unwrap(), "onnxruntime");
        let mixed = [summary("a", "aaaa1111"), summary("b", "bbbb2222")];
        let err = one_model(&mixed, "aaaa1111").unwrap_err().to_string();
        assert!(
            err.contains("bbbb2222 on b") && err.contains("aaaa1111"),
            "{err}"
        );
        let other = [summary("a", "bbbb2222")];
        let err = one_model(&other, "aaaa1111").unwrap_err().to_string();
        assert!(err.contains("client's model is aaaa1111"), "{err}");
    }
}
