//! `patron lineage <table>.<column>`: which source columns a column is computed from,
//! traced through the stages' logical plans (no data is read).

use clap::Args;

use super::{CliError, OutputFormat, PipelineArgs};
use crate::config::Overrides;
use crate::pipeline::lineage_graph;
use crate::transform::dag::suggest;
use crate::transform::lineage::ColumnRef;

/// Arguments of `patron lineage`.
#[derive(Debug, Args)]
pub struct LineageArgs {
    /// The column, as `table.column` (e.g. `customer_scores.clv`).
    pub column: String,
    /// The pipeline whose stages to trace.
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Output format: `text`, or `json` (`{"column", "direct", "sources"}`).
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// The same as `--format json` (kept, hidden, for one release).
    #[arg(long, hide = true)]
    pub json: bool,
}

/// Prints the direct inputs and the ultimate sources of a column.
pub async fn run(args: LineageArgs) -> Result<(), CliError> {
    let (table, column) = args
        .column
        .split_once('.')
        .ok_or_else(|| CliError::usage(format!("`{}`: expected table.column", args.column)))?;
    let plan = args.pipeline.load(&Overrides::default())?;
    let (project, _order, graph) = lineage_graph(&plan).await?;
    let Some(columns) = graph.columns(table) else {
        let hint = suggest(table, project.stages.keys().map(String::as_str))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        return Err(CliError::usage(format!("`{table}` is not a stage table{hint}")));
    };
    if !columns.iter().any(|c| c == column) {
        let hint = suggest(column, columns.iter().map(String::as_str))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        return Err(CliError::usage(format!("`{table}` has no column `{column}`{hint}")));
    }
    let target = ColumnRef {
        table: table.into(),
        column: column.into(),
    };
    let direct = graph.direct(&target).unwrap_or_default();
    let sources = graph.sources(&target).unwrap_or_default();
    if args.json || args.format == OutputFormat::Json {
        let list = |s: &std::collections::BTreeSet<ColumnRef>| s.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let doc =
            serde_json::json!({ "column": target.to_string(), "direct": list(&direct), "sources": list(&sources) });
        outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        outln!("{target}");
        outln!(
            "  computed from: {}",
            direct.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
        );
        outln!("  source columns:");
        for c in &sources {
            outln!("    {c}");
        }
    }
    Ok(())
}
