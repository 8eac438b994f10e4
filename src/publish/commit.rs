//! The publish phase of a run: every staged table committed into the warehouse, one at a
//! time ([`commit`]), and, after the run is recorded, old Delta versions dropped
//! ([`retain_versions`]).
//!
//! Delta tables take one overwrite commit each; when a commit fails (or the run is
//! cancelled) the tables this run already committed are restored to their previous
//! versions, so the latest version of every table is the previous run's again. Parquet
//! folders are swapped in with renames, which cannot be rolled back: once started, that
//! publish finishes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::extract::SourceMetrics;
use crate::names::{self, DUPLICATES_DIR, QUARANTINE_DIR, RAW_DIR, TABLES_DIR};
use crate::storage::Layout;
use crate::transform::runner::StageMetrics;
use crate::warehouse::{Warehouse, WarehouseError};

use super::lock::WarehouseLock;
use super::manifest::PublishedTable;
use super::runs::{self, RunRecord};
use super::{PublishError, TableFormat, delta};

/// A staged table on its way into the warehouse.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Table name (as registered and served).
    pub name: String,
    /// `raw`, `quarantine`, `duplicates` or `table`.
    pub kind: String,
    /// Location under the warehouse: `raw/sales`, `tables/fct_customer`, ...
    pub location: String,
    /// The staged folder of Parquet files.
    pub staged: PathBuf,
    /// Rows in it.
    pub rows: u64,
    /// Columns the Delta table is partitioned by.
    pub partition_by: Vec<String>,
    /// The staged rows replace only the partitions they fall in (see
    /// [`StageMetrics::replaces_partitions`]).
    pub replace_partitions: bool,
    /// The stage's `@cluster_by` columns (sorted first; bloom filters).
    pub cluster_by: Vec<String>,
}

/// The tables a run publishes from its `staging` folder, in commit order: every source's
/// raw table and quarantine, the duplicates table (`duplicate_rows` rows), then every
/// stored stage of `stages`.
pub fn targets(staging: &Path, extract: &[SourceMetrics], duplicate_rows: u64, stages: &[StageMetrics]) -> Vec<Target> {
    let mut targets = Vec::new();
    for m in extract {
        targets.push(Target {
            name: names::raw_table(&m.source),
            kind: RAW_DIR.into(),
            location: format!("{RAW_DIR}/{}", m.source),
            staged: staging.join(RAW_DIR).join(&m.source),
            rows: m.rows_loaded,
            partition_by: Vec::new(),
            replace_partitions: false,
            cluster_by: Vec::new(),
        });
        targets.push(Target {
            name: format!("{}_{}", names::QUARANTINE_TABLE, m.source),
            kind: QUARANTINE_DIR.into(),
            location: format!("{QUARANTINE_DIR}/{}", m.source),
            staged: staging.join(QUARANTINE_DIR).join(&m.source),
            rows: m.quarantine_entries,
            partition_by: Vec::new(),
            replace_partitions: false,
            cluster_by: Vec::new(),
        });
    }
    targets.push(Target {
        name: names::DUPLICATES_TABLE.into(),
        kind: DUPLICATES_DIR.into(),
        location: DUPLICATES_DIR.into(),
        staged: staging.join(DUPLICATES_DIR),
        rows: duplicate_rows,
        partition_by: Vec::new(),
        replace_partitions: false,
        cluster_by: Vec::new(),
    });
    for m in stages.iter().filter(|m| m.materialized.is_stored()) {
        targets.push(Target {
            name: m.name.clone(),
            kind: "table".into(),
            location: format!("{TABLES_DIR}/{}", m.name),
            staged: staging.join(TABLES_DIR).join(&m.name),
            rows: m.rows,
            partition_by: m.partition_by.clone(),
            replace_partitions: m.replaces_partitions,
            cluster_by: m.cluster_by.clone(),
        });
    }
    targets
}

/// Where and how a run commits its tables.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    /// The warehouse.
    pub warehouse: &'a Warehouse,
    /// Delta tables or Parquet folders.
    pub format: TableFormat,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// The run id, recorded in every Delta commit.
    pub run_id: &'a str,
    /// The run's staging folder (the Parquet swap parks replaced folders under it).
    pub staging: &'a Path,
    /// Checked before every table: a run that lost the lock publishes nothing more.
    pub lock: &'a WarehouseLock,
    /// Cancelled to stop a Delta publish before its next table (see [`PublishError::Cancelled`]).
    pub cancel: &'a CancellationToken,
}

/// Commits every target, in order; returns the published tables. On failure nothing the
/// run committed stays the latest version (Delta; see the module doc).
pub async fn commit(c: &Commit<'_>, targets: &[Target]) -> Result<Vec<PublishedTable>, PublishError> {
    match c.format {
        TableFormat::Delta => commit_delta(c, targets).await,
        TableFormat::Parquet => swap_all(c, targets),
    }
}

/// Swaps every staged folder in place of its published one.
fn swap_all(c: &Commit<'_>, targets: &[Target]) -> Result<Vec<PublishedTable>, PublishError> {
    let retired = c.staging.join("retired");
    let mut tables = Vec::with_capacity(targets.len());
    for t in targets {
        c.lock.check()?;
        // Checked when the plan loads: the parquet format needs a local warehouse.
        let target = c.warehouse.local_path(&t.location).ok_or_else(|| {
            PublishError::Store(WarehouseError {
                location: c.warehouse.describe(&t.location),
                message: "the parquet format needs a local warehouse".into(),
            })
        })?;
        crate::failpoint::hit_with(|| format!("publish.before_commit.{}", t.name));
        super::swap_in(&t.staged, &target, &retired.join(&t.location))?;
        crate::failpoint::hit_with(|| format!("publish.after_commit.{}", t.name));
        tables.push(published(t, target.to_string_lossy().into_owned(), None));
    }
    Ok(tables)
}

/// Commits every staged table to its Delta table, one overwrite commit each; on a failure
/// or cancellation restores the tables already committed (when this run still holds the
/// lock).
async fn commit_delta(c: &Commit<'_>, targets: &[Target]) -> Result<Vec<PublishedTable>, PublishError> {
    let ctx = delta::publish_session();
    let mut committed: Vec<(String, String, Option<u64>)> = Vec::new();
    let mut tables = Vec::with_capacity(targets.len());
    for t in targets {
        let path = c.warehouse.describe(&t.location);
        crate::failpoint::hit_with(|| format!("publish.before_commit.{}", t.name));
        if c.cancel.is_cancelled() {
            if !committed.is_empty() && c.lock.check().is_ok() {
                rollback(c.warehouse, &committed).await;
            }
            return Err(PublishError::Cancelled);
        }
        let attempt = async {
            c.lock.check()?;
            if t.kind == "table" {
                crate::failpoint::error("publish.write_error").map_err(|source| PublishError::Io {
                    path: PathBuf::from(&path),
                    source,
                })?;
            }
            let layout = Layout {
                row_group_rows: c.row_group_rows,
                cluster_by: t.cluster_by.clone(),
                ..Layout::default()
            };
            let target = delta::CommitTarget {
                warehouse: c.warehouse,
                location: &t.location,
                run_id: c.run_id,
                partition_by: &t.partition_by,
                replace_partitions: t.replace_partitions,
                layout: &layout,
            };
            delta::overwrite_from_parquet(&ctx, &t.name, &t.staged, &target).await
        };
        match attempt.await {
            Ok(commit) => {
                committed.push((t.name.clone(), t.location.clone(), commit.previous));
                tables.push(published(t, path.clone(), Some(commit.version)));
            }
            Err(error) => {
                if !committed.is_empty() && c.lock.check().is_ok() {
                    rollback(c.warehouse, &committed).await;
                }
                return Err(error);
            }
        }
        crate::failpoint::hit_with(|| format!("publish.after_commit.{}", t.name));
    }
    Ok(tables)
}

/// The manifest's entry of target `t`, published at `path` (as `version` for Delta).
fn published(t: &Target, path: String, version: Option<u64>) -> PublishedTable {
    PublishedTable {
        name: t.name.clone(),
        kind: t.kind.clone(),
        path,
        location: t.location.clone(),
        version,
        rows: t.rows,
        bytes: folder_bytes(&t.staged),
    }
}

/// Restores each table committed by a failed publish to the version before it.
async fn rollback(warehouse: &Warehouse, committed: &[(String, String, Option<u64>)]) {
    for (name, location, previous) in committed.iter().rev() {
        let Some(previous) = previous else {
            // A table this run created: there is nothing older to show, and no succeeded
            // run names it.
            continue;
        };
        match delta::restore(warehouse, name, location, *previous).await {
            Ok(v) => tracing::warn!(table = %name, restored = previous, version = v, "publish failed: table restored"),
            Err(e) => tracing::error!(table = %name, error = %e, "publish failed and the table could not be restored"),
        }
    }
}

/// Bytes of the files directly in `dir` (0 when unreadable).
fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Vacuums every published Delta table, keeping the versions named by the `retain`
/// latest succeeded runs in the `runs` table (and the latest succeeded run of every
/// pipeline; this run is the latest). Returns the data files deleted. Failures are
/// logged: the run itself has succeeded and is recorded.
pub async fn retain_versions(warehouse: &Warehouse, tables: &[PublishedTable], retain: u64) -> usize {
    let records = match runs::read_all(warehouse).await {
        Ok(r) => r,
        Err(e) => {
            // Without the history, what to keep is unknown: delete nothing.
            tracing::warn!(error = %e, "runs table unreadable; vacuum skipped");
            return 0;
        }
    };
    let succeeded: Vec<&RunRecord> = records
        .iter()
        .filter(|r| r.outcome == names::OUTCOME_SUCCEEDED)
        .collect();
    let mut kept: Vec<&RunRecord> = succeeded.iter().rev().take(retain as usize).copied().collect();
    let pipelines: BTreeSet<&str> = succeeded.iter().map(|r| r.pipeline.as_str()).collect();
    kept.extend(
        pipelines
            .into_iter()
            .filter_map(|p| runs::latest_succeeded(&records, Some(p))),
    );
    let mut deleted = 0;
    for t in tables {
        let keep: Vec<u64> = kept
            .iter()
            .filter_map(|r| r.table_versions.get(&t.location).copied())
            .chain(t.version)
            .collect();
        match delta::vacuum(warehouse, &t.name, &t.location, &keep).await {
            Ok(n) => deleted += n,
            Err(e) => tracing::warn!(table = %t.name, error = %e, "vacuum failed"),
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_list_raw_and_quarantine_per_source_then_duplicates_then_stored_stages() {
        let staging = Path::new("/s");
        let source = SourceMetrics {
            source: "sales".into(),
            rows_loaded: 7,
            quarantine_entries: 2,
            ..SourceMetrics::default()
        };
        let stage = |name: &str, materialized| StageMetrics {
            name: name.into(),
            materialized,
            rows: 5,
            cluster_by: vec!["customer_id".into()],
            ..StageMetrics::default()
        };
        use crate::transform::spec::Materialized;
        let stages = [
            stage("fct_customer", Materialized::Table),
            stage("stg_sales", Materialized::View),
        ];
        let t = targets(staging, &[source], 1, &stages);
        let got: Vec<(&str, &str, &str, u64)> = t
            .iter()
            .map(|t| (t.name.as_str(), t.kind.as_str(), t.location.as_str(), t.rows))
            .collect();
        assert_eq!(
            got,
            [
                ("raw_sales", "raw", "raw/sales", 7),
                ("quarantine_sales", "quarantine", "quarantine/sales", 2),
                ("duplicates", "duplicates", "duplicates", 1),
                ("fct_customer", "table", "tables/fct_customer", 5),
            ]
        );
        assert_eq!(t[0].staged, Path::new("/s/raw/sales"));
        assert_eq!(t[3].staged, Path::new("/s/tables/fct_customer"));
        assert_eq!(t[3].cluster_by, ["customer_id"]);
    }
}
