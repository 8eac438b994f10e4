//! What the churn step reports (in the run manifest under `models.churn`) and how it fails.
//! Apart from the step itself, so the model step's metrics can carry the report without
//! importing the churn model.

use chrono::NaiveDate;
use serde::Serialize;

use crate::score::backtest;
use crate::score::report::ModelReport;

/// Churn step failures.
#[derive(Debug, thiserror::Error)]
pub enum ChurnError {
    /// A table could not be read or computed.
    #[error("churn model: reading `{table}`: {message}")]
    Input {
        /// The table or stage.
        table: String,
        /// What went wrong.
        message: String,
    },
    /// A learner could not be fitted.
    #[error("churn model: {0}")]
    Fit(String),
    /// BG/NBD or Gamma-Gamma could not be fitted as of a cut-off (too little or odd
    /// history then): the run keeps the purchase model as of the as-of day.
    #[error("fitting the purchase models as of {day}: {message}")]
    SnapshotFit {
        /// The cut-off.
        day: NaiveDate,
        /// The fit's error.
        message: String,
    },
}

/// One learner's (or the baseline's) result on the validation snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct LearnerScore {
    /// `logistic`, `gbt` or `mbgnbd_p_no_purchase` (`churn::BASELINE`) (the purchase model's P(no purchase)).
    pub learner: String,
    /// AUC for "no purchase in the holdout".
    pub auc: Option<f64>,
    /// Brier score of the uncalibrated probabilities.
    pub brier: Option<f64>,
}

/// What the churn step did; in the run manifest under `models.churn`.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    /// The model behind `p_no_purchase_90d`: `logistic`, `gbt`, or `mbgnbd` (the purchase
    /// model's own P(no purchase)).
    pub model: String,
    /// Why the run kept the purchase model, when it did.
    pub fallback_reason: Option<String>,
    /// The label window in days.
    pub holdout_days: u32,
    /// Training cut-off (features as of this day, labels from the next `holdout_days`).
    pub training_cutoff: String,
    /// Validation cut-off.
    pub validation_cutoff: String,
    /// Buyers in the training snapshot.
    pub training_customers: u64,
    /// Share of them who churned.
    pub training_churn_rate: Option<f64>,
    /// Buyers in the validation snapshot.
    pub validation_customers: u64,
    /// Share of them who churned.
    pub validation_churn_rate: Option<f64>,
    /// Validation buyers the learners and the baseline are compared on (a fixed half).
    pub selection_customers: u64,
    /// Validation buyers the Platt map is fitted on (the other half).
    pub calibration_customers: u64,
    /// Every learner and the baseline on the selection half: AUC and Brier of
    /// P(no purchase in the window), uncalibrated.
    pub validation: Vec<LearnerScore>,
    /// Platt scaling of the adjusted P(alive), `sigmoid(a * eta + b)`, fitted on the
    /// calibration half.
    pub platt_a: Option<f64>,
    /// See `platt_a`.
    pub platt_b: Option<f64>,
    /// Brier score of the deployed (calibrated) model's P(no purchase) on the selection half.
    pub calibrated_brier: Option<f64>,
    /// Its reliability table there: mean predicted vs observed "no purchase" per bin.
    pub calibration: Vec<backtest::CalibrationBin>,
    /// The deployed model's parameters (coefficients for logistic regression), also
    /// written to `model_params`.
    pub fit: Option<ModelReport>,
    /// Buyers scored as of the as-of day.
    pub scored_customers: u64,
}
