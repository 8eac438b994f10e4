//! The extract phase of a run: every source listed, downloaded, read in parallel (each on
//! a blocking thread), the incremental carry-over of unchanged files, and the error
//! budgets checked. [`run_sources`] returns one [`SourceMetrics`] per source.

use std::path::{Path, PathBuf};

use crate::config::SourcePlan;
use crate::names::{DOWNLOAD_DIR, QUARANTINE_DIR, RAW_DIR};
use crate::remote::StorageSettings;
use crate::warehouse::Warehouse;

use super::incremental::{self, PreviousLoad};
use super::{ExtractError, FileMetrics, InputFile, SourceMetrics};

/// What the extract phase of one run reads and where it writes.
#[derive(Debug, Clone, Copy)]
pub struct SourcesRun<'a> {
    /// The sources, in pipeline file order.
    pub sources: &'a [SourcePlan],
    /// The warehouse, for the previous load of an incremental source.
    pub warehouse: &'a Warehouse,
    /// The pipeline's name (its runs in the `runs` table).
    pub pipeline: &'a str,
    /// Reload every file of incremental sources (`--full-refresh`).
    pub full_refresh: bool,
    /// The run's staging folder: downloads, `raw/` and `quarantine/` go under it.
    pub staging: &'a Path,
    /// The run id, stamped on quarantined rows.
    pub run_id: &'a str,
    /// Rows per record batch.
    pub batch_size: usize,
}

/// Lists every source's input files, before any is read: a location that matches no
/// file is a configuration error found before the (long) extract starts.
pub async fn list_all(sources: &[SourcePlan], storage: &StorageSettings) -> Result<Vec<Vec<InputFile>>, ExtractError> {
    let mut inputs = Vec::with_capacity(sources.len());
    for source in sources {
        inputs.push(super::list_inputs(source, storage).await?);
    }
    Ok(inputs)
}

/// Extracts every source of `run` from its listed `inputs` (one list per source, as
/// [`list_all`] returns them): unchanged files of an incremental source are carried over
/// from the previous load, the others downloaded and read. Fails on the first source (in
/// pipeline order) that fails or is over its error budget.
pub async fn run_sources(
    run: &SourcesRun<'_>,
    inputs: Vec<Vec<InputFile>>,
) -> Result<Vec<SourceMetrics>, ExtractError> {
    let raw_dir = run.staging.join(RAW_DIR);
    let quarantine_dir = run.staging.join(QUARANTINE_DIR);
    let mut local = Vec::with_capacity(inputs.len());
    let mut carry = Vec::with_capacity(inputs.len());
    for (source, files) in run.sources.iter().zip(inputs) {
        let previous = if source.incremental && !run.full_refresh {
            incremental::previous_load(run.warehouse, run.pipeline, source).await
        } else {
            None
        };
        let (to_read, carried) = match &previous {
            Some(p) => incremental::split(files, p),
            None => (files, Vec::new()),
        };
        let dir = run.staging.join(DOWNLOAD_DIR).join(&source.name);
        local.push(super::fetch_inputs(to_read, &dir).await?);
        carry.push(previous.map(|p| (p, carried)));
    }
    let mut tasks = Vec::with_capacity(run.sources.len());
    for (source, files) in run.sources.iter().zip(local) {
        let (source, run_id, raw, quarantine) = (
            source.clone(),
            run.run_id.to_string(),
            raw_dir.clone(),
            quarantine_dir.clone(),
        );
        let batch_size = run.batch_size;
        tasks.push(tokio::task::spawn_blocking(move || {
            let threads = super::default_threads();
            super::extract_source(&source, &files, &run_id, &raw, &quarantine, batch_size, threads)
        }));
    }
    let mut metrics = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for (task, source) in tasks.into_iter().zip(run.sources) {
        match task.await {
            Ok(Ok(m)) => metrics.push(m),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) => {
                first_error.get_or_insert(ExtractError::Task {
                    task: format!("extract of source `{}`", source.name),
                    source: join,
                });
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    for ((source, m), carry) in run.sources.iter().zip(metrics.iter_mut()).zip(carry) {
        if let Some((previous, carried)) = carry.filter(|(_, c)| !c.is_empty()) {
            let dirs = (raw_dir.join(&source.name), quarantine_dir.join(&source.name));
            carry_over(source, m, &previous, carried, dirs).await?;
        }
    }
    for (source, m) in run.sources.iter().zip(&metrics) {
        super::check_error_budget(source, m)?;
    }
    Ok(metrics)
}

/// Copies the rows of the unchanged files `carried` from the previous load into this run's
/// raw and quarantine files of `source` (`dirs`), checks the count against what that run
/// recorded, adds their keys to the source's key filter, and merges them into `m`.
async fn carry_over(
    source: &SourcePlan,
    m: &mut SourceMetrics,
    previous: &PreviousLoad,
    carried: Vec<FileMetrics>,
    (raw_dir, quarantine_dir): (PathBuf, PathBuf),
) -> Result<(), ExtractError> {
    let failed = |message: String| ExtractError::CarryOver {
        source_name: source.name.clone(),
        previous_run: previous.run_id.clone(),
        message,
    };
    let raw_file = raw_dir.join("part-00001.parquet");
    let q_file = quarantine_dir.join("part-00001.parquet");
    let raw_schema = super::validate::raw_schema(&source.schema);
    let copied = incremental::carry_over(
        previous,
        &carried,
        &raw_file,
        &raw_schema,
        &q_file,
        &super::quarantine_schema(),
    )
    .await
    .map_err(failed)?;
    let expected: u64 = carried.iter().map(|f| f.rows_loaded).sum();
    if copied.0 != expected {
        return Err(failed(format!(
            "that run recorded {expected} rows for the unchanged files but its raw table holds {}",
            copied.0
        )));
    }
    if let Some(mut seen) = m.seen_keys.take() {
        // The carried rows' keys join the filter, so copies across runs are found too.
        let file = raw_file.clone();
        let added = tokio::task::spawn_blocking(move || seen.add_parquet(&file).map(|()| seen)).await;
        let added = added.map_err(|join| ExtractError::Task {
            task: format!("key filter of source `{}`", source.name),
            source: join,
        })?;
        m.seen_keys = Some(added.map_err(failed)?);
    }
    incremental::merge_carried(m, carried, raw_file, q_file, copied);
    Ok(())
}
