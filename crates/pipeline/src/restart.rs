//! How a run starts at its output: fresh, over an earlier result, after an
//! interruption, or as an update. Whatever the case, what comes out is an
//! output ready for phase 1 and the work its checkpoints already hold.

use std::collections::HashMap;

use anyhow::{Result, bail};
use futures::StreamExt;
use verger_output::{
    DoneWork, FileVersion, JOB_FILE, JobIdentity, OutputDir, ResumePoint, RunRecord, SUCCESS_FILE,
    StagingManifest, find_resume_point,
};
use verger_store::{Location, NameFilter};

use crate::config::Start;

/// An output ready for phase 1.
pub(crate) struct Prepared {
    pub output: OutputDir,
    /// The checkpoints this run trusts: those found at the start, and its own.
    pub manifest: StagingManifest,
    /// What the trusted earlier checkpoints hold (empty on a fresh start).
    pub done: DoneWork,
    /// What `--incremental` found (zero otherwise).
    pub changes: Changes,
}

/// What `--incremental` found, comparing the input with the earlier inventory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Changes {
    pub unchanged: u64,
    pub changed: u64,
    pub new: u64,
    pub removed: u64,
}

/// Prepares `location` for attempt `attempt` of a run of `job`, as `start`
/// says: the output is ready, the job file and the staging manifest written.
pub(crate) async fn prepare(
    start: Start,
    attempt: &str,
    checkpoint_every: usize,
    input: &Location,
    filter: &NameFilter,
    location: Location,
    job: &JobIdentity,
) -> Result<Prepared> {
    let mut changes = Changes::default();
    let output = match start {
        Start::Fresh | Start::Overwrite => fresh(location, start == Start::Overwrite, job).await?,
        Start::Resume => match find_resume_point(&location, job).await? {
            ResumePoint::Fresh => fresh(location, false, job).await?,
            ResumePoint::Interrupted => OutputDir::reopen(location),
        },
        Start::Incremental => {
            changes = carry_unchanged(checkpoint_every, input, filter, &location, job).await?;
            OutputDir::reopen(location)
        }
    };
    let manifest = StagingManifest::begin(output.location(), attempt).await?;
    let done = DoneWork::read(output.location(), &manifest).await?;
    if done.rows() > 0 {
        tracing::info!(
            done = done.paths.len(),
            checkpoints = done.checkpoints,
            "images already done are skipped"
        );
    }
    Ok(Prepared {
        output,
        manifest,
        done,
        changes,
    })
}

async fn fresh(location: Location, overwrite: bool, job: &JobIdentity) -> Result<OutputDir> {
    let output = OutputDir::prepare(location, overwrite).await?;
    output.write_json(JOB_FILE, job).await?;
    Ok(output)
}

/// Checks that `output` is a complete run of the same job, compares its
/// inventory with the input, and carries the rows of unchanged images into
/// staging; what is left is an interrupted run of the new input.
async fn carry_unchanged(
    checkpoint_every: usize,
    input: &Location,
    filter: &NameFilter,
    output: &Location,
    job: &JobIdentity,
) -> Result<Changes> {
    let root = output.display_root();
    if !output.exists(SUCCESS_FILE).await? {
        bail!(
            "--incremental updates a complete earlier run, and {root} holds none (no _SUCCESS): \
             finish an interrupted run with --resume, or start one without --incremental"
        );
    }
    let previous = RunRecord::read(output).await?;
    let differences = previous.job.differences(job);
    if !differences.is_empty() {
        bail!(
            "--incremental needs the same job as the earlier run at {root} ({}); \
             run with --overwrite to start over",
            differences.join("; ")
        );
    }
    let inventory = verger_output::read_inventory(output).await?;
    let (unchanged, mut changes) = compare(input, filter, &inventory).await?;
    changes.removed = inventory.len() as u64 - changes.unchanged - changes.changed;
    let carried = verger_output::carry_unchanged(output, job, &unchanged, checkpoint_every).await?;
    tracing::info!(
        unchanged = changes.unchanged,
        changed = changes.changed,
        new = changes.new,
        removed = changes.removed,
        carried_features = carried.features,
        carried_errors = carried.errors,
        "incremental: only new and changed images will be featurized"
    );
    Ok(changes)
}

/// The listed files whose version the inventory already holds, and counts
/// of unchanged, changed and new files (`removed` is left to the caller).
async fn compare(
    input: &Location,
    filter: &NameFilter,
    inventory: &HashMap<String, FileVersion>,
) -> Result<(HashMap<String, FileVersion>, Changes)> {
    let mut changes = Changes::default();
    let mut unchanged = HashMap::new();
    let mut images = verger_store::list_images(input, filter);
    while let Some(image) = images.next().await {
        let image = image?;
        let now = FileVersion {
            size: image.size,
            last_modified_ms: image.last_modified_ms,
            e_tag: image.e_tag.clone(),
        };
        match inventory.get(&image.path) {
            Some(was) if was.unchanged(&now) => {
                unchanged.insert(image.path, now);
            }
            Some(_) => changes.changed += 1,
            None => changes.new += 1,
        }
    }
    changes.unchanged = unchanged.len() as u64;
    Ok((unchanged, changes))
}
