//! `patron explain CUSTOMER_ID`: prints one customer's card ([`crate::report::explain`])
//! as text sections or JSON.

use clap::Args;
use serde_json::Value;

use super::{CliError, OutputFormat, ReadArgs};
use crate::report::explain::card;

/// Arguments of `patron explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The customer id (trimmed and upper-cased, as the staging stages do).
    pub customer_id: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// The warehouse to read.
    #[command(flatten)]
    pub read: ReadArgs,
}

/// Runs the command.
pub async fn run(args: ExplainArgs) -> Result<(), CliError> {
    let warehouse = args.read.open()?;
    let card = card(&warehouse, &args.customer_id).await?;
    match args.format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&card)?),
        OutputFormat::Text => out!("{}", render_text(&card)),
    }
    Ok(())
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string(),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn rows_text(out: &mut String, title: &str, rows: Option<&Value>) {
    let rows = rows.and_then(Value::as_array).cloned().unwrap_or_default();
    out.push_str(&format!("\n{title} ({} latest)\n", rows.len()));
    for row in rows {
        if let Value::Object(map) = row {
            let line: Vec<String> = map.iter().map(|(k, v)| format!("{k}={}", show(v))).collect();
            out.push_str(&format!("  {}\n", line.join("  ")));
        }
    }
}

/// The card as text sections.
pub fn render_text(card: &Value) -> String {
    let mut out = format!(
        "customer {}  (as of {}, model version {})\n",
        show(&card["customer_id"]),
        show(&card["as_of"]),
        show(&card["model_version"])
    );
    let churn = &card["churn"];
    out.push_str(&format!(
        "\nchurn risk {} ({}) by {}\n  reasons: {}\n",
        show(&churn["risk"]),
        show(&churn["band"]),
        show(&churn["produced_by"]),
        churn["reasons"]
            .as_array()
            .map(|r| r.iter().map(show).collect::<Vec<_>>().join(", "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into())
    ));
    out.push_str("\nfacts\n");
    if let Value::Object(facts) = &card["facts"] {
        for (k, v) in facts {
            out.push_str(&format!("  {k:<24} {}\n", show(v)));
        }
    }
    out.push_str("\nscores\n");
    if let Value::Object(scores) = &card["scores"] {
        for (k, v) in scores {
            out.push_str(&format!(
                "  {k:<24} {:<28} {}\n",
                show(&v["value"]),
                show(&v["produced_by"])
            ));
        }
    }
    if let Value::Object(features) = &churn["features"] {
        out.push_str("\nchurn features\n");
        for (k, v) in features {
            if k != "customer_id" {
                out.push_str(&format!("  {k:<24} {}\n", show(v)));
            }
        }
    }
    rows_text(&mut out, "orders", card.get("orders"));
    rows_text(&mut out, "tickets", card.get("tickets"));
    rows_text(&mut out, "marketing events", card.get("marketing_events"));
    out
}
