//! How a run starts at its output: fresh, over an earlier result, after an
//! interruption, or as an update. Whatever the case, what comes out is an
//! output ready for phase 1 and the work its checkpoints already hold.

use std::collections::HashMap;

use anyhow::{Result, bail};
use futures::StreamExt;
use verger_output::{
    DoneWork, FileVersion, JOB_FILE, JobIdentity, OutputDir, ResumePoint, RunRecord, SUCCESS_FILE,
    find_resume_point,
};
use verger_store::{Location, NameFilter};

use crate::config::Start;

/// An output ready for phase 1.
pub(crate) struct Prepared {
    pub output: OutputDir,
    /// What the checkpoints already hold (empty on a fresh start).
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

/// Prepares `location` for a run of `job`, as `start` says.
pub(crate) async fn prepare(
    start: Start,
    checkpoint_every: usize,
    input: &Location,
    filter: &NameFilter,
    location: Location,
    job: &JobIdentity,
) -> Result<Prepared> {
    let fresh = |output: OutputDir| Prepared {
        output,
        done: DoneWork::default(),
        changes: Changes::default(),
    };
    match start {
        Start::Fresh | Start::Overwrite => {
            let output = OutputDir::prepare(location, start == Start::Overwrite).await?;
            output.write_json(JOB_FILE, job).await?;
            Ok(fresh(output))
        }
        Start::Resume => match find_resume_point(&location, job).await? {
            ResumePoint::Fresh => {
                let output = OutputDir::prepare(location, false).await?;
                output.write_json(JOB_FILE, job).await?;
                Ok(fresh(output))
            }
            ResumePoint::Interrupted(done) => {
                tracing::info!(
                    done = done.paths.len(),
                    checkpoints = done.checkpoints,
                    "resuming: images already done are skipped"
                );
                Ok(Prepared {
                    output: OutputDir::reopen(location),
                    done,
                    changes: Changes::default(),
                })
            }
        },
        Start::Incremental => {
            let changes = carry_unchanged(checkpoint_every, input, filter, &location, job).await?;
            Ok(Prepared {
                done: DoneWork::read(&location).await?,
                output: OutputDir::reopen(location),
                changes,
            })
        }
    }
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
