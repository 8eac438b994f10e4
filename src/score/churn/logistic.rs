//! L2-regularised logistic adjustment of the purchase model's P(alive) on standardised
//! features ([`super::activity`]: `eta = logit(p_alive) + intercept + sum_j coef_j z_j`),
//! fitted by Fisher scoring with step halving, from zero (the purchase model itself).
//! Attributions are exact for a linear model: feature j moves `eta` by `coef_j * z_j`
//! (coefficient times standardised deviation from the training mean).

use super::ChurnError;
use super::activity::{self, Anchor};
use super::linalg::solve_spd;

/// A fitted model.
#[derive(Debug, Clone)]
pub struct Logistic {
    /// Training mean of each feature.
    pub mean: Vec<f64>,
    /// Training standard deviation of each feature (1 for constant features).
    pub scale: Vec<f64>,
    /// Coefficients on the standardised features.
    pub coef: Vec<f64>,
    /// Intercept.
    pub intercept: f64,
    /// Newton iterations.
    pub iterations: u64,
    /// Whether the largest step fell below the tolerance.
    pub converged: bool,
    /// Log-likelihood of the training data (without the penalty).
    pub log_likelihood: f64,
}

const MAX_ITER: usize = 100;
const TOLERANCE: f64 = 1e-8;

fn standardise(rows: &[Vec<f64>], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0.0; d];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v / n;
        }
    }
    let mut var = vec![0.0; d];
    for r in rows {
        for j in 0..d {
            var[j] += (r[j] - mean[j]).powi(2) / n;
        }
    }
    let scale = var
        .into_iter()
        .map(|v| if v.sqrt() > 1e-12 { v.sqrt() } else { 1.0 })
        .collect();
    (mean, scale)
}

/// `eta` of a standardised row at `beta` (intercept last).
fn eta(anchor: Anchor, row: &[f64], beta: &[f64]) -> f64 {
    let d = beta.len() - 1;
    anchor.offset + beta[d] + row.iter().zip(beta).map(|(a, b)| a * b).sum::<f64>()
}

/// Penalised log-likelihood and the plain log-likelihood at `beta` (intercept last).
fn objective(z: &[Vec<f64>], anchors: &[Anchor], y: &[bool], beta: &[f64], lambda: f64) -> (f64, f64) {
    let d = beta.len() - 1;
    let ll: f64 = z
        .iter()
        .zip(anchors)
        .zip(y)
        .map(|((row, &a), &yi)| activity::terms(a, eta(a, row, beta), yi).log_likelihood)
        .sum();
    let penalty = 0.5 * lambda * beta[..d].iter().map(|b| b * b).sum::<f64>();
    (ll - penalty, ll)
}

/// Fits the adjustment; `y` is "no purchase in the window", `lambda` the L2 penalty on the
/// standardised coefficients (not on the intercept), on the scale of the summed
/// log-likelihood.
///
/// # Errors
/// [`ChurnError::Fit`] when the rows are empty or ragged, or the Newton system is singular.
pub fn fit(rows: &[Vec<f64>], anchors: &[Anchor], y: &[bool], lambda: f64) -> Result<Logistic, ChurnError> {
    let d = rows.first().map_or(0, Vec::len);
    if rows.is_empty() || rows.len() != y.len() || rows.len() != anchors.len() || rows.iter().any(|r| r.len() != d) {
        return Err(ChurnError::Fit(
            "logistic regression needs equal-length, non-empty rows".into(),
        ));
    }
    let (mean, scale) = standardise(rows, d);
    let z: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| (0..d).map(|j| (r[j] - mean[j]) / scale[j]).collect())
        .collect();
    // From the purchase model itself (no adjustment).
    let mut beta = vec![0.0; d + 1];
    let (mut current, _) = objective(&z, anchors, y, &beta, lambda);
    let mut iterations = 0;
    let mut converged = false;
    while iterations < MAX_ITER {
        iterations += 1;
        // Gradient and negative Hessian of the penalised log-likelihood, in (features, intercept).
        let k = d + 1;
        let mut grad = vec![0.0; k];
        let mut hess = vec![0.0; k * k];
        for ((row, &anchor), &yi) in z.iter().zip(anchors).zip(y) {
            let t = activity::terms(anchor, eta(anchor, row, &beta), yi);
            let (w, r) = (t.weight, t.gradient);
            let x = |j: usize| if j == d { 1.0 } else { row[j] };
            for a in 0..k {
                let xa = x(a);
                grad[a] += xa * r;
                for b in 0..=a {
                    hess[a * k + b] += w * xa * x(b);
                }
            }
        }
        for a in 0..k {
            for b in 0..a {
                hess[b * k + a] = hess[a * k + b];
            }
        }
        for j in 0..d {
            grad[j] -= lambda * beta[j];
            hess[j * k + j] += lambda;
        }
        let step = solve_spd(&hess, &grad, k).ok_or_else(|| ChurnError::Fit("singular Newton system".into()))?;
        // Halve the step until the penalised likelihood does not fall.
        let mut t = 1.0;
        let mut accepted = false;
        for _ in 0..30 {
            let trial: Vec<f64> = beta.iter().zip(&step).map(|(b, s)| b + t * s).collect();
            let (value, _) = objective(&z, anchors, y, &trial, lambda);
            if value >= current - 1e-12 {
                beta = trial;
                current = value;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        let largest = step.iter().fold(0.0f64, |m, s| m.max((t * s).abs()));
        if largest < TOLERANCE || !accepted {
            // No step improves the objective any more: at the optimum up to rounding when
            // the step was already small.
            converged = largest < TOLERANCE || step.iter().all(|s| s.abs() < 1e-6);
            break;
        }
    }
    let (_, log_likelihood) = objective(&z, anchors, y, &beta, lambda);
    let intercept = beta[d];
    beta.truncate(d);
    Ok(Logistic {
        mean,
        scale,
        coef: beta,
        intercept,
        iterations: iterations as u64,
        converged,
        log_likelihood,
    })
}

impl Logistic {
    /// Each feature's move of `eta` (logit of P(alive)): coefficient x standardised deviation.
    pub fn contributions(&self, row: &[f64]) -> Vec<f64> {
        row.iter()
            .enumerate()
            .map(|(j, v)| self.coef[j] * (v - self.mean[j]) / self.scale[j])
            .collect()
    }

    /// The adjustment of `eta` (logit of P(alive)) for one row: `eta = offset + this`.
    pub fn logit(&self, row: &[f64]) -> f64 {
        self.intercept + self.contributions(row).iter().sum::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::super::sigmoid;
    use super::*;

    /// Rows drawn deterministically from a known logistic model: the fit recovers it.
    #[test]
    fn recovers_known_coefficients() {
        let (mut rows, mut anchors, mut y) = (Vec::new(), Vec::new(), Vec::new());
        let mut state = 12345u64;
        let mut u = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64) / ((1u64 << 53) as f64)
        };
        for _ in 0..20_000 {
            let a = u() * 4.0 - 2.0;
            let b = u() * 2.0;
            // A purchase model's anchor, and the true adjustment of its P(alive).
            let anchor = Anchor {
                offset: u() * 4.0 - 2.0,
                silent: u() * 0.8,
            };
            let alive = u() < sigmoid(anchor.offset + 0.5 + 1.5 * a - 2.0 * b);
            rows.push(vec![a, b]);
            anchors.push(anchor);
            y.push(!alive || u() < anchor.silent);
        }
        let m = fit(&rows, &anchors, &y, 1e-6).unwrap();
        assert!(m.converged);
        // Back on the original scale.
        let a = m.coef[0] / m.scale[0];
        let b = m.coef[1] / m.scale[1];
        let c = m.intercept - a * m.mean[0] - b * m.mean[1];
        assert!((a - 1.5).abs() < 0.15, "{a}");
        assert!((b + 2.0).abs() < 0.2, "{b}");
        assert!((c - 0.5).abs() < 0.2, "{c}");
        // Contributions add up to the logit.
        let row = [1.0, 0.5];
        let total: f64 = m.contributions(&row).iter().sum();
        assert!((m.intercept + total - m.logit(&row)).abs() < 1e-12);
    }

    #[test]
    fn penalty_shrinks_and_separable_data_stays_finite() {
        let rows: Vec<Vec<f64>> = (0..40).map(|i| vec![f64::from(i)]).collect();
        // No purchase from i = 20 on: P(alive) falls with i.
        let y: Vec<bool> = (0..40).map(|i| i >= 20).collect();
        let anchors = vec![
            Anchor {
                offset: 0.0,
                silent: 0.0
            };
            40
        ];
        let loose = fit(&rows, &anchors, &y, 0.1).unwrap();
        let tight = fit(&rows, &anchors, &y, 10.0).unwrap();
        assert!(loose.coef[0].is_finite() && loose.coef[0] < tight.coef[0] && tight.coef[0] < 0.0);
        // Without signal the fit stays at the purchase model.
        let flat: Vec<Vec<f64>> = vec![vec![1.0]; 40];
        let none = fit(&flat, &anchors, &(0..40).map(|i| i % 2 == 0).collect::<Vec<_>>(), 1.0).unwrap();
        assert!(none.coef[0].abs() < 1e-9 && none.intercept.abs() < 1e-9, "{none:?}");
    }
}
