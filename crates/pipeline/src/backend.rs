//! Where the phases run: in this process or on a Ballista cluster. The two
//! backends differ only there; what runs, in which order, and every check
//! in between is [`crate::run`]'s, once for both.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Result, bail};
use verger_datafusion::FeaturizeOptions;
use verger_model::ModelFile;
use verger_output::{ClusterRecord, FeatureModel, StagingManifest, StagingSpec, TaskSummary};
use verger_pca::{PcaModel, PcaStats};
use verger_store::{Location, NameFilter};

use crate::config::{Placement, RunConfig};
use crate::embedded::Embedded;
use crate::on_cluster::OnCluster;

/// What phase 1 needs, whatever runs it.
pub(crate) struct Phase1<'a> {
    pub input: &'a Location,
    pub filter: &'a NameFilter,
    pub output: &'a Location,
    pub options: FeaturizeOptions,
    pub staging: StagingSpec,
    /// Paths the checkpoints already hold (an embedded run skips them; a
    /// cluster slice reads its own share from the checkpoints).
    pub done_paths: Arc<HashSet<String>>,
}

pub(crate) enum Backend {
    Embedded(Embedded),
    Cluster(OnCluster),
}

impl Backend {
    /// Gets ready to run: loads the model (embedded) or checks the
    /// scheduler and hashes the model the executors must hold (cluster).
    pub(crate) async fn start(
        config: &RunConfig,
        model: ModelFile,
        output: &Location,
    ) -> Result<Self> {
        Ok(match &config.placement {
            Placement::Embedded => Backend::Embedded(Embedded::start(config, model).await?),
            Placement::Cluster(url) => {
                Backend::Cluster(OnCluster::start(config, model, url, output).await?)
            }
        })
    }

    /// The sha256 of the model the run's features come from.
    pub(crate) fn model_sha256(&self) -> String {
        match self {
            Backend::Embedded(embedded) => embedded.model().sha256,
            Backend::Cluster(cluster) => cluster.model_sha256().to_string(),
        }
    }

    /// How many task summaries phase 1 must return, one per slice
    /// (`None`: embedded, one for the process).
    pub(crate) fn slices(&self) -> Option<u32> {
        match self {
            Backend::Embedded(_) => None,
            Backend::Cluster(cluster) => Some(cluster.slices()),
        }
    }

    /// Phase 1: every listed image not yet done ends up in the staged
    /// features or the staged failures.
    pub(crate) async fn featurize(&self, phase: &Phase1<'_>) -> Result<Vec<TaskSummary>> {
        match self {
            Backend::Embedded(embedded) => Ok(vec![embedded.featurize(phase).await?]),
            Backend::Cluster(cluster) => cluster.featurize(phase).await,
        }
    }

    /// Phase 2: the merged PCA statistics of every staged feature vector
    /// `manifest` trusts (cluster tasks read the manifest themselves).
    pub(crate) async fn fit(
        &self,
        output: &Location,
        manifest: &StagingManifest,
    ) -> Result<PcaStats> {
        match self {
            Backend::Embedded(embedded) => embedded.fit(output, manifest).await,
            Backend::Cluster(cluster) => cluster.fit(output).await,
        }
    }

    /// Phase 3: `features/` from the staged features; returns its rows.
    pub(crate) async fn project(
        &self,
        output: &Location,
        manifest: &StagingManifest,
        pca: &PcaModel,
    ) -> Result<u64> {
        match self {
            Backend::Embedded(embedded) => embedded.project(output, manifest, pca).await,
            Backend::Cluster(cluster) => cluster.project(output, pca).await,
        }
    }

    /// The model that made the features, for `run.json`.
    pub(crate) fn model(&self, summaries: &[TaskSummary]) -> Result<FeatureModel> {
        match self {
            Backend::Embedded(embedded) => Ok(embedded.model()),
            Backend::Cluster(cluster) => cluster.model(summaries),
        }
    }

    pub(crate) fn model_load_s(&self) -> f64 {
        match self {
            Backend::Embedded(embedded) => embedded.model_load_s,
            // Executors load the model once, before they register.
            Backend::Cluster(_) => 0.0,
        }
    }

    pub(crate) fn cluster_record(&self, summaries: &[TaskSummary]) -> Option<ClusterRecord> {
        match self {
            Backend::Embedded(_) => None,
            Backend::Cluster(cluster) => Some(cluster.record(summaries)),
        }
    }
}

/// On a cluster, every slice must report exactly once: a slice reported
/// twice would count rows twice, a missing one would lose images.
pub(crate) fn check_slices(summaries: &[TaskSummary], slices: u32) -> Result<()> {
    let mut seen = vec![0u32; slices as usize];
    for summary in summaries {
        let Some(slice) = summary.slice else {
            bail!("internal error: a cluster task reported no slice");
        };
        let Some(count) = seen.get_mut(slice as usize) else {
            bail!("internal error: a task reported slice {slice} of {slices}");
        };
        *count += 1;
    }
    let twice: Vec<usize> = (0..seen.len()).filter(|&s| seen[s] > 1).collect();
    let missing: Vec<usize> = (0..seen.len()).filter(|&s| seen[s] == 0).collect();
    if !twice.is_empty() {
        bail!(
            "internal error: slice(s) {twice:?} were reported twice; the output was not committed"
        );
    }
    if !missing.is_empty() {
        bail!(
            "slice(s) {missing:?} of {slices} never reported: their images may be missing; \
             the output was not committed (rerun with --resume)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(n: u32) -> TaskSummary {
        TaskSummary {
            slice: Some(n),
            ..TaskSummary::default()
        }
    }

    #[test]
    fn every_slice_must_report_exactly_once() {
        check_slices(&[slice(1), slice(0), slice(2)], 3).unwrap();
        let err = check_slices(&[slice(0), slice(2)], 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[1] of 3 never reported"), "{err}");
        let err = check_slices(&[slice(0), slice(1), slice(1), slice(2)], 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[1] were reported twice"), "{err}");
        assert!(check_slices(&[slice(5)], 3).is_err());
        assert!(check_slices(&[TaskSummary::default()], 1).is_err());
    }
}
