//! Exact Shapley values of one regression tree for one row: path-dependent TreeSHAP
//! (Lundberg, Erion and Lee 2018, "Consistent individualized feature attribution for tree
//! ensembles", algorithm 2). A feature absent from the coalition follows both branches of
//! its splits, weighted by the training rows that went each way (the node covers), so the
//! values add up to the row's prediction minus the tree's cover-weighted mean, and a
//! feature on the healthy side of every split gets no credit for the risk: unlike path
//! (Saabas) credits, which reward whichever feature a path happens to split first.

/// A tree as TreeSHAP reads it.
pub trait Tree {
    /// `(feature, threshold, left, right)` of an internal node (rows with value <=
    /// threshold go left); `None` for a leaf.
    fn split(&self, node: usize) -> Option<(usize, f64, usize, usize)>;
    /// A leaf's prediction.
    fn value(&self, node: usize) -> f64;
    /// Training rows that reached the node (> 0).
    fn cover(&self, node: usize) -> f64;
}

/// The tree's mean prediction over its training rows (leaves weighted by cover): what the
/// Shapley values of a row are measured from.
pub fn expected_value(tree: &impl Tree) -> f64 {
    fn walk(tree: &impl Tree, node: usize) -> f64 {
        match tree.split(node) {
            None => tree.value(node),
            Some((_, _, l, r)) => (tree.cover(l) * walk(tree, l) + tree.cover(r) * walk(tree, r)) / tree.cover(node),
        }
    }
    walk(tree, 0)
}

/// Adds the Shapley value of each feature for `row` to `phi` (indexed by feature).
/// `work` is scratch space the caller keeps across calls, so scoring a customer base
/// allocates per row at most once, not per node.
pub fn add_shap(tree: &impl Tree, row: &[f64], phi: &mut [f64], work: &mut Vec<Step>) {
    let left = |_: usize, f: usize, threshold: f64| row[f] <= threshold;
    walk(tree, left, |f, term| phi[f] += term, work);
}

/// The TreeSHAP recursion over `tree`, where `left(node, feature, threshold)` says which
/// way the row goes at an internal node; each Shapley term is passed to `emit(feature,
/// term)` as it is found, in a fixed order.
fn walk<T: Tree>(
    tree: &T,
    left: impl Fn(usize, usize, f64) -> bool,
    mut emit: impl FnMut(usize, f64),
    work: &mut Vec<Step>,
) {
    // The paths of the nodes on the way down are stored one after another: a node at
    // depth k holds at most k + 1 elements, and the last one is extended in place.
    let depth = depth(tree, 0);
    let need = (depth + 2) * (depth + 3) / 2;
    if work.len() < need {
        work.resize(need, Step::default());
    }
    let mut walk = Walk {
        tree,
        left: &left,
        emit: &mut emit,
    };
    walk.recurse(work, 0, 0, 1.0, 1.0, None);
}

/// Most internal nodes a tree may have for a [`Table`]: its size doubles with each.
pub const MAX_TABLE_SPLITS: usize = 10;

/// A tree's Shapley values for every way a row can fall through its splits.
///
/// The recursion reads a row only at the splits (which way it goes), so one tree with `k`
/// internal nodes has at most `2^k` outcomes. For each, the table keeps each feature's
/// Shapley value (the recursion's terms summed per feature, in its order), so
/// [`Table::add`] looks up a row's outcome and makes one addition per feature of the tree
/// instead of walking it: the same values as [`add_shap`] up to rounding (which adds the
/// terms one by one). At 181,000 buyers and 150 trees of depth 3 the walks were 37% of a
/// run's CPU.
#[derive(Debug, Clone)]
pub struct Table {
    /// `(feature, threshold)` of each internal node: bit `i` of an outcome is set when the
    /// row goes left at `splits[i]`.
    splits: Vec<(usize, f64)>,
    /// Where each outcome's values start in `features` and `values` (one more entry than
    /// outcomes).
    starts: Vec<u32>,
    /// The feature of each value.
    features: Vec<u32>,
    /// Shapley values, outcome after outcome.
    values: Vec<f64>,
    /// The value of the leaf each outcome ends in.
    leaves: Vec<f64>,
}

impl Table {
    /// The table of `tree`; `None` when it has more than [`MAX_TABLE_SPLITS`] internal
    /// nodes (use [`add_shap`]).
    pub fn new(tree: &impl Tree) -> Option<Table> {
        let mut splits = Vec::new();
        let mut bit = Vec::new();
        let mut todo = vec![0];
        while let Some(node) = todo.pop() {
            if bit.len() <= node {
                bit.resize(node + 1, usize::MAX);
            }
            if let Some((f, threshold, l, r)) = tree.split(node) {
                bit[node] = splits.len();
                splits.push((f, threshold));
                todo.extend([l, r]);
            }
        }
        if splits.len() > MAX_TABLE_SPLITS {
            return None;
        }
        let mut table = Table {
            splits,
            starts: vec![0],
            features: Vec::new(),
            values: Vec::new(),
            leaves: Vec::new(),
        };
        let (mut outcome_values, mut work) = (Vec::<(usize, f64)>::new(), Vec::new());
        for outcome in 0..1usize << table.splits.len() {
            let left = |node: usize, _: usize, _: f64| outcome & (1 << bit[node]) != 0;
            outcome_values.clear();
            walk(
                tree,
                left,
                |f, term| match outcome_values.iter_mut().find(|(g, _)| *g == f) {
                    Some((_, sum)) => *sum += term,
                    None => outcome_values.push((f, term)),
                },
                &mut work,
            );
            for &(f, value) in &outcome_values {
                table.features.push(u32::try_from(f).ok()?);
                table.values.push(value);
            }
            table.starts.push(u32::try_from(table.values.len()).ok()?);
            let mut node = 0;
            while let Some((_, _, l, r)) = tree.split(node) {
                node = if left(node, 0, 0.0) { l } else { r };
            }
            table.leaves.push(tree.value(node));
        }
        Some(table)
    }

    /// Which way `row` falls through the tree's splits.
    pub fn outcome(&self, row: &[f64]) -> usize {
        self.splits.iter().enumerate().fold(0usize, |o, (i, &(f, threshold))| {
            o | (usize::from(row[f] <= threshold) << i)
        })
    }

    /// The value of the leaf a row of `outcome` ends in (the tree's prediction for it).
    pub fn leaf(&self, outcome: usize) -> f64 {
        self.leaves[outcome]
    }

    /// Adds the Shapley value of each feature for a row of `outcome` to `phi`.
    pub fn add_outcome(&self, outcome: usize, phi: &mut [f64]) {
        let (from, to) = (self.starts[outcome] as usize, self.starts[outcome + 1] as usize);
        for (&f, &value) in self.features[from..to].iter().zip(&self.values[from..to]) {
            phi[f as usize] += value;
        }
    }

    /// Adds the Shapley value of each feature for `row` to `phi`, as [`add_shap`] does
    /// (up to rounding).
    pub fn add(&self, row: &[f64], phi: &mut [f64]) {
        self.add_outcome(self.outcome(row), phi);
    }
}

fn depth(tree: &impl Tree, node: usize) -> usize {
    tree.split(node)
        .map_or(0, |(_, _, l, r)| 1 + depth(tree, l).max(depth(tree, r)))
}

/// One element of the path of unique features from the root: the feature, the share of
/// rows that would reach here without it in the coalition (`zero`), with it (`one`), and
/// the permutation weight.
#[derive(Debug, Clone, Copy, Default)]
pub struct Step {
    feature: Option<usize>,
    zero: f64,
    one: f64,
    weight: f64,
}

/// One row's descent through one tree.
struct Walk<'a, T: Tree, L, E> {
    tree: &'a T,
    left: &'a L,
    emit: &'a mut E,
}

impl<T: Tree, L: Fn(usize, usize, f64) -> bool, E: FnMut(usize, f64)> Walk<'_, T, L, E> {
    /// Visits `node`; `buf[..len]` is its parent's path, the rest of `buf` free space.
    fn recurse(&mut self, buf: &mut [Step], len: usize, node: usize, zero: f64, one: f64, feature: Option<usize>) {
        let (parent, rest) = buf.split_at_mut(len);
        rest[..len].copy_from_slice(parent);
        extend(&mut rest[..=len], zero, one, feature);
        let mut path_len = len + 1;
        match self.tree.split(node) {
            None => {
                let path = &rest[..path_len];
                for i in 1..path.len() {
                    let w = unwound_sum(path, i);
                    if let Some(f) = path[i].feature {
                        (self.emit)(f, w * (path[i].one - path[i].zero) * self.tree.value(node));
                    }
                }
            }
            Some((f, threshold, left, right)) => {
                let (hot, cold) = if (self.left)(node, f, threshold) {
                    (left, right)
                } else {
                    (right, left)
                };
                let cover = self.tree.cover(node);
                let (mut incoming_zero, mut incoming_one) = (1.0, 1.0);
                if let Some(k) = rest[..path_len].iter().position(|s| s.feature == Some(f)) {
                    incoming_zero = rest[k].zero;
                    incoming_one = rest[k].one;
                    unwind(&mut rest[..path_len], k);
                    path_len -= 1;
                }
                let (hot_share, cold_share) = (self.tree.cover(hot) / cover, self.tree.cover(cold) / cover);
                self.recurse(rest, path_len, hot, incoming_zero * hot_share, incoming_one, Some(f));
                self.recurse(rest, path_len, cold, incoming_zero * cold_share, 0.0, Some(f));
            }
        }
    }
}

/// Sets the path's last element to a feature and updates the permutation weights.
fn extend(path: &mut [Step], zero: f64, one: f64, feature: Option<usize>) {
    let depth = path.len() - 1;
    path[depth] = Step {
        feature,
        zero,
        one,
        weight: if depth == 0 { 1.0 } else { 0.0 },
    };
    let d = depth as f64;
    for i in (0..depth).rev() {
        path[i + 1].weight += one * path[i].weight * (i as f64 + 1.0) / (d + 1.0);
        path[i].weight = zero * path[i].weight * (d - i as f64) / (d + 1.0);
    }
}

/// Removes path element `k`, undoing its [`extend`]; the path is one shorter after it
/// (its last slot is left stale).
fn unwind(path: &mut [Step], k: usize) {
    let depth = path.len() - 1;
    let (one, zero) = (path[k].one, path[k].zero);
    let d = depth as f64;
    let mut next = path[depth].weight;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = path[i].weight;
            path[i].weight = next * (d + 1.0) / ((i as f64 + 1.0) * one);
            next = tmp - path[i].weight * zero * (d - i as f64) / (d + 1.0);
        } else {
            path[i].weight = path[i].weight * (d + 1.0) / (zero * (d - i as f64));
        }
    }
    for i in k..depth {
        path[i].feature = path[i + 1].feature;
        path[i].zero = path[i + 1].zero;
        path[i].one = path[i + 1].one;
    }
}

/// The total permutation weight of the path with element `k` removed.
fn unwound_sum(path: &[Step], k: usize) -> f64 {
    let depth = path.len() - 1;
    let (one, zero) = (path[k].one, path[k].zero);
    let d = depth as f64;
    let mut next = path[depth].weight;
    let mut total = 0.0;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = next / ((i as f64 + 1.0) * one);
            total += tmp;
            next = path[i].weight - tmp * zero * (d - i as f64);
        } else {
            total += path[i].weight / (zero * (d - i as f64));
        }
    }
    total * (d + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An internal node's `(feature, threshold, left, right)`.
    type Split = Option<(usize, f64, usize, usize)>;

    /// A tree as plain vectors: `(split, value, cover)` per node.
    struct Plain(Vec<(Split, f64, f64)>);

    impl Tree for Plain {
        fn split(&self, node: usize) -> Split {
            self.0[node].0
        }
        fn value(&self, node: usize) -> f64 {
            self.0[node].1
        }
        fn cover(&self, node: usize) -> f64 {
            self.0[node].2
        }
    }

    /// E[f(x) | the features in `set` fixed at the row's values], the others following
    /// the training rows (cover-weighted): the value function TreeSHAP's Shapley values are
    /// of.
    fn conditional(tree: &Plain, row: &[f64], set: u32, node: usize) -> f64 {
        match tree.split(node) {
            None => tree.value(node),
            Some((f, t, l, r)) if set & (1 << f) != 0 => conditional(tree, row, set, if row[f] <= t { l } else { r }),
            Some((_, _, l, r)) => {
                (tree.cover(l) * conditional(tree, row, set, l) + tree.cover(r) * conditional(tree, row, set, r))
                    / tree.cover(node)
            }
        }
    }

    /// Shapley values by enumerating every coalition.
    fn brute_force(tree: &Plain, row: &[f64], features: usize) -> Vec<f64> {
        let fact = |n: usize| (1..=n).map(|k| k as f64).product::<f64>();
        (0..features)
            .map(|i| {
                let mut phi = 0.0;
                for set in 0..(1u32 << features) {
                    if set & (1 << i) != 0 {
                        continue;
                    }
                    let s = set.count_ones() as usize;
                    let weight = fact(s) * fact(features - s - 1) / fact(features);
                    phi += weight * (conditional(tree, row, set | (1 << i), 0) - conditional(tree, row, set, 0));
                }
                phi
            })
            .collect()
    }

    /// A depth-3 tree with uneven covers: feature 0 splits twice on one path, feature 2
    /// only on the right.
    fn uneven_tree() -> Plain {
        Plain(vec![
            (Some((0, 0.5, 1, 2)), 0.0, 100.0),
            (Some((1, 0.3, 3, 4)), 0.0, 60.0),
            (Some((2, 0.7, 5, 6)), 0.0, 40.0),
            (Some((0, 0.2, 7, 8)), 0.0, 25.0),
            (None, 1.5, 35.0),
            (None, -0.7, 30.0),
            (Some((1, 0.8, 9, 10)), 0.0, 10.0),
            (None, 2.0, 5.0),
            (None, -1.0, 20.0),
            (None, 0.4, 4.0),
            (None, 3.0, 6.0),
        ])
    }

    /// Depth-3 trees with repeated features, uneven covers and several rows: TreeSHAP
    /// equals the brute-force Shapley values and adds up to prediction minus mean.
    #[test]
    fn equals_brute_force_shapley_values() {
        let trees = [
            uneven_tree(),
            // One split: the credit goes to its feature alone.
            Plain(vec![
                (Some((1, 0.0, 1, 2)), 0.0, 10.0),
                (None, 1.0, 3.0),
                (None, -2.0, 7.0),
            ]),
        ];
        let rows = [
            [0.1, 0.1, 0.9],
            [0.3, 0.9, 0.1],
            [0.9, 0.5, 0.8],
            [0.7, 0.9, 0.75],
            [0.6, -1.0, 0.2],
        ];
        // One workspace for every call, as the scorer keeps it.
        let mut work = Vec::new();
        for (t, tree) in trees.iter().enumerate() {
            for row in &rows {
                let mut phi = vec![0.0; 3];
                add_shap(tree, row, &mut phi, &mut work);
                let want = brute_force(tree, row, 3);
                for (got, want) in phi.iter().zip(&want) {
                    assert!((got - want).abs() < 1e-12, "tree {t}, row {row:?}: {phi:?} vs {want:?}");
                }
                let prediction = conditional(tree, row, 0b111, 0);
                let total: f64 = phi.iter().sum();
                assert!((expected_value(tree) + total - prediction).abs() < 1e-12);
            }
        }
    }

    /// The table adds what the walk adds (up to rounding) onto values already in `phi` (as
    /// the ensemble sums tree after tree), for rows on either side of every split, on a
    /// threshold and NaN; a tree with too many splits gets no table.
    #[test]
    fn table_adds_the_walks_values() {
        let tree = uneven_tree();
        let table = Table::new(&tree).expect("5 splits fit a table");
        assert_eq!(table.starts.len(), (1 << 5) + 1);
        let mut work = Vec::new();
        let values = [-1.0, 0.0, 0.2, 0.25, 0.3, 0.5, 0.7, 0.75, 0.8, 2.0, f64::NAN];
        for &a in &values {
            for &b in &values {
                for &c in &values {
                    let row = [a, b, c];
                    let (mut walked, mut looked_up) = (vec![0.1, -0.2, 1e-9], vec![0.1, -0.2, 1e-9]);
                    add_shap(&tree, &row, &mut walked, &mut work);
                    table.add(&row, &mut looked_up);
                    for (w, t) in walked.iter().zip(&looked_up) {
                        assert!((w - t).abs() < 1e-12, "row {row:?}: {walked:?} vs {looked_up:?}");
                    }
                }
            }
        }
        // A complete tree of depth 4 has 15 splits: more than a table holds.
        let mut nodes = Vec::new();
        for i in 0..31 {
            let split = (i < 15).then(|| (i % 3, 0.5, 2 * i + 1, 2 * i + 2));
            nodes.push((split, i as f64, 1.0 + (31 - i) as f64));
        }
        assert!(Table::new(&Plain(nodes)).is_none());
    }
}
