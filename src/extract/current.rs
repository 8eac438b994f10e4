//! The `raw_<source>_current` views: a source's raw table as of the as-of day, one row per
//! primary key. Extract keeps every loaded row in the raw table (a repeated key is not an
//! error: exports re-send changed rows) and lists the superseded copies in the
//! `duplicates` table; this view is where they leave, so a staging model only selects,
//! renames and casts.
//!
//! The view is generated from the declared schema, one per source, and runs as a stage of
//! its own (it depends on the as-of day, so the churn model's snapshots re-run it as of
//! their own days):
//! - rows dated after the as-of day (by the schema's `eventTime`) are left out first, so a
//!   copy loaded later but dated after the as-of day cannot hide the earlier one;
//! - of the keys the `duplicates` table names, the copy loaded last (latest file, then
//!   latest line) is kept. Text key values are compared without surrounding spaces and
//!   null key values count as equal, as the duplicate scan compares them;
//! - every other row passes straight through, unsorted: only the rows of repeated keys are
//!   ranked. The short lists come first in each join (a hash join holds its first side in
//!   memory while the other streams past). The rows of repeated keys are grouped (each row
//!   is a group of its own) before the ranking's sort: without that, DataFusion pushed the
//!   sort below the join, onto every row of the source, and a 10M-line source was sorted in
//!   full to rank the few rows of repeated keys.

use crate::config::SourcePlan;
use crate::names::{self, SOURCE_FILE_COLUMN, SOURCE_LINE_COLUMN, duplicates as d};
use crate::quote::{ident, literal};

/// The layer the generated views are listed under (the stage graph, the docs).
pub const CURRENT_LAYER: &str = "sources";

/// The description of `source`'s current view, for the docs and the stage graph.
pub fn current_description(source: &SourcePlan) -> String {
    let raw = names::raw_table(&source.name);
    let cut = match &source.schema.event_time {
        Some(t) => format!("rows with `{t}` before the end of the as-of day"),
        None => "every row (the schema declares no `eventTime`)".to_string(),
    };
    if source.schema.primary_key.is_empty() {
        format!("`{raw}` as of the as-of day: {cut}.")
    } else {
        format!(
            "`{raw}` as of the as-of day, one row per ({}): {cut}, the copy loaded last of each key. Generated from the source's schema.",
            source.schema.primary_key.join(", ")
        )
    }
}

/// The query of `source`'s current view (see the module doc).
pub fn current_sql(source: &SourcePlan) -> String {
    let raw = ident(&names::raw_table(&source.name));
    let cut = match &source.schema.event_time {
        Some(t) => format!(" WHERE {} < $as_of_end", ident(t)),
        None => String::new(),
    };
    let key = &source.schema.primary_key;
    if key.is_empty() {
        return format!("SELECT * FROM {raw}{cut}");
    }
    let (file, line) = (ident(SOURCE_FILE_COLUMN), ident(SOURCE_LINE_COLUMN));
    let aliases: Vec<String> = (0..key.len()).map(|i| ident(&format!("__key_{i}"))).collect();
    let keyed_cols: Vec<String> = key
        .iter()
        .zip(&aliases)
        .map(|(k, a)| format!("{} AS {a}", super::duplicates::compared_key(source, "", k)))
        .collect();
    let keys = aliases.join(", ");
    let k_keys: Vec<String> = aliases.iter().map(|a| format!("k.{a}")).collect();
    let same_key: Vec<String> = aliases
        .iter()
        .map(|a| format!("(k.{a} IS NOT DISTINCT FROM r.{a})"))
        .collect();
    format!(
        "WITH keyed AS (\n    SELECT *, {keyed_cols}\n    FROM {raw}{cut}\n),\n\
         repeated AS (\n    SELECT DISTINCT {k_keys}\n    FROM {dups} d\n    RIGHT SEMI JOIN keyed k\n        \
         ON d.{d_source} = {source_name} AND k.{file} = d.{d_file} AND k.{line} = d.{d_line}\n),\n\
         copies AS (\n    SELECT k.{file}, k.{line}, {k_keys}\n    FROM repeated r\n    RIGHT SEMI JOIN keyed k ON {same_key}\n    \
         GROUP BY k.{file}, k.{line}, {k_keys}\n),\n\
         older AS (\n    SELECT {file}, {line}\n    FROM (\n        SELECT\n            {file},\n            {line},\n            \
         ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {file} DESC, {line} DESC) AS newness\n        \
         FROM copies\n    )\n    WHERE newness > 1\n)\n\
         SELECT k.* EXCLUDE ({keys})\nFROM older o\nRIGHT ANTI JOIN keyed k ON k.{file} = o.{file} AND k.{line} = o.{line}",
        keyed_cols = keyed_cols.join(", "),
        k_keys = k_keys.join(", "),
        dups = ident(names::DUPLICATES_TABLE),
        d_source = ident(d::SOURCE),
        d_file = ident(d::FILE),
        d_line = ident(d::LINE),
        source_name = literal(&source.name),
        same_key = same_key.join(" AND "),
    )
}
