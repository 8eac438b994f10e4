//! Error type shared by the customer-scoring models: the BG/NBD purchase model
//! (Fader, Hardie and Lee 2005, "Counting your customers the easy way"), the
//! Gamma-Gamma spend model (Fader, Hardie and Lee 2005, "RFM and CLV: using
//! iso-value curves"), the special functions they need and the optimiser that
//! fits them. Every message names the model (or function), the offending
//! parameter or input and its value, so a pipeline log line is actionable on
//! its own.

use thiserror::Error;

/// Everything that can go wrong while fitting or scoring a customer model.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ModelError {
    /// An observation or a function argument lies outside the model's domain
    /// (for example `t_x > T`, a negative weight, a non-finite value). `row` is
    /// the index of the offending record in the input slice, when there is one.
    #[error("{model}: invalid {name} = {value}{row_text}: {requirement}", row_text = row_suffix(*.row))]
    InvalidInput {
        /// Model or function that rejected the value, e.g. `"BG/NBD"`.
        model: &'static str,
        /// Name of the offending input, e.g. `"t_x"`.
        name: &'static str,
        /// The offending value.
        value: f64,
        /// What the value must satisfy, in words.
        requirement: String,
        /// Index of the offending record in the input data, if applicable.
        row: Option<usize>,
    },

    /// A model parameter is not usable (non-finite, or outside its open
    /// domain such as `r > 0`).
    #[error("{model}: invalid parameter {name} = {value}: {requirement}")]
    InvalidParameter {
        /// Model whose parameter is invalid.
        model: &'static str,
        /// Parameter name as in the paper, e.g. `"alpha"`.
        name: &'static str,
        /// The offending value.
        value: f64,
        /// What the parameter must satisfy.
        requirement: &'static str,
    },

    /// The data set has no usable observations (empty, or the total weight is
    /// zero), so there is nothing to fit.
    #[error("{model}: no usable observations ({reason})")]
    EmptyData {
        /// Model that was being fitted.
        model: &'static str,
        /// Why the data set is unusable.
        reason: String,
    },

    /// Two slices that must be parallel have different lengths.
    #[error("{context}: length mismatch: {left_name} has {left} elements but {right_name} has {right}")]
    LengthMismatch {
        /// Function that received the slices.
        context: &'static str,
        /// Name of the first slice.
        left_name: &'static str,
        /// Length of the first slice.
        left: usize,
        /// Name of the second slice.
        right_name: &'static str,
        /// Length of the second slice.
        right: usize,
    },

    /// The maximum-likelihood fit stopped without meeting its convergence
    /// criteria (iteration budget exhausted, or the gradient at the final
    /// point is not small).
    #[error("{model} fit did not converge after {iterations} iterations (last log-likelihood {log_likelihood})")]
    NotConverged {
        /// Model that was being fitted.
        model: &'static str,
        /// Optimiser iterations spent.
        iterations: usize,
        /// Log-likelihood at the best point found.
        log_likelihood: f64,
    },

    /// The data do not identify the model: the maximum-likelihood estimate
    /// does not exist or lies on the boundary of the parameter space (e.g.
    /// no customer made a repeat purchase).
    #[error("{model}: maximum-likelihood estimate does not exist: {reason}")]
    Degenerate {
        /// Model that was being fitted.
        model: &'static str,
        /// What makes the data degenerate.
        reason: String,
    },

    /// The objective could not be evaluated to a finite number at the
    /// starting point (or anywhere the optimiser looked).
    #[error("{model}: log-likelihood is not finite at {at}")]
    NonFiniteObjective {
        /// Model that was being fitted.
        model: &'static str,
        /// Description of the parameter point, e.g. `"r=1, alpha=2, ..."`.
        at: String,
    },

    /// The Gauss hypergeometric function could not be evaluated reliably
    /// for these arguments (outside the supported domain, series not
    /// convergent within the term budget, or cancellation destroyed the
    /// precision).
    #[error("hyp2f1(a = {a}, b = {b}; c = {c}; z = {z}): {reason}")]
    Hypergeometric {
        /// First numerator parameter.
        a: f64,
        /// Second numerator parameter.
        b: f64,
        /// Denominator parameter.
        c: f64,
        /// Argument.
        z: f64,
        /// Why the evaluation failed.
        reason: String,
    },

    /// A statistic is undefined for these data, e.g. a correlation when one
    /// variable has zero variance.
    #[error("{context}: {reason}")]
    Undefined {
        /// Function that computed the statistic.
        context: &'static str,
        /// Why it is undefined.
        reason: String,
    },
}

fn row_suffix(row: Option<usize>) -> String {
    match row {
        Some(i) => format!(" in row {i}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_model_parameter_and_value() {
        let e = ModelError::InvalidInput {
            model: "BG/NBD",
            name: "t_x",
            value: 40.0,
            requirement: "must satisfy 0 <= t_x <= T = 38.86".into(),
            row: Some(7),
        };
        assert_eq!(
            e.to_string(),
            "BG/NBD: invalid t_x = 40 in row 7: must satisfy 0 <= t_x <= T = 38.86"
        );
        let e = ModelError::NotConverged {
            model: "BG/NBD",
            iterations: 5000,
            log_likelihood: -9582.5,
        };
        assert_eq!(
            e.to_string(),
            "BG/NBD fit did not converge after 5000 iterations (last log-likelihood -9582.5)"
        );
    }
}
