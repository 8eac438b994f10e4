//! Platt scaling of the adjusted P(alive): `pi = sigmoid(a * eta + b)`, fitted by maximum
//! likelihood of the held-out labels through the same link as the learners
//! ([`super::activity`]: `P(no purchase) = 1 - pi (1 - s)`), by Fisher scoring with step
//! halving. `(1, 0)` leaves the model as it is. A small ridge towards `(1, 0)` keeps the
//! fit finite on separable data.

use super::activity::{self, Anchor};
use super::linalg::solve_spd;

/// Ridge towards `(1, 0)`, on the scale of the summed log-likelihood.
const RIDGE: f64 = 1e-3;

/// Fits `(a, b)` on rows with logit `eta`, anchor and label "no purchase in the window";
/// `(1, 0)` when there is nothing to fit on.
pub fn fit(etas: &[f64], anchors: &[Anchor], no_purchase: &[bool]) -> (f64, f64) {
    if etas.is_empty() || etas.len() != no_purchase.len() || etas.len() != anchors.len() {
        return (1.0, 0.0);
    }
    let rows = || etas.iter().zip(anchors).zip(no_purchase);
    let objective = |a: f64, b: f64| -> f64 {
        rows()
            .map(|((z, anchor), y)| activity::terms(*anchor, a * z + b, *y).log_likelihood)
            .sum::<f64>()
            - 0.5 * RIDGE * ((a - 1.0).powi(2) + b * b)
    };
    let (mut a, mut b) = (1.0, 0.0);
    let mut current = objective(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb) = (-RIDGE * (a - 1.0), -RIDGE * b);
        let (mut haa, mut hab, mut hbb) = (RIDGE, 0.0, RIDGE);
        for ((z, anchor), y) in rows() {
            let t = activity::terms(*anchor, a * z + b, *y);
            ga += t.gradient * z;
            gb += t.gradient;
            haa += t.weight * z * z;
            hab += t.weight * z;
            hbb += t.weight;
        }
        let Some(step) = solve_spd(&[haa, hab, hab, hbb], &[ga, gb], 2) else {
            break;
        };
        let mut t = 1.0;
        let mut moved = false;
        while t > 1e-10 {
            let (na, nb) = (a + t * step[0], b + t * step[1]);
            let value = objective(na, nb);
            if value >= current {
                (a, b, current) = (na, nb, value);
                moved = true;
                break;
            }
            t *= 0.5;
        }
        if !moved || (t * step[0]).abs().max((t * step[1]).abs()) < 1e-10 {
            break;
        }
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::super::sigmoid;
    use super::*;

    #[test]
    fn recovers_a_known_distortion() {
        // Alive with probability sigmoid(0.5 eta - 1), silent if alive with probability s:
        // the fit must find a ~ 0.5, b ~ -1.
        let mut state = 99u64;
        let mut u = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64) / ((1u64 << 53) as f64)
        };
        let (mut z, mut anchors, mut y) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let zi = u() * 8.0 - 4.0;
            let anchor = Anchor {
                offset: zi,
                silent: u() * 0.6,
            };
            let alive = u() < sigmoid(0.5 * zi - 1.0);
            z.push(zi);
            anchors.push(anchor);
            y.push(!alive || u() < anchor.silent);
        }
        let (a, b) = fit(&z, &anchors, &y);
        assert!((a - 0.5).abs() < 0.06, "{a}");
        assert!((b + 1.0).abs() < 0.1, "{b}");
        assert_eq!(fit(&[], &[], &[]), (1.0, 0.0));
    }
}
