//! What a fitted model reports: its parameters and fit statistics, as the run manifest and
//! the `model_params` table show them. Below the model steps, which all produce one.

use std::collections::BTreeMap;

use serde::Serialize;

/// One fitted model, as reported in the manifest and `model_params`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// `bgnbd` or `gamma_gamma`.
    pub model: String,
    /// Parameter name to value.
    pub params: BTreeMap<String, f64>,
    /// Maximised log-likelihood.
    pub log_likelihood: f64,
    /// Optimiser iterations.
    pub iterations: u64,
    /// Whether the optimiser met its convergence criterion.
    pub converged: bool,
    /// Fit wall time in milliseconds.
    pub fit_ms: u64,
    /// Customers the model was fitted on.
    pub customers: u64,
    /// Distinct inputs the likelihood was evaluated on (grouped triples for BG/NBD).
    pub distinct_inputs: u64,
}

impl ModelReport {
    /// The report with a note for `model_params`.
    pub(crate) fn with_note(self, note: &str) -> (ModelReport, Option<String>) {
        (self, Some(note.to_string()))
    }
}
