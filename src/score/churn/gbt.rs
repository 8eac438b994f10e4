//! Gradient-boosted trees for the log-loss: small depth-limited regression trees on
//! quantile-binned features, leaves set by one Newton step (`-G / (H + lambda)`), shrunk by
//! the learning rate. Deterministic: no row or feature sampling, ties broken by order.
//!
//! Attributions follow the tree path (Saabas): every node carries the Newton value it
//! would predict as a leaf, and a split moves the prediction from the parent's value to
//! the child's; that change is credited to the split's feature. Per row the credits of all
//! trees add up exactly to the logit minus the model's expected value at the roots.

use super::{ChurnError, sigmoid};

/// Training settings.
#[derive(Debug, Clone, Copy)]
pub struct GbtSettings {
    /// Boosting rounds (trees).
    pub rounds: usize,
    /// Largest tree depth.
    pub max_depth: usize,
    /// Shrinkage of each tree.
    pub learning_rate: f64,
    /// L2 penalty on leaf values.
    pub lambda: f64,
    /// Fewest training rows in a leaf.
    pub min_leaf_rows: usize,
    /// Candidate split points per feature (quantiles of the training values).
    pub bins: usize,
}

impl Default for GbtSettings {
    fn default() -> Self {
        GbtSettings {
            rounds: 150,
            max_depth: 3,
            learning_rate: 0.05,
            lambda: 1.0,
            min_leaf_rows: 20,
            bins: 32,
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    /// Newton value of the node (the leaf value it would have), before shrinkage.
    value: f64,
    /// `(feature, threshold, left, right)`: rows with value <= threshold go left.
    split: Option<(usize, f64, usize, usize)>,
}

/// A fitted ensemble.
#[derive(Debug, Clone)]
pub struct Gbt {
    /// Log-odds of the training churn rate: the starting logit.
    pub base: f64,
    trees: Vec<Vec<Node>>,
    learning_rate: f64,
    /// Training log-likelihood of the final model.
    pub log_likelihood: f64,
}

/// Candidate thresholds of one feature: distinct quantiles of the training values.
fn edges(values: &mut [f64], bins: usize) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let mut out: Vec<f64> = (1..bins).map(|k| values[(k * n / bins).min(n - 1)]).collect();
    out.dedup();
    // The largest value splits nothing off.
    if out.last() == values.last() {
        out.pop();
    }
    out
}

struct Builder<'a> {
    binned: &'a [Vec<u16>],
    edges: &'a [Vec<f64>],
    grad: &'a [f64],
    hess: &'a [f64],
    s: GbtSettings,
    nodes: Vec<Node>,
}

impl Builder<'_> {
    fn value(&self, g: f64, h: f64) -> f64 {
        -g / (h + self.s.lambda)
    }

    fn build(&mut self, rows: Vec<usize>, depth: usize) -> usize {
        let g: f64 = rows.iter().map(|&i| self.grad[i]).sum();
        let h: f64 = rows.iter().map(|&i| self.hess[i]).sum();
        let id = self.nodes.len();
        self.nodes.push(Node {
            value: self.value(g, h),
            split: None,
        });
        if depth >= self.s.max_depth || rows.len() < 2 * self.s.min_leaf_rows {
            return id;
        }
        let parent_score = g * g / (h + self.s.lambda);
        // Every feature's histogram in one pass over the rows (each bin still sums its rows
        // in row order, so the sums are the ones a pass per feature gives).
        let mut hists: Vec<Vec<(f64, f64, usize)>> = self
            .edges
            .iter()
            .map(|e| {
                if e.is_empty() {
                    Vec::new()
                } else {
                    vec![(0.0, 0.0, 0usize); e.len() + 1]
                }
            })
            .collect();
        for &i in &rows {
            let (grad, hess, bins) = (self.grad[i], self.hess[i], &self.binned[i]);
            for (hist, &bin) in hists.iter_mut().zip(bins) {
                if let Some(slot) = hist.get_mut(usize::from(bin)) {
                    slot.0 += grad;
                    slot.1 += hess;
                    slot.2 += 1;
                }
            }
        }
        let mut best: Option<(f64, usize, usize)> = None;
        for (f, hist) in hists.iter().enumerate() {
            let k = self.edges[f].len();
            if k == 0 {
                continue;
            }
            let (mut gl, mut hl, mut nl) = (0.0, 0.0, 0usize);
            for (b, slot) in hist.iter().enumerate().take(k) {
                gl += slot.0;
                hl += slot.1;
                nl += slot.2;
                let nr = rows.len() - nl;
                if nl < self.s.min_leaf_rows || nr < self.s.min_leaf_rows {
                    continue;
                }
                let (gr, hr) = (g - gl, h - hl);
                let gain = gl * gl / (hl + self.s.lambda) + gr * gr / (hr + self.s.lambda) - parent_score;
                if gain > 1e-9 && best.is_none_or(|(bg, _, _)| gain > bg) {
                    best = Some((gain, f, b));
                }
            }
        }
        let Some((_, f, b)) = best else {
            return id;
        };
        let (left, right): (Vec<usize>, Vec<usize>) =
            rows.into_iter().partition(|&i| usize::from(self.binned[i][f]) <= b);
        let l = self.build(left, depth + 1);
        let r = self.build(right, depth + 1);
        self.nodes[id].split = Some((f, self.edges[f][b], l, r));
        id
    }
}

/// Fits the ensemble.
///
/// # Errors
/// [`ChurnError::Fit`] for empty or ragged input.
pub fn fit(rows: &[Vec<f64>], y: &[bool], s: GbtSettings) -> Result<Gbt, ChurnError> {
    let d = rows.first().map_or(0, Vec::len);
    if rows.is_empty() || rows.len() != y.len() || rows.iter().any(|r| r.len() != d) {
        return Err(ChurnError::Fit(
            "boosted trees need equal-length, non-empty rows".into(),
        ));
    }
    let bins = s.bins.clamp(2, usize::from(u16::MAX));
    let feature_edges: Vec<Vec<f64>> = (0..d)
        .map(|j| edges(&mut rows.iter().map(|r| r[j]).collect::<Vec<_>>(), bins))
        .collect();
    let binned: Vec<Vec<u16>> = rows
        .iter()
        .map(|r| {
            feature_edges
                .iter()
                .zip(r)
                .map(|(e, v)| e.partition_point(|edge| edge < v) as u16)
                .collect()
        })
        .collect();
    let rate = (y.iter().filter(|v| **v).count() as f64 / y.len() as f64).clamp(1e-6, 1.0 - 1e-6);
    let base = (rate / (1.0 - rate)).ln();
    let mut logit = vec![base; rows.len()];
    let mut model = Gbt {
        base,
        trees: Vec::with_capacity(s.rounds),
        learning_rate: s.learning_rate,
        log_likelihood: 0.0,
    };
    for _ in 0..s.rounds {
        let p: Vec<f64> = logit.iter().map(|z| sigmoid(*z)).collect();
        let grad: Vec<f64> = p.iter().zip(y).map(|(p, y)| p - f64::from(u8::from(*y))).collect();
        let hess: Vec<f64> = p.iter().map(|p| (p * (1.0 - p)).max(1e-12)).collect();
        let mut builder = Builder {
            binned: &binned,
            edges: &feature_edges,
            grad: &grad,
            hess: &hess,
            s,
            nodes: Vec::new(),
        };
        builder.build((0..rows.len()).collect(), 0);
        let tree = builder.nodes;
        for (z, row) in logit.iter_mut().zip(rows) {
            *z += s.learning_rate * leaf_value(&tree, row);
        }
        model.trees.push(tree);
    }
    model.log_likelihood = logit
        .iter()
        .zip(y)
        .map(|(z, y)| {
            let p = sigmoid(*z).clamp(1e-15, 1.0 - 1e-15);
            if *y { p.ln() } else { (1.0 - p).ln() }
        })
        .sum();
    Ok(model)
}

fn leaf_value(tree: &[Node], row: &[f64]) -> f64 {
    let mut node = &tree[0];
    while let Some((f, threshold, l, r)) = node.split {
        node = &tree[if row[f] <= threshold { l } else { r }];
    }
    node.value
}

impl Gbt {
    /// The logit of one row.
    pub fn logit(&self, row: &[f64]) -> f64 {
        self.base
            + self
                .trees
                .iter()
                .map(|t| self.learning_rate * leaf_value(t, row))
                .sum::<f64>()
    }

    /// Each feature's contribution to the logit along the row's paths; the root values
    /// (the expected part) are left out, so `logit = base + roots + sum(contributions)`.
    pub fn contributions(&self, row: &[f64], features: usize) -> Vec<f64> {
        let mut out = vec![0.0; features];
        for tree in &self.trees {
            let mut node = &tree[0];
            while let Some((f, threshold, l, r)) = node.split {
                let child = &tree[if row[f] <= threshold { l } else { r }];
                out[f] += self.learning_rate * (child.value - node.value);
                node = child;
            }
        }
        out
    }

    /// Number of trees.
    pub fn trees(&self) -> usize {
        self.trees.len()
    }

    /// The expected part of every logit: base plus the shrunk root values.
    pub fn expected_logit(&self) -> f64 {
        self.base + self.trees.iter().map(|t| self.learning_rate * t[0].value).sum::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::backtest::auc;

    #[test]
    fn learns_an_interaction_a_linear_model_cannot() {
        // Churn when exactly one of two flags is set (XOR): no single feature ranks it.
        let mut rows = Vec::new();
        let mut y = Vec::new();
        for i in 0..2000u32 {
            let a = f64::from(i % 2);
            let b = f64::from((i / 2) % 2);
            let noise = f64::from((i * 7919) % 100) / 100.0;
            rows.push(vec![a, b, noise]);
            y.push((a + b == 1.0) != (i % 10 == 0));
        }
        let m = fit(&rows, &y, GbtSettings::default()).unwrap();
        let scores: Vec<f64> = rows.iter().map(|r| m.logit(r)).collect();
        let a = auc(&scores, &y).unwrap();
        assert!(a > 0.85, "AUC {a}");
        // Contributions plus the expected part add up to the logit.
        for r in rows.iter().take(10) {
            let total: f64 = m.contributions(r, 3).iter().sum();
            assert!((m.expected_logit() + total - m.logit(r)).abs() < 1e-9);
        }
        assert_eq!(m.trees(), GbtSettings::default().rounds);
    }

    #[test]
    fn is_deterministic() {
        let rows: Vec<Vec<f64>> = (0..500).map(|i| vec![f64::from(i % 37), f64::from(i % 11)]).collect();
        let y: Vec<bool> = (0..500).map(|i| (i % 37) > 20 || i % 11 == 3).collect();
        let a = fit(&rows, &y, GbtSettings::default()).unwrap();
        let b = fit(&rows, &y, GbtSettings::default()).unwrap();
        for r in &rows {
            assert_eq!(a.logit(r).to_bits(), b.logit(r).to_bits());
        }
    }
}
