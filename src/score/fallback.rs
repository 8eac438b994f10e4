//! What scores customers when a model cannot be fitted: a warehouse load never fails
//! because the data do not identify BG/NBD or Gamma-Gamma (a shop in its first weeks, a
//! subscription business where everyone pays the same, a handful of customers).
//!
//! Each fallback is the limit the data point to, and is recorded ([`Fallback`]) in the
//! manifest, `model_params` and the run summary:
//!
//! - **BG/NBD → NBD** (`nbd`): when BG/NBD's fit fails (no interior optimum, typically its
//!   dropout parameter `b` running to infinity, or no convergence), the model without
//!   dropout is fitted: purchase rates gamma-distributed with shape `r` and rate `alpha`
//!   across customers, Poisson purchases ([`fit_nbd`]). Everyone is alive (`p_alive` = 1) and
//!   a customer's expected purchases in `t` are `(r + x) / (alpha + T) * t`, the posterior
//!   mean rate given `x` repeat purchases in `T`.
//! - **BG/NBD → pooled rate** (`pooled_rate`): when NBD cannot be fitted either (too few
//!   customers, or no variation), the same formula with `r` and `alpha` set from the data
//!   instead of fitted ([`pooled`]): `alpha` is the customers' mean observation length and
//!   `r / alpha` the pooled purchase rate (repeat purchases over observed time), so a
//!   customer's rate is their own `x / T` shrunk towards the pooled rate, half-way at the
//!   mean `T`. With no repeat purchase anywhere, the pooled rate is 0.
//! - **Gamma-Gamma → own mean spend** (`own_mean_spend`): when Gamma-Gamma cannot be
//!   fitted, a repeat buyer's expected order value is their own mean repeat spend, and a
//!   one-time buyer's their own average order value (the SQL stage's fallback).

use serde::Serialize;

use super::bgnbd::{BgNbdFit, RfSummary};
use super::error::ModelError;
use super::optimize::{MinimizeOptions, minimize};
use super::special::ln_gamma;

/// Below this dropout probability after a purchase (`a / (a + b)`), a BG/NBD fit is taken
/// as its NBD limit: `b` ran towards infinity, and the model's predictions lose their
/// precision (the hypergeometric series they need stops converging for some customers).
pub const NBD_LIMIT_DROPOUT: f64 = 1e-6;

/// The BG/NBD fit, or the error that sends it to the NBD fallback when it sits at the NBD
/// limit ([`NBD_LIMIT_DROPOUT`]).
///
/// # Errors
/// [`ModelError::Degenerate`] naming the dropout probability.
pub fn reject_nbd_limit(fit: BgNbdFit) -> Result<BgNbdFit, ModelError> {
    let p = &fit.params;
    let dropout = p.a / (p.a + p.b);
    if dropout < NBD_LIMIT_DROPOUT {
        return Err(ModelError::Degenerate {
            model: "BG/NBD",
            reason: format!(
                "the dropout probability a / (a + b) = {dropout:e} (a = {:e}, b = {:e}) ran to 0: the data show no dropout, the NBD limit",
                p.a, p.b
            ),
        });
    }
    Ok(fit)
}

/// Which model fell back, to what, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fallback {
    /// `BG/NBD` or `Gamma-Gamma`.
    pub model: &'static str,
    /// `nbd`, `pooled_rate` or `own_mean_spend` (module documentation).
    pub method: &'static str,
    /// Why the model could not be used (its fit's error).
    pub reason: String,
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} fell back to {} ({})", self.model, self.method, self.reason)
    }
}

/// The NBD model (BG/NBD without dropout): purchase rates Gamma(`r`, `alpha`) across
/// customers. `r` may be 0 for a pooled rate of 0 (nobody is expected to buy again).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NbdParams {
    /// Shape of the rate distribution (>= 0).
    pub r: f64,
    /// Rate of the rate distribution (> 0), in the model's time unit.
    pub alpha: f64,
}

impl NbdParams {
    /// Expected purchases in the next `t` of a customer with `x` repeat purchases in `t_cal`:
    /// the posterior mean rate `(r + x) / (alpha + t_cal)` times `t`.
    pub fn expected_purchases(&self, t: f64, x: f64, t_cal: f64) -> f64 {
        (self.r + x) / (self.alpha + t_cal) * t
    }
}

/// An NBD fit.
#[derive(Debug, Clone, PartialEq)]
pub struct NbdFit {
    /// The fitted parameters.
    pub params: NbdParams,
    /// Maximised log-likelihood.
    pub log_likelihood: f64,
    /// Optimiser iterations.
    pub iterations: usize,
    /// Whether the optimiser met its convergence criterion.
    pub converged: bool,
}

const NBD: &str = "NBD";

/// NBD log-likelihood of `x` purchases in `t_cal`, up to the `ln x!` term, which does not
/// depend on the parameters.
fn log_likelihood(p: &NbdParams, x: f64, t_cal: f64) -> f64 {
    let mut ll = ln_gamma(p.r + x) - ln_gamma(p.r) + p.r * (p.alpha / (p.alpha + t_cal)).ln();
    if x > 0.0 {
        ll += x * (t_cal / (p.alpha + t_cal)).ln();
    }
    ll
}

/// Fits NBD by maximum likelihood on the grouped `(x, T)` of `data` (`t_x` is not used:
/// without dropout, the time of the last purchase carries no information).
///
/// # Errors
/// [`ModelError::Degenerate`] when no customer has a repeat purchase or the optimum is on
/// the boundary (no variation in rates: `r` runs to infinity), [`ModelError::NotConverged`]
/// when the optimiser does not converge.
pub fn fit_nbd(data: &[RfSummary]) -> Result<NbdFit, ModelError> {
    let rows: Vec<&RfSummary> = data.iter().filter(|d| d.t_cal > 0.0 && d.weight > 0.0).collect();
    let (sum_w, sum_wx, sum_wt) = rows.iter().fold((0.0, 0.0, 0.0), |(w, wx, wt), d| {
        (w + d.weight, wx + d.weight * d.x, wt + d.weight * d.t_cal)
    });
    if sum_wx == 0.0 {
        return Err(ModelError::Degenerate {
            model: NBD,
            reason: "no customer has a repeat purchase, so the purchase rate is not identified".into(),
        });
    }
    // Start at alpha = mean T, r = pooled rate * alpha.
    let alpha0 = sum_wt / sum_w;
    let r0 = sum_wx / sum_wt * alpha0;
    let objective = |theta: &[f64]| {
        let p = NbdParams {
            r: theta[0].exp(),
            alpha: theta[1].exp(),
        };
        -rows
            .iter()
            .map(|d| d.weight * log_likelihood(&p, d.x, d.t_cal))
            .sum::<f64>()
    };
    let m = minimize(objective, &[r0.ln(), alpha0.ln()], &MinimizeOptions::default());
    super::bgnbd::check_interior(NBD, &["r", "alpha"], &m.params)?;
    if !m.value.is_finite() {
        return Err(ModelError::NonFiniteObjective {
            model: NBD,
            at: format!("r = {}, alpha = {}", m.params[0].exp(), m.params[1].exp()),
        });
    }
    if !m.converged {
        return Err(ModelError::NotConverged {
            model: NBD,
            iterations: m.iterations,
            log_likelihood: -m.value,
        });
    }
    Ok(NbdFit {
        params: NbdParams {
            r: m.params[0].exp(),
            alpha: m.params[1].exp(),
        },
        log_likelihood: -m.value,
        iterations: m.iterations,
        converged: m.converged,
    })
}

/// NBD parameters set from the data rather than fitted (module documentation): `alpha` the
/// mean observation length, `r / alpha` the pooled repeat-purchase rate. With no observed
/// time at all (everyone bought first on the as-of day), `alpha` is 1 time unit.
pub fn pooled(data: &[RfSummary]) -> NbdParams {
    let (sum_w, sum_wx, sum_wt) = data
        .iter()
        .filter(|d| d.weight > 0.0 && d.t_cal >= 0.0)
        .fold((0.0, 0.0, 0.0), |(w, wx, wt), d| {
            (w + d.weight, wx + d.weight * d.x, wt + d.weight * d.t_cal)
        });
    if sum_wt <= 0.0 || sum_w <= 0.0 {
        return NbdParams { r: 0.0, alpha: 1.0 };
    }
    let alpha = sum_wt / sum_w;
    NbdParams {
        r: sum_wx / sum_wt * alpha,
        alpha,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rf(x: f64, t_cal: f64, weight: f64) -> RfSummary {
        RfSummary {
            x,
            t_x: if x > 0.0 { t_cal / 2.0 } else { 0.0 },
            t_cal,
            weight,
        }
    }

    /// Customers with gamma-distributed rates (drawn by inverse CDF on a fixed grid):
    /// the fit recovers the pooled rate, and its likelihood beats the pooled parameters'.
    #[test]
    fn nbd_fits_heterogeneous_rates_and_beats_the_pooled_rate() {
        let mut data = Vec::new();
        for (i, rate) in [0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0].iter().enumerate() {
            let t_cal = 20.0 + i as f64;
            data.push(rf((rate * t_cal).round(), t_cal, 10.0));
            data.push(rf((rate * t_cal * 0.5).round(), t_cal, 5.0));
        }
        let fit = fit_nbd(&data).unwrap();
        let pooled = pooled(&data);
        let total = |p: &NbdParams| {
            data.iter()
                .map(|d| d.weight * log_likelihood(p, d.x, d.t_cal))
                .sum::<f64>()
        };
        assert!(fit.log_likelihood >= total(&pooled) - 1e-9);
        // The mean rate r / alpha is close to the pooled rate.
        let mean_rate = fit.params.r / fit.params.alpha;
        let pooled_rate = pooled.r / pooled.alpha;
        assert!(
            (mean_rate / pooled_rate - 1.0).abs() < 0.25,
            "{mean_rate} vs {pooled_rate}"
        );
    }

    #[test]
    fn identical_rates_run_to_the_boundary_and_the_pooled_rate_stands_in() {
        // Everyone buys every 4 weeks: no heterogeneity, r -> infinity.
        let data = vec![rf(5.0, 20.0, 30.0), rf(10.0, 40.0, 30.0)];
        let err = fit_nbd(&data).unwrap_err();
        assert!(
            matches!(err, ModelError::Degenerate { .. } | ModelError::NotConverged { .. }),
            "{err}"
        );
        let p = pooled(&data);
        assert!((p.r / p.alpha - 0.25).abs() < 1e-12);
        // A customer with the pooled rate keeps it.
        assert!((p.expected_purchases(4.0, 5.0, 20.0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn no_repeat_purchases_give_a_zero_rate_and_no_observed_time_is_handled() {
        let none = vec![rf(0.0, 10.0, 3.0)];
        assert!(fit_nbd(&none).is_err());
        assert_eq!(pooled(&none).expected_purchases(10.0, 0.0, 10.0), 0.0);
        let today = vec![rf(0.0, 0.0, 2.0)];
        let p = pooled(&today);
        assert!(p.expected_purchases(1.0, 0.0, 0.0).is_finite());
    }
}
