//! Backtest math for `patron evaluate`: the holdout length (`90d`, `12w`, `6m`), the
//! per-customer mean absolute error of predicted purchases, the rank-based AUC of a score
//! for a binary outcome (here churn_risk for "no purchase in the holdout"), and the
//! prediction of one customer's holdout purchases from the fitted BG/NBD model. Plain sync
//! Rust over slices; reading and writing the warehouse is the `evaluate` module's job.

use std::fmt;

use super::bgnbd::{self, BgNbdParams};
use super::error::ModelError;

/// Days in a month for `<n>m` holdouts: the mean Gregorian month, 365.25 / 12.
pub const DAYS_PER_MONTH: f64 = 365.25 / 12.0;

/// Longest holdout accepted, in days (100 years): beyond it the text is surely a typo.
pub const MAX_HOLDOUT_DAYS: u32 = 36_525;

/// A holdout length as given on the command line, and its length in whole days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldoutSpec {
    /// The text as given, e.g. `12w`.
    pub text: String,
    /// The length in days (`6m` = 183: months of 365.25 / 12 days, rounded).
    pub days: u32,
}

impl HoldoutSpec {
    /// Parses `<n>d` (days), `<n>w` (weeks), `<n>m` (months of 365.25 / 12 days, rounded to
    /// whole days) or a plain number of days; `n` is a positive whole number. Zero, negative,
    /// fractional, unknown units and lengths over [`MAX_HOLDOUT_DAYS`] are rejected with a
    /// message saying what is accepted (for clap's `value_parser`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let bad = || {
            format!("`{text}` is not a holdout length: use days `90d`, weeks `12w`, months `6m` or a number of days")
        };
        let (number, unit) = match trimmed.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => (&trimmed[..i], c.to_ascii_lowercase()),
            Some(_) => (trimmed, 'd'),
            None => return Err(bad()),
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        let days = match unit {
            'd' => n as f64,
            'w' => n as f64 * 7.0,
            'm' => (n as f64 * DAYS_PER_MONTH).round(),
            _ => return Err(bad()),
        };
        if days < 1.0 {
            return Err(format!("`{text}`: the holdout must be at least one day"));
        }
        if days > f64::from(MAX_HOLDOUT_DAYS) {
            return Err(format!("`{text}`: the holdout must be at most {MAX_HOLDOUT_DAYS} days"));
        }
        Ok(HoldoutSpec {
            text: trimmed.to_string(),
            days: days as u32,
        })
    }
}

impl fmt::Display for HoldoutSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} days)", self.text, self.days)
    }
}

/// Expected purchases in the `t` time units after the calibration end for a customer with
/// history `(x, t_x, t_cal)`: FHL eq. 10, or for a customer first seen on the calibration
/// end (`t_cal = 0`, nothing observed yet) the unconditional eq. 7, which is its limit, as
/// the `bgnbd_expected_purchases` SQL function does. `params` is `None` when the run could
/// not fit BG/NBD (no repeat purchases): then the prediction is 0, the limit of the
/// likelihood and what the SQL function returns.
///
/// # Errors
/// The model's [`ModelError`] for invalid parameters, history or horizon.
pub fn predicted_purchases(
    params: Option<&BgNbdParams>,
    t: f64,
    x: f64,
    t_x: f64,
    t_cal: f64,
) -> Result<f64, ModelError> {
    let Some(params) = params else {
        return Ok(0.0);
    };
    bgnbd::predict_purchases(params, t, x, t_x, t_cal)
}

/// Mean absolute error `sum |predicted - actual| / n`; `None` when the slices are empty or
/// of different lengths.
pub fn mae(predicted: &[f64], actual: &[f64]) -> Option<f64> {
    if predicted.is_empty() || predicted.len() != actual.len() {
        return None;
    }
    let total: f64 = predicted.iter().zip(actual).map(|(p, a)| (p - a).abs()).sum();
    Some(total / predicted.len() as f64)
}

/// Area under the ROC curve of `scores` for the outcome `positive` (a higher score should
/// mean positive): the Mann-Whitney statistic, the share of (positive, negative) pairs in
/// which the positive scores higher, ties counted 1/2. 1 = perfect ranking, 0 = reversed,
/// 0.5 = no better than chance. O(n log n): average ranks over tied scores.
///
/// `None` when either class is empty (the AUC is undefined), the slices differ in length,
/// or a score is not finite.
pub fn auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    if scores.len() != positive.len() || scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let n_pos = positive.iter().filter(|p| **p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| scores[i].total_cmp(&scores[j]));
    // Sum of the 1-based ranks of the positives, each tie group sharing its mean rank.
    let mut rank_sum_pos = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let mean_rank = (start + 1 + end) as f64 / 2.0;
        let positives_in_group = order[start..end].iter().filter(|&&i| positive[i]).count();
        rank_sum_pos += mean_rank * positives_in_group as f64;
        start = end;
    }
    let (n_pos, n_neg) = (n_pos as f64, n_neg as f64);
    let u = rank_sum_pos - n_pos * (n_pos + 1.0) / 2.0;
    Some(u / (n_pos * n_neg))
}

/// Share of customers `patron evaluate` reports precision at (the top 10% by score).
pub const TOP_SHARE: f64 = 0.10;
/// Bins of the calibration table `patron evaluate` reports.
pub const CALIBRATION_BINS: usize = 10;

/// Brier score: mean squared difference between the predicted probability and the outcome
/// (0 = perfect, 0.25 = always saying 1/2). `None` for empty or unequal slices.
pub fn brier(probabilities: &[f64], positive: &[bool]) -> Option<f64> {
    if probabilities.is_empty() || probabilities.len() != positive.len() {
        return None;
    }
    let total: f64 = probabilities
        .iter()
        .zip(positive)
        .map(|(p, y)| (p - f64::from(u8::from(*y))).powi(2))
        .sum();
    Some(total / probabilities.len() as f64)
}

/// Precision among the top `share` of scores (highest first; at least one customer): the
/// share of positives among them. Ties at the cut are broken by order of the input, so
/// pass customers in a fixed order. `None` for empty or unequal slices.
pub fn precision_at_top(scores: &[f64], positive: &[bool], share: f64) -> Option<f64> {
    if scores.is_empty() || scores.len() != positive.len() || scores.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let k = ((scores.len() as f64 * share).ceil() as usize).clamp(1, scores.len());
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
    let hits = order[..k].iter().filter(|&&i| positive[i]).count();
    Some(hits as f64 / k as f64)
}

/// One bin of a calibration table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CalibrationBin {
    /// Lower edge of the predicted probability (inclusive).
    pub from: f64,
    /// Upper edge (exclusive; the last bin includes 1).
    pub to: f64,
    /// Customers whose prediction falls in the bin.
    pub customers: u64,
    /// Their mean predicted probability.
    pub mean_predicted: f64,
    /// The share of them for whom the outcome happened.
    pub observed_rate: f64,
}

/// Calibration table: predictions in `bins` equal-width bins of [0, 1]; empty bins are
/// left out. A calibrated model has `mean_predicted` close to `observed_rate` in every bin.
pub fn calibration_table(probabilities: &[f64], positive: &[bool], bins: usize) -> Vec<CalibrationBin> {
    let bins = bins.max(1);
    let mut sums = vec![(0u64, 0.0, 0u64); bins];
    for (p, y) in probabilities.iter().zip(positive) {
        if !p.is_finite() {
            continue;
        }
        let b = ((p.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += p;
        sums[b].2 += u64::from(*y);
    }
    sums.into_iter()
        .enumerate()
        .filter(|(_, s)| s.0 > 0)
        .map(|(b, (n, total, hits))| CalibrationBin {
            from: b as f64 / bins as f64,
            to: (b + 1) as f64 / bins as f64,
            customers: n,
            mean_predicted: total / n as f64,
            observed_rate: hits as f64 / n as f64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AUC by definition: every (positive, negative) pair, ties 1/2. O(n^2), for checking.
    fn auc_by_pairs(scores: &[f64], positive: &[bool]) -> f64 {
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if positive[i] && !positive[j] {
                    pairs += 1.0;
                    wins += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn perfect_ranking_has_auc_one_and_reversed_zero() {
        let scores = [0.1, 0.2, 0.8, 0.9];
        assert_eq!(auc(&scores, &[false, false, true, true]), Some(1.0));
        assert_eq!(auc(&scores, &[true, true, false, false]), Some(0.0));
    }

    #[test]
    fn all_tied_scores_have_auc_one_half() {
        assert_eq!(auc(&[0.3; 5], &[true, false, true, false, false]), Some(0.5));
    }

    #[test]
    fn a_worked_example_with_a_tie_across_classes() {
        // Positives 0.9, 0.5, 0.3; negatives 0.5, 0.2. Pairs (6): 0.9 beats both (2),
        // 0.5 ties 0.5 (1/2) and beats 0.2 (1), 0.3 loses to 0.5 and beats 0.2 (1):
        // 4.5 / 6 = 0.75.
        let scores = [0.9, 0.5, 0.3, 0.5, 0.2];
        let positive = [true, true, true, false, false];
        assert_eq!(auc(&scores, &positive), Some(0.75));
        assert_eq!(auc_by_pairs(&scores, &positive), 0.75);
    }

    #[test]
    fn rank_auc_equals_the_pairwise_definition_on_many_ties() {
        // Deterministic pseudo-random scores on a coarse grid, so ties are frequent.
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        let scores: Vec<f64> = (0..300).map(|_| (next() % 7) as f64 / 7.0).collect();
        let positive: Vec<bool> = scores.iter().map(|s| (next() % 10) as f64 / 10.0 < *s).collect();
        let fast = auc(&scores, &positive).unwrap();
        let slow = auc_by_pairs(&scores, &positive);
        assert!((fast - slow).abs() < 1e-12, "{fast} vs {slow}");
        assert!(fast > 0.5, "scores were made informative: {fast}");
    }

    #[test]
    fn auc_is_undefined_without_both_classes_or_with_bad_input() {
        assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(auc(&[0.1, 0.2], &[false, false]), None);
        assert_eq!(auc(&[], &[]), None);
        assert_eq!(auc(&[0.1], &[true, false]), None);
        assert_eq!(auc(&[f64::NAN, 0.2], &[true, false]), None);
    }

    #[test]
    fn mae_is_the_mean_absolute_difference() {
        // |1.5 - 1| + |0 - 2| + |3 - 3| = 2.5 over 3.
        assert_eq!(mae(&[1.5, 0.0, 3.0], &[1.0, 2.0, 3.0]), Some(2.5 / 3.0));
        assert_eq!(mae(&[], &[]), None);
        assert_eq!(mae(&[1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn holdout_lengths_parse_in_days_weeks_and_months() {
        let days = |t: &str| HoldoutSpec::parse(t).map(|h| h.days);
        assert_eq!(days("90d"), Ok(90));
        assert_eq!(days("90"), Ok(90));
        assert_eq!(days("12w"), Ok(84));
        assert_eq!(days("12W"), Ok(84));
        // 6 x 365.25 / 12 = 182.625 -> 183; 1 month = 30.44 -> 30; 12 months = 365.25 -> 365.
        assert_eq!(days("6m"), Ok(183));
        assert_eq!(days("1m"), Ok(30));
        assert_eq!(days("12m"), Ok(365));
    }

    #[test]
    fn zero_negative_and_garbage_holdouts_are_rejected() {
        for bad in [
            "0",
            "0d",
            "0w",
            "0m",
            "-5d",
            "1.5d",
            "d",
            "",
            "  ",
            "90x",
            "ninety",
            "9 0d",
            "99999999999999999999d",
            "100000d",
        ] {
            assert!(HoldoutSpec::parse(bad).is_err(), "`{bad}` accepted");
        }
    }

    #[test]
    fn predictions_follow_the_model_and_new_customers_use_the_unconditional_expectation() {
        // Published CDNOW estimates (Fader, Hardie and Lee 2005); FHL: a customer with
        // x = 2, t_x = 30.43, T = 38.86 expects 1.226 purchases in the next 39 weeks.
        let p = BgNbdParams::new(0.243, 4.414, 0.793, 2.426).unwrap();
        let e = predicted_purchases(Some(&p), 39.0, 2.0, 30.43, 38.86).unwrap();
        assert!((e - 1.226).abs() < 1e-3, "{e}");
        assert_eq!(
            predicted_purchases(Some(&p), 39.0, 0.0, 0.0, 0.0),
            bgnbd::expected_purchases_unconditional(&p, 39.0)
        );
        assert!(
            predicted_purchases(Some(&p), 39.0, 2.0, 40.0, 38.86).is_err(),
            "t_x > T"
        );
        assert_eq!(predicted_purchases(None, 39.0, 0.0, 0.0, 10.0), Ok(0.0), "no fit: 0");
    }

    #[test]
    fn brier_precision_and_calibration_by_hand() {
        let p = [0.9, 0.8, 0.3, 0.1];
        let y = [true, false, true, false];
        // (0.01 + 0.64 + 0.49 + 0.01) / 4
        assert!((brier(&p, &y).unwrap() - 0.2875).abs() < 1e-12);
        assert_eq!(precision_at_top(&p, &y, 0.25), Some(1.0));
        assert_eq!(precision_at_top(&p, &y, 0.5), Some(0.5));
        // At least one customer, even for a tiny share.
        assert_eq!(precision_at_top(&p, &y, 0.001), Some(1.0));
        let table = calibration_table(&p, &y, 2);
        assert_eq!(table.len(), 2);
        assert_eq!((table[0].customers, table[0].observed_rate), (2, 0.5));
        assert!((table[1].mean_predicted - 0.85).abs() < 1e-12);
        assert_eq!(calibration_table(&[1.0], &[true], 10)[0].from, 0.9);
        assert_eq!(brier(&[], &[]), None);
    }
}
