//! Scores against the simulated truth: `patron generate` writes each buyer's true state to
//! [`crate::generate::TRUTH_CUSTOMERS_FILE`], and `patron evaluate --truth FILE` asks how
//! well each churn score of a run ranks (AUC) and predicts (Brier) the customers who had
//! truly dropped out by the run's as-of day.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::backtest;

/// A truth file that cannot be used, with the file and the line (1-based, header = 1).
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    /// The file cannot be opened or read.
    #[error("{path}: {source}")]
    Read {
        /// The truth file.
        path: PathBuf,
        /// The OS or CSV error.
        source: csv::Error,
    },
    /// A required column is missing from the header.
    #[error("{path}: no column `{column}` in the header (a truth_customers.csv of `patron generate` has it)")]
    MissingColumn {
        /// The truth file.
        path: PathBuf,
        /// The column.
        column: &'static str,
    },
    /// A value does not parse.
    #[error("{path}, line {line}, column `{column}`: {message}")]
    Value {
        /// The truth file.
        path: PathBuf,
        /// The line.
        line: u64,
        /// The column.
        column: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Each buyer's dropout instant (`None` while alive at the end of the simulated window), by
/// canonical customer id.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    /// The file read.
    pub path: PathBuf,
    /// Dropout instant per customer id.
    pub dropout: HashMap<String, Option<DateTime<Utc>>>,
}

impl Truth {
    /// Reads a `truth_customers.csv`: the columns `customer_id` and `dropout_at` (RFC 3339,
    /// empty while alive); other columns are ignored.
    pub fn read(path: &Path) -> Result<Self, TruthError> {
        let read_err = |source| TruthError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut reader = csv::Reader::from_path(path).map_err(read_err)?;
        let headers = reader.headers().map_err(read_err)?.clone();
        let find = |column: &'static str| {
            headers
                .iter()
                .position(|h| h == column)
                .ok_or_else(|| TruthError::MissingColumn {
                    path: path.to_path_buf(),
                    column,
                })
        };
        let (id_col, dropout_col) = (find("customer_id")?, find("dropout_at")?);
        let mut dropout = HashMap::new();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(read_err)?;
            let line = record.position().map_or(i as u64 + 2, |p| p.line());
            let value_err = |column, message: String| TruthError::Value {
                path: path.to_path_buf(),
                line,
                column,
                message,
            };
            let id = record.get(id_col).unwrap_or_default().trim().to_uppercase();
            if id.is_empty() {
                return Err(value_err("customer_id", "empty".into()));
            }
            let at = match record.get(dropout_col).unwrap_or_default().trim() {
                "" => None,
                text => Some(
                    DateTime::parse_from_rfc3339(text)
                        .map_err(|e| value_err("dropout_at", format!("`{text}` is not an RFC 3339 instant: {e}")))?
                        .with_timezone(&Utc),
                ),
            };
            if dropout.insert(id.clone(), at).is_some() {
                return Err(value_err("customer_id", format!("`{id}` appears twice")));
            }
        }
        Ok(Truth {
            path: path.to_path_buf(),
            dropout,
        })
    }

    /// True when the customer had dropped out by the end of `day` (UTC); `None` for a
    /// customer the truth does not know.
    pub fn dropped_out_by(&self, customer_id: &str, day: NaiveDate) -> Option<bool> {
        let end = day.succ_opt()?.and_hms_opt(0, 0, 0)?.and_utc();
        self.dropout.get(customer_id).map(|at| at.is_some_and(|t| t < end))
    }
}

/// One score against the true dropped-out state.
#[derive(Debug, Clone, Serialize)]
pub struct TruthScore {
    /// The column: `churn_risk`, `1 - p_alive` or `p_no_purchase_90d`.
    pub score: String,
    /// Buyers with the score and a known true state.
    pub customers: u64,
    /// AUC for "dropped out by the as-of day".
    pub auc: Option<f64>,
    /// Brier score of the score read as the probability of having dropped out.
    pub brier: Option<f64>,
}

/// The scores of one run against the truth.
#[derive(Debug, Clone, Serialize)]
pub struct TruthEvaluation {
    /// The truth file.
    pub file: String,
    /// The as-of day of the scores: dropped out means before its end.
    pub as_of: String,
    /// Scored buyers the truth knows.
    pub customers: u64,
    /// Of them, truly dropped out by the as-of day.
    pub dropped_out: u64,
    /// Scored buyers the truth does not know (left out).
    pub unknown_customers: u64,
    /// Each score, in the order given.
    pub scores: Vec<TruthScore>,
}

/// Compares each named score column (one value per id of `ids`, `None` where the run has
/// none) with the true state as of `as_of`.
pub fn evaluate(
    truth: &Truth,
    as_of: NaiveDate,
    ids: &[String],
    scores: &[(&str, Vec<Option<f64>>)],
) -> TruthEvaluation {
    let state: Vec<Option<bool>> = ids.iter().map(|id| truth.dropped_out_by(id, as_of)).collect();
    let known = state.iter().filter(|s| s.is_some()).count() as u64;
    let dropped_out = state.iter().filter(|s| **s == Some(true)).count() as u64;
    let scores = scores
        .iter()
        .map(|(name, values)| {
            let (probabilities, positive): (Vec<f64>, Vec<bool>) = values
                .iter()
                .zip(&state)
                .filter_map(|(v, s)| Some(((*v)?, (*s)?)))
                .unzip();
            TruthScore {
                score: (*name).to_string(),
                customers: probabilities.len() as u64,
                auc: backtest::auc(&probabilities, &positive),
                brier: backtest::brier(&probabilities, &positive),
            }
        })
        .collect();
    TruthEvaluation {
        file: truth.path.to_string_lossy().into_owned(),
        as_of: as_of.to_string(),
        customers: known,
        dropped_out,
        unknown_customers: ids.len() as u64 - known,
        scores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truth(text: &str) -> Result<Truth, TruthError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("truth_customers.csv");
        std::fs::write(&path, text).expect("write");
        Truth::read(&path)
    }

    #[test]
    fn dropped_out_by_compares_with_the_end_of_the_day() {
        let t = truth(
            "customer_id,acquired_at,dropout_at\nc1,2024-01-01T00:00:00Z,2025-03-01T10:00:00Z\nC2,2024-01-01T00:00:00Z,\n",
        )
        .expect("reads");
        let day = |d| NaiveDate::parse_from_str(d, "%Y-%m-%d").expect("date");
        assert_eq!(t.dropped_out_by("C1", day("2025-02-28")), Some(false));
        assert_eq!(t.dropped_out_by("C1", day("2025-03-01")), Some(true));
        assert_eq!(t.dropped_out_by("C2", day("2030-01-01")), Some(false));
        assert_eq!(t.dropped_out_by("C3", day("2030-01-01")), None);
    }

    #[test]
    fn bad_truth_files_name_the_line_and_column() {
        let e = truth("customer_id,dropout_at\nC1,yesterday\n").expect_err("bad instant");
        assert!(e.to_string().contains("line 2, column `dropout_at`"), "{e}");
        let e = truth("customer_id\nC1\n").expect_err("no dropout_at");
        assert!(e.to_string().contains("no column `dropout_at`"), "{e}");
        let e = truth("customer_id,dropout_at\nC1,\nc1,\n").expect_err("twice");
        assert!(
            e.to_string().contains("line 3") && e.to_string().contains("twice"),
            "{e}"
        );
    }

    #[test]
    fn scores_are_ranked_against_the_true_state() {
        let t =
            truth("customer_id,dropout_at\nA,2025-01-01T00:00:00Z\nB,\nC,2025-01-02T00:00:00Z\nD,\n").expect("reads");
        let ids: Vec<String> = ["A", "B", "C", "D", "E"].iter().map(|s| s.to_string()).collect();
        let day = NaiveDate::from_ymd_opt(2025, 6, 1).expect("date");
        let perfect = vec![Some(0.9), Some(0.1), Some(0.8), Some(0.2), Some(0.5)];
        let reversed = vec![Some(0.1), Some(0.9), Some(0.2), None, Some(0.5)];
        let r = evaluate(&t, day, &ids, &[("good", perfect), ("bad", reversed)]);
        assert_eq!((r.customers, r.dropped_out, r.unknown_customers), (4, 2, 1));
        assert_eq!(r.scores[0].auc, Some(1.0));
        assert_eq!(r.scores[0].customers, 4);
        let brier = (0.1f64.powi(2) + 0.1f64.powi(2) + 0.2f64.powi(2) + 0.2f64.powi(2)) / 4.0;
        assert!((r.scores[0].brier.expect("brier") - brier).abs() < 1e-12);
        assert_eq!(r.scores[1].auc, Some(0.0));
        assert_eq!(r.scores[1].customers, 3);
    }
}
