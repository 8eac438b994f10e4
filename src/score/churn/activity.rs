//! The likelihood both churn learners maximise: they adjust the purchase model's
//! probability that a buyer is still active, never replace it.
//!
//! The modified BG/NBD gives each buyer `p_alive` and `s`, the probability that an active
//! buyer makes no purchase in the label window (`P(no purchase in H | alive)`, the
//! gamma-Poisson part). The label "no purchase in the window" then has probability
//!
//! `q = 1 - pi (1 - s)`,   `pi = sigmoid(eta)`,   `eta = logit(p_alive) + f(signals)`:
//!
//! a lapsed buyer never buys, an active one stays silent with probability `s`. `f = 0` is
//! the purchase model itself, so a learner starts from it and moves only where the
//! signals (tickets, CSAT, e-mail engagement, returns, ...) explain the labels better.
//! `pi` is the adjusted P(alive): `churn_risk = 1 - pi` keeps its one meaning (lapsed for
//! good), and `q` is `p_no_purchase_90d`, so the two published columns always agree.
//!
//! The learners use the log-likelihood's gradient in `eta` and its Fisher information
//! (the expected curvature, always positive, where the observed one is not: `q` is not
//! log-concave in `eta` when `s < 1`).

use super::features::{P_ALIVE, P_NO_PURCHASE};

/// Probabilities are kept this far from 0 and 1, so logits and logarithms stay finite.
const EDGE: f64 = 1e-9;

/// One buyer's purchase-model anchor: where `eta` starts, and the chance an active buyer
/// stays silent through the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    /// `logit(p_alive)` of the modified BG/NBD.
    pub offset: f64,
    /// `P(no purchase in the window | alive)`.
    pub silent: f64,
}

impl Anchor {
    /// The anchor of a feature row (the [`super::features::NUMERIC`] values): `p_alive`
    /// and `p_no_purchase = (1 - p_alive) + p_alive s`, solved for `s`.
    pub fn of(values: &[f64]) -> Anchor {
        let p = values[P_ALIVE].clamp(EDGE, 1.0 - EDGE);
        let q = values[P_NO_PURCHASE].clamp(0.0, 1.0);
        let silent = (1.0 - (1.0 - q) / p).clamp(0.0, 1.0);
        Anchor {
            offset: (p / (1.0 - p)).ln(),
            silent,
        }
    }

    /// `P(no purchase in the window)` at `eta` (logit of P(alive)).
    pub fn no_purchase(self, eta: f64) -> f64 {
        1.0 - super::sigmoid(eta) * (1.0 - self.silent)
    }
}

/// One labelled row's log-likelihood, its derivative in `eta` and the Fisher information.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Terms {
    /// `y ln q + (1 - y) ln(1 - q)`.
    pub log_likelihood: f64,
    /// Its derivative in `eta`.
    pub gradient: f64,
    /// `q'(eta)^2 / (q (1 - q))`: the expected negative second derivative.
    pub weight: f64,
}

/// The [`Terms`] of a row with label `no_purchase` at `eta`.
pub fn terms(anchor: Anchor, eta: f64, no_purchase: bool) -> Terms {
    let pi = super::sigmoid(eta);
    let c = 1.0 - anchor.silent;
    // q' = -c pi (1 - pi); 1 - q = c pi.
    let slope = -c * pi * (1.0 - pi);
    let q = (1.0 - c * pi).clamp(EDGE, 1.0 - EDGE);
    let log_likelihood = if no_purchase { q.ln() } else { (1.0 - q).ln() };
    let y = f64::from(u8::from(no_purchase));
    Terms {
        log_likelihood,
        gradient: (y - q) * slope / (q * (1.0 - q)),
        weight: (slope * slope / (q * (1.0 - q))).max(1e-12),
    }
}

#[cfg(test)]
mod tests {
    use super::super::features::NUMERIC;
    use super::*;

    fn row(p_alive: f64, p_no_purchase: f64) -> Vec<f64> {
        let mut v = vec![0.0; NUMERIC.len()];
        v[P_ALIVE] = p_alive;
        v[P_NO_PURCHASE] = p_no_purchase;
        v
    }

    #[test]
    fn the_anchor_reproduces_the_purchase_model() {
        for (p, s) in [(0.7, 0.4), (0.05, 0.9), (0.99, 0.0), (0.5, 1.0)] {
            let q = (1.0 - p) + p * s;
            let a = Anchor::of(&row(p, q));
            assert!((a.silent - s).abs() < 1e-12, "{p} {s}: {a:?}");
            assert!((a.no_purchase(a.offset) - q).abs() < 1e-12);
            assert!((super::super::sigmoid(a.offset) - p).abs() < 1e-12);
        }
    }

    #[test]
    fn gradient_and_weight_match_the_likelihood() {
        let a = Anchor {
            offset: 0.3,
            silent: 0.35,
        };
        for eta in [-3.0, -0.2, 0.0, 1.7, 4.0] {
            for y in [false, true] {
                let t = terms(a, eta, y);
                let h = 1e-6;
                let numeric = (terms(a, eta + h, y).log_likelihood - terms(a, eta - h, y).log_likelihood) / (2.0 * h);
                assert!(
                    (t.gradient - numeric).abs() < 1e-6,
                    "{eta} {y}: {} vs {numeric}",
                    t.gradient
                );
            }
            // Fisher information = E[gradient^2] over the label.
            let q = a.no_purchase(eta);
            let e = q * terms(a, eta, true).gradient.powi(2) + (1.0 - q) * terms(a, eta, false).gradient.powi(2);
            assert!((terms(a, eta, true).weight - e).abs() < 1e-9, "{eta}");
        }
        // A buyer who bought (y = 0) is alive: the likelihood rises with eta.
        assert!(terms(a, 0.0, false).gradient > 0.0);
        assert!(terms(a, 0.0, true).gradient < 0.0);
    }
}
