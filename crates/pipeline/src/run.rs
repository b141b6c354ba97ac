//! `verger run`: list → featurize → fit PCA → project → commit, the one
//! protocol for embedded and cluster runs.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use verger_datafusion::FeaturizeOptions;
use verger_image::views::ViewSet;
use verger_model::ModelFile;
use verger_output::{
    Counts, DoneWork, JobIdentity, OutputDir, PCA_MODEL_FILE, Parameters, RUN_FILE, RunRecord,
    StageTimes, StagingSpec, TaskSummary, Timings, Versions,
};
use verger_store::{Location, NameFilter};

use crate::backend::{Backend, Phase1, check_slices};
use crate::config::{RunConfig, Start};
use crate::restart::{Changes, prepare};
use crate::tables::write_commit_tables;

/// Runs the whole job and returns its record (also written as `run.json`).
pub async fn run(config: &RunConfig) -> Result<RunRecord> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339();
    config.validate()?;
    let filter = NameFilter::new(&config.glob)?;
    let input = open_input(config, &filter).await?;
    // The model before the output: a missing model, or one of the other
    // precision, must neither create the output folder nor cost an
    // --overwrite its previous result.
    let (explicit, precision) = (config.model.clone(), config.precision);
    let model =
        tokio::task::spawn_blocking(move || ModelFile::locate(explicit.as_deref(), precision))
            .await??;
    let output_location = OutputDir::open_location(&config.output, &input)?;
    let backend = Backend::start(config, model, &output_location).await?;
    let job = JobIdentity {
        input: input.display_root().to_string(),
        glob: config.glob.clone(),
        model_sha256: backend.model_sha256(),
        max_pixels: config.max_pixels,
        views: config.views.map(ViewSet::names).unwrap_or_default(),
    };
    let attempt = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut prepared = prepare(
        config.start,
        &attempt,
        config.checkpoint_every,
        &input,
        &filter,
        output_location.clone(),
        &job,
    )
    .await?;
    let output = prepared.output;
    let done_paths = Arc::new(std::mem::take(&mut prepared.done.paths));

    // 1. featurize
    let phase = Instant::now();
    let manifest = &prepared.manifest;
    let staging = StagingSpec {
        attempt: attempt.clone(),
        checkpoint_every: config.checkpoint_every,
        max_errors: config.max_errors,
        errors_before: prepared.done.error_rows,
    };
    let summaries = backend
        .featurize(&Phase1 {
            input: &input,
            filter: &filter,
            output: &output_location,
            options: FeaturizeOptions {
                max_pixels: config.max_pixels,
                model_sha256: job.model_sha256.clone(),
                views: config.views,
            },
            staging,
            done_paths,
        })
        .await?;
    if let Some(slices) = backend.slices() {
        check_slices(&summaries, slices)?;
    }
    let staged = match Staged::check(&summaries, &prepared.done) {
        Ok(staged) => staged,
        Err(e) => {
            if summaries.iter().map(|s| s.listed).sum::<u64>() == 0 {
                output.remove_staging().await?;
            }
            return Err(e);
        }
    };
    let featurize_s = phase.elapsed().as_secs_f64();
    staged.check_enough(&input, &config.glob, &output_location)?;

    // 2. fit
    let phase = Instant::now();
    let stats = backend.fit(&output_location, manifest).await?;
    if stats.count() != staged.rows {
        bail!(
            "internal error: PCA was fitted on {} rows but {} were staged",
            stats.count(),
            staged.rows
        );
    }
    let pca = verger_pca::fit(&stats, config.k, config.center)?;
    output.write_json(PCA_MODEL_FILE, &pca).await?;
    let pca_fit_s = phase.elapsed().as_secs_f64();

    // 3. project, then the commit's tables
    let phase = Instant::now();
    let features = backend.project(&output_location, manifest, &pca).await?;
    let tables = write_commit_tables(&output_location, manifest, &job.views).await?;
    let mut counts = staged.counts(features, tables.errors, config.start, prepared.changes)?;
    counts.views = tables.views;
    if counts.views != counts.features * job.views.len() as u64 {
        bail!(
            "internal error: {} rows in views/ for {} photos of {} views; the output was not committed",
            counts.views,
            counts.features,
            job.views.len()
        );
    }
    if tables.inventory != counts.listed {
        bail!(
            "internal error: {} images listed but {} in the inventory; the output was not committed",
            counts.listed,
            tables.inventory
        );
    }
    let project_write_s = phase.elapsed().as_secs_f64();

    let record = RunRecord {
        format: RunRecord::FORMAT.to_string(),
        version: RunRecord::VERSION,
        counts,
        job,
        parameters: parameters(config, &output_location),
        model: backend.model(&summaries)?,
        timings: Timings {
            model_load_s: backend.model_load_s(),
            featurize_s,
            pca_fit_s,
            project_write_s,
            total_s: started.elapsed().as_secs_f64(),
            stages: staged.stages,
        },
        explained_variance: pca.explained_variance.clone(),
        failures: tables.failures,
        versions: Versions {
            verger: env!("CARGO_PKG_VERSION").to_string(),
            datafusion: datafusion::DATAFUSION_VERSION.to_string(),
        },
        cluster: backend.cluster_record(&summaries),
        started_at,
        finished_at: chrono::Utc::now().to_rfc3339(),
    };
    output.write_json(RUN_FILE, &record).await?;
    output.commit().await?;
    // After _SUCCESS, so a kill before it leaves the checkpoints to resume
    // from; a leftover `_staging/` is removed by the next --resume.
    output.remove_staging().await?;
    Ok(record)
}

/// Opens `--input` and asks for one listing page: an empty input or a store
/// that refuses us is reported before anything is loaded or written.
async fn open_input(config: &RunConfig, filter: &NameFilter) -> Result<Location> {
    let input = Location::parse(&config.input).context("cannot open --input")?;
    let first = verger_store::list_images(&input, filter)
        .next()
        .await
        .transpose()?;
    if first.is_none() {
        bail!(
            "no files matching {:?} under {}: nothing to do (check --input and --glob)",
            config.glob,
            input.display_root()
        );
    }
    Ok(input)
}

fn parameters(config: &RunConfig, output: &Location) -> Parameters {
    Parameters {
        output: output.display_root().to_string(),
        k: config.k,
        center: config.center,
        batch_size: config.batch_size,
        partitions: config.partitions,
        threads: match config.is_cluster() {
            true => None,
            false => Some(config.engine_config().threads),
        },
        max_errors: config.max_errors,
        checkpoint_every: config.checkpoint_every,
    }
}

/// What the checkpoints hold once phase 1 is over: the earlier run's work
/// plus this run's, checked against what was listed.
#[derive(Debug, Clone, PartialEq)]
struct Staged {
    listed: u64,
    skipped: u64,
    rows: u64,
    errors: u64,
    stages: StageTimes,
}

impl Staged {
    /// Every listed image is in exactly one checkpoint: done before (and
    /// still listed), featurized now, or failed now.
    fn check(summaries: &[TaskSummary], done: &DoneWork) -> Result<Staged> {
        let sum = |f: fn(&TaskSummary) -> u64| summaries.iter().map(f).sum::<u64>();
        let (listed, skipped) = (sum(|s| s.listed), sum(|s| s.skipped));
        let (new_rows, new_errors) = (sum(|s| s.rows), sum(|s| s.errors));
        if done.rows() != skipped {
            bail!(
                "the input changed since the interrupted run: it had done {} images, \
                 {skipped} of which are still listed. Rerun with --overwrite",
                done.rows()
            );
        }
        if listed == 0 {
            bail!("no files matched: nothing to do (check --input and --glob)");
        }
        let (rows, errors) = (done.staged_rows + new_rows, done.error_rows + new_errors);
        if rows + errors != listed {
            bail!(
                "internal error: {listed} images listed but {rows} featurized + {errors} errors; \
                 the output is incomplete and was not committed"
            );
        }
        let stages = summaries
            .iter()
            .fold(StageTimes::default(), |all, s| all.add(&s.stages));
        Ok(Staged {
            listed,
            skipped,
            rows,
            errors,
            stages,
        })
    }

    /// PCA needs at least two feature vectors.
    fn check_enough(&self, input: &Location, glob: &str, output: &Location) -> Result<()> {
        if self.rows < 2 {
            bail!(
                "only {} of {} images under {} (glob {glob:?}) could be featurized (see the \
                 failures in {}/_staging/errors/): PCA needs at least 2",
                self.rows,
                self.listed,
                input.display_root(),
                output.display_root()
            );
        }
        Ok(())
    }

    /// The run's counts, once phase 3 and the commit's tables are written.
    fn counts(&self, features: u64, errors: u64, start: Start, changes: Changes) -> Result<Counts> {
        if features != self.rows || errors != self.errors {
            bail!(
                "internal error: {} rows and {} failures were staged but {features} and {errors} \
                 written; the output was not committed",
                self.rows,
                self.errors
            );
        }
        let incremental = start == Start::Incremental;
        Ok(Counts {
            listed: self.listed,
            features,
            errors,
            resumed: if incremental { 0 } else { self.skipped },
            unchanged: if incremental { self.skipped } else { 0 },
            removed: changes.removed,
            views: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use verger_output::{FailureCount, FailureKind};

    use super::*;

    fn task(listed: u64, skipped: u64, rows: u64, errors: u64) -> TaskSummary {
        TaskSummary {
            listed,
            skipped,
            rows,
            errors,
            failures: FailureCount::tally([(FailureKind::Corrupt, errors)]),
            ..TaskSummary::default()
        }
    }

    fn done(staged_rows: u64, error_rows: u64) -> DoneWork {
        DoneWork {
            staged_rows,
            error_rows,
            ..DoneWork::default()
        }
    }

    #[test]
    fn features_plus_errors_must_equal_listed() {
        let staged = Staged::check(&[task(10, 4, 5, 1), task(6, 0, 4, 2)], &done(3, 1)).unwrap();
        assert_eq!((staged.listed, staged.rows, staged.errors), (16, 12, 4));
        let err = Staged::check(&[task(10, 0, 5, 1)], &done(0, 0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10 images listed but 5 featurized + 1 errors"),
            "{err}"
        );
    }

    #[test]
    fn done_work_that_is_no_longer_listed_means_the_input_changed() {
        let err = Staged::check(&[task(10, 3, 6, 0)], &done(4, 0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("input changed"), "{err}");
        assert!(Staged::check(&[task(0, 0, 0, 0)], &done(0, 0)).is_err());
    }

    #[test]
    fn counts_say_what_was_resumed_or_reused() {
        let staged = Staged::check(&[task(10, 4, 5, 1)], &done(3, 1)).unwrap();
        let resumed = staged
            .counts(8, 2, Start::Resume, Changes::default())
            .unwrap();
        assert_eq!((resumed.resumed, resumed.unchanged), (4, 0));
        let changes = Changes {
            removed: 2,
            ..Changes::default()
        };
        let updated = staged.counts(8, 2, Start::Incremental, changes).unwrap();
        assert_eq!(
            (updated.resumed, updated.unchanged, updated.removed),
            (0, 4, 2)
        );
        assert!(
            staged
                .counts(7, 2, Start::Resume, Changes::default())
                .is_err()
        );
        assert!(
            staged
                .check_enough(
                    &Location::parse("s3://b/in").unwrap(),
                    "*.jpg",
                    &Location::parse("s3://b/out").unwrap()
                )
                .is_ok()
        );
    }
}
