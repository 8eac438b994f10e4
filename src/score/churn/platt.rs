//! Platt scaling: `p = sigmoid(a * z + b)` fitted by maximum likelihood on held-out logits
//! `z` and outcomes, so the model's scores become probabilities. Platt's smoothed targets
//! (`(n+ + 1) / (n+ + 2)` and `1 / (n- + 2)`) keep the fit finite on separable data.

use super::linalg::solve_spd;
use super::sigmoid;

/// Fits `(a, b)`; `(1, 0)` (no change) when there is nothing to fit on.
pub fn fit(logits: &[f64], positive: &[bool]) -> (f64, f64) {
    let n_pos = positive.iter().filter(|p| **p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if logits.is_empty() || logits.len() != positive.len() {
        return (1.0, 0.0);
    }
    let hi = (n_pos + 1.0) / (n_pos + 2.0);
    let lo = 1.0 / (n_neg + 2.0);
    let targets: Vec<f64> = positive.iter().map(|p| if *p { hi } else { lo }).collect();
    let loss = |a: f64, b: f64| -> f64 {
        logits
            .iter()
            .zip(&targets)
            .map(|(z, t)| {
                let p = sigmoid(a * z + b).clamp(1e-15, 1.0 - 1e-15);
                -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
            })
            .sum()
    };
    let (mut a, mut b) = (1.0, 0.0);
    let mut current = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
        for (z, t) in logits.iter().zip(&targets) {
            let p = sigmoid(a * z + b);
            let w = p * (1.0 - p);
            ga += (p - t) * z;
            gb += p - t;
            haa += w * z * z;
            hab += w * z;
            hbb += w;
        }
        let Some(step) = solve_spd(&[haa, hab, hab, hbb], &[ga, gb], 2) else {
            break;
        };
        let mut t = 1.0;
        let mut moved = false;
        while t > 1e-10 {
            let (na, nb) = (a - t * step[0], b - t * step[1]);
            let value = loss(na, nb);
            if value <= current {
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
    use super::*;

    #[test]
    fn recovers_a_known_distortion() {
        // Outcomes from p = sigmoid(0.5 z - 1): Platt must find a ~ 0.5, b ~ -1.
        let mut state = 99u64;
        let mut u = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64) / ((1u64 << 53) as f64)
        };
        let (mut z, mut y) = (Vec::new(), Vec::new());
        for _ in 0..20_000 {
            let zi = u() * 8.0 - 4.0;
            z.push(zi);
            y.push(u() < sigmoid(0.5 * zi - 1.0));
        }
        let (a, b) = fit(&z, &y);
        assert!((a - 0.5).abs() < 0.05, "{a}");
        assert!((b + 1.0).abs() < 0.07, "{b}");
        assert_eq!(fit(&[], &[]), (1.0, 0.0));
    }
}
