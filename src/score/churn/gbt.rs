//! Gradient-boosted trees adjusting the purchase model's P(alive) ([`super::activity`]):
//! boosting starts from each row's `logit(p_alive)` and adds small depth-limited
//! regression trees on quantile-binned features, leaves set by one Fisher-scoring step
//! (`G / (H + lambda)` with the log-likelihood's gradient `G` and information `H`), shrunk
//! by the learning rate. Deterministic: no row or feature sampling, ties broken by order.
//!
//! Attributions are each tree's exact Shapley values ([`super::treeshap`], path-dependent
//! TreeSHAP over the training rows' covers), summed over the trees: per row they add up
//! exactly to the logit minus the model's expected logit.

use super::ChurnError;
use super::activity::{self, Anchor};
use super::treeshap::{self, Tree};

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
    /// Threads filling a node's histograms; 0 for one per core. The model does not depend
    /// on it.
    pub threads: usize,
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
            threads: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    /// Newton value of the node (the leaf value it would have), before shrinkage.
    value: f64,
    /// Training rows that reached the node.
    cover: f64,
    /// `(feature, threshold, left, right)`: rows with value <= threshold go left.
    split: Option<(usize, f64, usize, usize)>,
}

/// A fitted ensemble.
#[derive(Debug, Clone)]
pub struct Gbt {
    /// Constant part of the adjustment (0: boosting starts at the purchase model).
    pub base: f64,
    trees: Vec<Vec<Node>>,
    /// Each tree's [`treeshap::Table`], where it has one (built once the trees are).
    tables: Vec<Option<treeshap::Table>>,
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

/// Fewest rows of a node worth a histogram thread of their own.
const MIN_ROWS_PER_THREAD: usize = 16_384;

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
            cover: rows.len() as f64,
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
        // The features are shared out between the cores: each histogram is still filled by
        // one thread in row order, so the sums do not depend on the number of cores.
        let fill = |hists: &mut [Vec<(f64, f64, usize)>], first: usize| {
            for &i in &rows {
                let (grad, hess) = (self.grad[i], self.hess[i]);
                for (hist, &bin) in hists.iter_mut().zip(&self.binned[i][first..]) {
                    if let Some(slot) = hist.get_mut(usize::from(bin)) {
                        slot.0 += grad;
                        slot.1 += hess;
                        slot.2 += 1;
                    }
                }
            }
        };
        // `s.threads` is resolved (never 0) by `fit`, once, not per node.
        let threads = self
            .s
            .threads
            .min(rows.len() / MIN_ROWS_PER_THREAD)
            .min(hists.len())
            .max(1);
        if threads == 1 {
            fill(&mut hists, 0);
        } else {
            let per = hists.len().div_ceil(threads);
            std::thread::scope(|scope| {
                for (k, chunk) in hists.chunks_mut(per).enumerate() {
                    let fill = &fill;
                    scope.spawn(move || fill(chunk, k * per));
                }
            });
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

/// Fits the ensemble; `y` is "no purchase in the window".
///
/// # Errors
/// [`ChurnError::Fit`] for empty or ragged input.
pub fn fit(rows: &[Vec<f64>], anchors: &[Anchor], y: &[bool], s: GbtSettings) -> Result<Gbt, ChurnError> {
    let d = rows.first().map_or(0, Vec::len);
    if rows.is_empty() || rows.len() != y.len() || rows.len() != anchors.len() || rows.iter().any(|r| r.len() != d) {
        return Err(ChurnError::Fit(
            "boosted trees need equal-length, non-empty rows".into(),
        ));
    }
    let s = GbtSettings {
        threads: match s.threads {
            0 => crate::engine::cores(),
            n => n,
        },
        ..s
    };
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
    let mut logit: Vec<f64> = anchors.iter().map(|a| a.offset).collect();
    let mut model = Gbt {
        base: 0.0,
        trees: Vec::with_capacity(s.rounds),
        tables: Vec::new(),
        learning_rate: s.learning_rate,
        log_likelihood: 0.0,
    };
    for _ in 0..s.rounds {
        // The loss is the negative log-likelihood: its gradient is minus the likelihood's.
        let (grad, hess): (Vec<f64>, Vec<f64>) = logit
            .iter()
            .zip(anchors)
            .zip(y)
            .map(|((eta, a), y)| {
                let t = activity::terms(*a, *eta, *y);
                (-t.gradient, t.weight)
            })
            .unzip();
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
    model.tables = model.trees.iter().map(|t| treeshap::Table::new(&Nodes(t))).collect();
    model.log_likelihood = logit
        .iter()
        .zip(anchors)
        .zip(y)
        .map(|((eta, a), y)| activity::terms(*a, *eta, *y).log_likelihood)
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
    /// The adjustment of `eta` (logit of P(alive)) for one row: `eta = offset + this`.
    pub fn logit(&self, row: &[f64]) -> f64 {
        self.base
            + self
                .trees
                .iter()
                .map(|t| self.learning_rate * leaf_value(t, row))
                .sum::<f64>()
    }

    /// Each feature's Shapley value for the row's logit (TreeSHAP per tree, shrunk), so
    /// `logit = expected_logit + sum(contributions)`.
    pub fn contributions(&self, row: &[f64], features: usize) -> Vec<f64> {
        let mut phi = vec![0.0; features];
        let mut work = Vec::new();
        for (tree, table) in self.trees.iter().zip(&self.tables) {
            match table {
                Some(table) => table.add(row, &mut phi),
                None => treeshap::add_shap(&Nodes(tree), row, &mut phi, &mut work),
            }
        }
        for p in &mut phi {
            *p *= self.learning_rate;
        }
        phi
    }

    /// [`Gbt::logit`] and [`Gbt::contributions`] of many rows: `x` holds the rows one
    /// after another, `features` values each; returns the logits and the contributions
    /// (row after row). The trees are taken one at a time over every row, rather than each
    /// row through every tree, so that one tree's table stays in the cache while the rows
    /// pass; each row's sums add the same terms in the same order as the one-row functions
    /// do, so the values are theirs, bit for bit.
    pub fn score_rows(&self, x: &[f64], features: usize) -> (Vec<f64>, Vec<f64>) {
        let width = features.max(1);
        let n = x.len() / width;
        let mut sums = vec![-0.0; n];
        let mut phi = vec![0.0; n * width];
        let mut work = Vec::new();
        for (tree, table) in self.trees.iter().zip(&self.tables) {
            let rows = x.chunks_exact(width).zip(&mut sums).zip(phi.chunks_exact_mut(width));
            match table {
                Some(table) => {
                    for ((row, sum), p) in rows {
                        let outcome = table.outcome(row);
                        *sum += self.learning_rate * table.leaf(outcome);
                        table.add_outcome(outcome, p);
                    }
                }
                None => {
                    for ((row, sum), p) in rows {
                        *sum += self.learning_rate * leaf_value(tree, row);
                        treeshap::add_shap(&Nodes(tree), row, p, &mut work);
                    }
                }
            }
        }
        for p in &mut phi {
            *p *= self.learning_rate;
        }
        (sums.into_iter().map(|s| self.base + s).collect(), phi)
    }

    /// Number of trees.
    pub fn trees(&self) -> usize {
        self.trees.len()
    }

    /// The expected part of every logit: base plus each tree's shrunk mean over the
    /// training rows.
    pub fn expected_logit(&self) -> f64 {
        self.base
            + self
                .trees
                .iter()
                .map(|t| self.learning_rate * treeshap::expected_value(&Nodes(t)))
                .sum::<f64>()
    }
}

/// One fitted tree as [`treeshap`] reads it.
struct Nodes<'a>(&'a [Node]);

impl Tree for Nodes<'_> {
    fn split(&self, node: usize) -> Option<(usize, f64, usize, usize)> {
        self.0[node].split
    }

    fn value(&self, node: usize) -> f64 {
        self.0[node].value
    }

    fn cover(&self, node: usize) -> f64 {
        self.0[node].cover
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::backtest::auc;

    /// Anchors of a purchase model that says nothing: P(alive) 1/2, never silent if alive.
    fn flat(n: usize) -> Vec<Anchor> {
        vec![
            Anchor {
                offset: 0.0,
                silent: 0.0
            };
            n
        ]
    }

    #[test]
    fn without_signal_the_trees_keep_the_purchase_model() {
        // Labels drawn exactly from the anchors: no tree improves the likelihood enough to
        // move far from them.
        let n = 4000u32;
        let anchors: Vec<Anchor> = (0..n)
            .map(|i| Anchor {
                offset: f64::from(i % 9) / 2.0 - 2.0,
                silent: 0.3,
            })
            .collect();
        let rows: Vec<Vec<f64>> = (0..n).map(|i| vec![f64::from((i * 7919) % 101)]).collect();
        let y: Vec<bool> = anchors
            .iter()
            .enumerate()
            .map(|(i, a)| {
                f64::from((i as u32).wrapping_mul(2_654_435_761) % 10_000) / 10_000.0 < a.no_purchase(a.offset)
            })
            .collect();
        let m = fit(&rows, &anchors, &y, GbtSettings::default()).unwrap();
        let largest = rows.iter().map(|r| m.logit(r).abs()).fold(0.0, f64::max);
        assert!(largest < 0.5, "adjustment {largest}");
    }

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
        let m = fit(&rows, &flat(rows.len()), &y, GbtSettings::default()).unwrap();
        // The logit is P(alive)'s: churn ranks by its negative.
        let scores: Vec<f64> = rows.iter().map(|r| -m.logit(r)).collect();
        let a = auc(&scores, &y).unwrap();
        assert!(a > 0.85, "AUC {a}");
        // Contributions plus the expected part add up to the logit.
        for r in rows.iter().take(10) {
            let total: f64 = m.contributions(r, 3).iter().sum();
            assert!((m.expected_logit() + total - m.logit(r)).abs() < 1e-9);
        }
        assert_eq!(m.trees(), GbtSettings::default().rounds);
        // Every tree of the default depth is scored from its table: what walking it gives,
        // up to rounding.
        assert!(m.tables.iter().all(Option::is_some));
        let mut work = Vec::new();
        for r in &rows {
            let mut walked = vec![0.0; 3];
            for tree in &m.trees {
                treeshap::add_shap(&Nodes(tree), r, &mut walked, &mut work);
            }
            walked.iter_mut().for_each(|p| *p *= m.learning_rate);
            for (t, w) in m.contributions(r, 3).iter().zip(&walked) {
                assert!((t - w).abs() < 1e-12, "{t} vs {w}");
            }
        }
    }

    /// Scoring many rows tree after tree gives each row's logit and contributions bit for
    /// bit, from the trees' tables and from trees too large for one (walked).
    #[test]
    fn scoring_rows_together_gives_each_rows_values() {
        let rows: Vec<Vec<f64>> = (0..3000u32)
            .map(|i| {
                vec![
                    f64::from(i % 2),
                    f64::from((i / 2) % 2),
                    f64::from((i * 7919) % 100) / 100.0,
                ]
            })
            .collect();
        let y: Vec<bool> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r[0] + r[1] == 1.0) != (i % 10 == 0) || r[2] > 0.9)
            .collect();
        for max_depth in [3, 6] {
            let settings = GbtSettings {
                rounds: 30,
                max_depth,
                min_leaf_rows: 5,
                ..GbtSettings::default()
            };
            let m = fit(&rows, &flat(rows.len()), &y, settings).unwrap();
            if max_depth == 6 {
                assert!(m.tables.iter().any(Option::is_none), "a tree too large for a table");
            }
            let x: Vec<f64> = rows.iter().flatten().copied().collect();
            let (logits, phi) = m.score_rows(&x, 3);
            assert_eq!(logits.len(), rows.len());
            for (i, r) in rows.iter().enumerate() {
                assert_eq!(logits[i].to_bits(), m.logit(r).to_bits(), "depth {max_depth}, row {i}");
                let one: Vec<u64> = m.contributions(r, 3).iter().map(|c| c.to_bits()).collect();
                let together: Vec<u64> = phi[3 * i..3 * i + 3].iter().map(|c| c.to_bits()).collect();
                assert_eq!(together, one, "depth {max_depth}, row {i}");
            }
        }
    }

    /// The histograms shared out between threads give the same model, bit for bit, as one
    /// thread filling them all (enough rows that the first levels use several threads).
    #[test]
    fn threads_do_not_change_the_model() {
        let n = 3 * MIN_ROWS_PER_THREAD as u32;
        let rows: Vec<Vec<f64>> = (0..n)
            .map(|i| vec![f64::from(i % 37), f64::from(i % 11), f64::from((i * 7919) % 101)])
            .collect();
        let y: Vec<bool> = (0..n).map(|i| (i % 37) > 20 || i % 11 == 3 || i % 13 == 0).collect();
        let anchors = flat(rows.len());
        let settings = |threads| GbtSettings {
            rounds: 20,
            threads,
            ..GbtSettings::default()
        };
        let one = fit(&rows, &anchors, &y, settings(1)).unwrap();
        for threads in [2, 3] {
            let many = fit(&rows, &anchors, &y, settings(threads)).unwrap();
            assert_eq!(one.log_likelihood.to_bits(), many.log_likelihood.to_bits());
            for r in rows.iter().step_by(97) {
                assert_eq!(one.logit(r).to_bits(), many.logit(r).to_bits(), "{threads} threads");
            }
        }
    }

    #[test]
    fn is_deterministic() {
        let rows: Vec<Vec<f64>> = (0..500).map(|i| vec![f64::from(i % 37), f64::from(i % 11)]).collect();
        let y: Vec<bool> = (0..500).map(|i| (i % 37) > 20 || i % 11 == 3).collect();
        let anchors: Vec<Anchor> = (0..500)
            .map(|i| Anchor {
                offset: f64::from(i % 5) - 2.0,
                silent: f64::from(i % 3) / 4.0,
            })
            .collect();
        let a = fit(&rows, &anchors, &y, GbtSettings::default()).unwrap();
        let b = fit(&rows, &anchors, &y, GbtSettings::default()).unwrap();
        for r in &rows {
            assert_eq!(a.logit(r).to_bits(), b.logit(r).to_bits());
        }
    }
}
