//! Deterministic minimisers for smooth objectives of a few parameters, used
//! to fit the customer-scoring models by maximum likelihood in log-parameter
//! space (the BG/NBD model of Fader, Hardie and Lee 2005, "Counting your
//! customers the easy way", and the Gamma-Gamma spend model of Fader, Hardie
//! and Lee 2005, "RFM and CLV: using iso-value curves").
//!
//! [`minimize_with_gradient`] is for objectives that come with an analytic
//! gradient: BFGS (Nocedal and Wright, *Numerical Optimization*, 2nd ed.,
//! alg. 6.1, with the initial inverse-Hessian scaling of eq. 6.20) with a
//! line search satisfying the strong Wolfe conditions (alg. 3.5 and 3.6,
//! cubic interpolation). It needs tens of evaluations where the
//! derivative-free path below needs hundreds. Its result counts only when it
//! is certified by both criteria below (small gradient and, from a Hessian
//! by differences of the analytic gradient, a negligible Newton step, after
//! at most a few closing Newton steps): a likelihood that keeps rising ever
//! more slowly as a parameter runs off to the boundary has a small gradient
//! but no located maximum. Whenever BFGS fails (no certificate, no descent
//! possible, its iteration budget spent, nothing finite in reach) the answer
//! is that of [`minimize`] from the same start, so degenerate data get
//! exactly the verdict of the derivative-free path.
//!
//! [`minimize`] is derivative-free: Nelder-Mead (Nelder and Mead 1965, with
//! the standard coefficients 1, 2, 1/2, 1/2) restarted from its own best point
//! until a restart no longer improves the objective, followed by a damped
//! Newton polish (Nocedal and Wright sec. 3.4: central-difference Hessian,
//! Levenberg damping until it is positive definite and the step descends,
//! Armijo backtracking). The Newton polish matters on the long, curved ridges
//! these likelihoods have (e.g. the Gamma-Gamma `q`-`gamma` ridge), where the
//! simplex stalls long before the gradient vanishes.
//!
//! Convergence is certified at the returned point, not merely by the simplex
//! collapsing or the steps getting short. The two criteria: the gradient is
//! small (`max_i |g_i| <= grad_tol * max(1, |f|)`; the analytic gradient for
//! BFGS, central differences for [`minimize`]), and the finite-difference
//! Hessian is positive definite with a negligible Newton step (the
//! Newton-decrement idea of Boyd and Vandenberghe, *Convex Optimization*, sec.
//! 9.5.1). BFGS needs both; the derivative-free path either, the second
//! being the scale-free test that still works when rounding noise in a large
//! likelihood keeps a finite-difference gradient from reaching a fixed
//! tolerance. There is no randomness: the same objective and
//! start always give the same answer.
//!
//! Non-finite objective values (`NaN`, `±inf`), and for
//! [`minimize_with_gradient`] non-finite gradients, are treated as `+inf`, so
//! an objective may simply return `f64::NAN` outside its domain.

/// Tuning knobs for [`minimize`]. The defaults suit log-likelihoods of a few
/// parameters on data sets from a handful to millions of customers.
#[derive(Debug, Clone, PartialEq)]
pub struct MinimizeOptions {
    /// Budget of BFGS iterations in [`minimize_with_gradient`]; 0 skips
    /// straight to the derivative-free path of [`minimize`].
    pub max_quasi_newton_iterations: usize,
    /// Budget of Nelder-Mead iterations, summed over all restarts.
    pub max_nelder_mead_iterations: usize,
    /// Budget of damped-Newton iterations in the final polish.
    pub max_newton_iterations: usize,
    /// Maximum number of Nelder-Mead restarts after the first run.
    pub max_restarts: usize,
    /// Edge length of the initial simplex along each coordinate (in the
    /// units of the parameters, i.e. log units when fitting in log space).
    pub initial_step: f64,
    /// Nelder-Mead stops when the spread of objective values over the
    /// simplex is at most `f_tol * max(1, |f_best|)` ...
    pub f_tol: f64,
    /// ... and every vertex is within `x_tol` (max norm) of the best one.
    pub x_tol: f64,
    /// The result counts as converged when the central-difference gradient
    /// satisfies `max_i |g_i| <= grad_tol * max(1, |f|)` ...
    pub grad_tol: f64,
    /// ... or when the finite-difference Hessian is positive definite and
    /// the full Newton step has max-norm at most `newton_step_tol` (in
    /// parameter units; relative precision when fitting in log space).
    pub newton_step_tol: f64,
    /// Largest step (max norm) the Newton polish may take in one iteration.
    pub max_newton_step: f64,
}

impl Default for MinimizeOptions {
    fn default() -> Self {
        Self {
            max_quasi_newton_iterations: 200,
            max_nelder_mead_iterations: 20_000,
            max_newton_iterations: 50,
            max_restarts: 10,
            initial_step: 0.5,
            f_tol: 1e-12,
            x_tol: 1e-8,
            grad_tol: 1e-8,
            newton_step_tol: 1e-6,
            max_newton_step: 2.0,
        }
    }
}

/// Result of [`minimize`].
#[derive(Debug, Clone, PartialEq)]
pub struct Minimum {
    /// Best point found.
    pub params: Vec<f64>,
    /// Objective value at `params` (`+inf` if no finite value was ever seen).
    pub value: f64,
    /// Iterations performed: BFGS, plus Nelder-Mead and Newton-polish
    /// iterations when the derivative-free path ran.
    pub iterations: usize,
    /// Objective evaluations performed (including those for gradients).
    pub evaluations: usize,
    /// Max-norm of the gradient at `params` (analytic when the BFGS run
    /// converged, central-difference otherwise).
    pub gradient_norm: f64,
    /// Whether `params` is certified as a minimum: the value is finite and
    /// the gradient criterion ([`MinimizeOptions::grad_tol`]) and the
    /// Newton-step criterion ([`MinimizeOptions::newton_step_tol`]) hold
    /// (BFGS), or either of them (derivative-free path).
    pub converged: bool,
}

/// Objective wrapper: counts evaluations and maps non-finite values to +inf.
struct Counted<F> {
    f: F,
    evaluations: usize,
}

impl<F: FnMut(&[f64]) -> f64> Counted<F> {
    fn eval(&mut self, x: &[f64]) -> f64 {
        self.evaluations += 1;
        let v = (self.f)(x);
        if v.is_finite() { v } else { f64::INFINITY }
    }
}

/// Minimise `f` starting from `x0`: Nelder-Mead with restarts, then a
/// damped-Newton polish, as described in the module documentation.
///
/// Never panics on objective values; if `f(x0)` is not finite the simplex
/// may still find finite values nearby, and if it never does the returned
/// [`Minimum::value`] is `+inf` with `converged == false`.
pub fn minimize<F: FnMut(&[f64]) -> f64>(f: F, x0: &[f64], options: &MinimizeOptions) -> Minimum {
    let mut obj = Counted { f, evaluations: 0 };
    let n = x0.len();
    if n == 0 {
        let value = obj.eval(x0);
        return Minimum {
            params: Vec::new(),
            value,
            iterations: 0,
            evaluations: obj.evaluations,
            gradient_norm: 0.0,
            converged: value.is_finite(),
        };
    }

    // Nelder-Mead with restarts from the best point.
    let mut budget = options.max_nelder_mead_iterations;
    let mut iterations = 0;
    let mut nm = nelder_mead(&mut obj, x0, options, budget);
    iterations += nm.iterations;
    budget = budget.saturating_sub(nm.iterations);
    for _ in 0..options.max_restarts {
        if budget == 0 || !nm.value.is_finite() {
            break;
        }
        let again = nelder_mead(&mut obj, &nm.params, options, budget);
        iterations += again.iterations;
        budget = budget.saturating_sub(again.iterations);
        let improvement = nm.value - again.value;
        let small = improvement <= options.f_tol * nm.value.abs().max(1.0);
        if again.value <= nm.value {
            nm = again;
        }
        if small && nm.converged {
            break;
        }
    }

    // Newton polish and gradient certificate.
    let polished = newton_polish(&mut obj, &nm.params, nm.value, options);
    iterations += polished.iterations;
    let converged = polished.value.is_finite() && polished.converged;
    Minimum {
        params: polished.params,
        value: polished.value,
        iterations,
        evaluations: obj.evaluations,
        gradient_norm: polished.gradient_norm,
        converged,
    }
}

/// Objective-and-gradient wrapper: counts evaluations and maps a non-finite
/// value or gradient to a value of +inf.
struct CountedGradient<F> {
    fg: F,
    evaluations: usize,
}

impl<F: FnMut(&[f64], &mut [f64]) -> f64> CountedGradient<F> {
    fn eval(&mut self, x: &[f64]) -> Point {
        self.evaluations += 1;
        let mut g = vec![0.0; x.len()];
        let v = (self.fg)(x, &mut g);
        let f = if v.is_finite() && g.iter().all(|gi| gi.is_finite()) {
            v
        } else {
            f64::INFINITY
        };
        Point { x: x.to_vec(), f, g }
    }
}

/// A point with its objective value and gradient.
struct Point {
    x: Vec<f64>,
    f: f64,
    g: Vec<f64>,
}

/// Minimise `fg` starting from `x0`, where `fg(x, g)` returns the objective
/// at `x` and writes its gradient into `g`: BFGS with a strong-Wolfe line
/// search, and the result of [`minimize`] from `x0` when BFGS does not end at
/// a certified minimum (see the module documentation); `iterations` and
/// `evaluations` then count both runs. With
/// [`MinimizeOptions::max_quasi_newton_iterations`] = 0 this is exactly
/// [`minimize`] on the objective value.
///
/// Never panics on objective values; if no finite value is ever seen the
/// returned [`Minimum::value`] is `+inf` with `converged == false`.
pub fn minimize_with_gradient<F: FnMut(&[f64], &mut [f64]) -> f64>(
    fg: F,
    x0: &[f64],
    options: &MinimizeOptions,
) -> Minimum {
    let mut obj = CountedGradient { fg, evaluations: 0 };
    let mut qn = None;
    if options.max_quasi_newton_iterations > 0 && !x0.is_empty() {
        let run = bfgs(&mut obj, x0, options);
        if run.converged {
            return Minimum {
                evaluations: obj.evaluations,
                ..run
            };
        }
        qn = Some(run);
    }
    // The derivative-free path from the same start, so that a fit BFGS cannot
    // certify gets exactly the verdict that path gives.
    let spent = obj.evaluations;
    let mut scratch = vec![0.0; x0.len()];
    let fallback = minimize(|x: &[f64]| (obj.fg)(x, &mut scratch), x0, options);
    Minimum {
        iterations: fallback.iterations + qn.map_or(0, |q| q.iterations),
        evaluations: fallback.evaluations + spent,
        ..fallback
    }
}

/// BFGS on the inverse Hessian (Nocedal and Wright alg. 6.1). The returned
/// [`Minimum::evaluations`] is not filled in (the caller counts).
fn bfgs<F: FnMut(&[f64], &mut [f64]) -> f64>(
    obj: &mut CountedGradient<F>,
    x0: &[f64],
    options: &MinimizeOptions,
) -> Minimum {
    let n = x0.len();
    let identity = || -> Vec<Vec<f64>> {
        (0..n)
            .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
            .collect()
    };
    let mut at = obj.eval(x0);
    let mut h = identity();
    // Whether `h` holds curvature information (false: the identity, whose
    // steps are not to scale, so the first trial step is kept short).
    let mut scaled = false;
    if at.f.is_finite()
        && let Some(inverse_hessian) = initial_inverse_hessian(obj, &at)
    {
        h = inverse_hessian;
        scaled = true;
    }
    let mut iterations = 0;
    let mut converged = false;
    let mut newton_steps_left = MAX_NEWTON_CONTINUATIONS;
    while at.f.is_finite() {
        if max_abs(&at.g) <= options.grad_tol * at.f.abs().max(1.0) {
            match newton_certificate(obj, &at, options) {
                Certificate::Located(step) => {
                    // Take the (negligible) Newton step too: it squares the
                    // remaining error for one more evaluation.
                    let x: Vec<f64> = at.x.iter().zip(&step).map(|(xi, si)| xi + si).collect();
                    let polished = obj.eval(&x);
                    if polished.f <= at.f {
                        at = polished;
                    }
                    converged = true;
                    break;
                }
                Certificate::Continue(inverse_hessian) if newton_steps_left > 0 => {
                    // Finish with exact Newton steps (quadratic convergence).
                    newton_steps_left -= 1;
                    h = inverse_hessian;
                    scaled = true;
                }
                // Flat or indefinite where the gradient (nearly) vanishes: an
                // optimum at the boundary of the parameter space, a saddle, or
                // a minimum that Newton steps do not pin down. Left to the
                // derivative-free path, whose verdicts are established.
                _ => break,
            }
        }
        if iterations >= options.max_quasi_newton_iterations {
            break;
        }
        iterations += 1;
        let mut d: Vec<f64> = h.iter().map(|row| -dot(row, &at.g)).collect();
        let slope = dot(&d, &at.g);
        if slope.is_nan() || slope >= 0.0 {
            // Not a descent direction (rounding in a stale H): restart from steepest descent.
            h = identity();
            scaled = false;
            d = at.g.iter().map(|v| -v).collect();
        }
        let d_norm = max_abs(&d);
        let alpha_max = options.max_newton_step / d_norm;
        let alpha0 = if scaled { 1.0 } else { options.initial_step / d_norm };
        let Some(next) = line_search(obj, &at, &d, alpha0.min(alpha_max), alpha_max) else {
            if scaled {
                h = identity();
                scaled = false;
                continue;
            }
            break; // no descent along steepest descent: noise floor or a kink
        };
        let s: Vec<f64> = next.x.iter().zip(&at.x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = next.g.iter().zip(&at.g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        let yy = dot(&y, &y);
        // Update only with positive curvature along the step (always true
        // after a strong-Wolfe step; not after a step capped at alpha_max).
        if sy > 1e-12 * dot(&s, &s).sqrt() * yy.sqrt() {
            if !scaled {
                // Nocedal and Wright eq. 6.20: H0 = (s'y / y'y) I.
                let gamma = sy / yy;
                h = identity()
                    .into_iter()
                    .map(|row| row.into_iter().map(|v| v * gamma).collect())
                    .collect();
                scaled = true;
            }
            bfgs_update(&mut h, &s, &y, sy);
        }
        at = next;
    }
    Minimum {
        gradient_norm: max_abs(&at.g),
        params: at.x,
        value: at.f,
        iterations,
        evaluations: 0,
        converged,
    }
}

/// Newton iterations BFGS may take after the gradient criterion first holds
/// without the Newton-step criterion (see [`newton_certificate`]).
const MAX_NEWTON_CONTINUATIONS: usize = 3;

/// Verdict on a point where the gradient criterion holds.
enum Certificate {
    /// The Hessian is positive definite and the Newton step (carried) is
    /// below [`MinimizeOptions::newton_step_tol`]: the minimum is located.
    Located(Vec<f64>),
    /// Positive definite, but the Newton step is longer; carries the inverse Hessian.
    Continue(Vec<Vec<f64>>),
    /// Not positive definite, or not computable (non-finite gradients nearby).
    Fails,
}

/// A small gradient alone does not locate a minimum of a likelihood that
/// flattens out towards the boundary of its parameter space (it may keep
/// rising ever more slowly as a parameter runs off to 0 or infinity). So
/// BFGS also requires the Newton step of the Hessian, by forward differences
/// of the analytic gradient (`n` evaluations), to be negligible: the same
/// certificate the derivative-free path's Newton polish uses.
fn newton_certificate<F: FnMut(&[f64], &mut [f64]) -> f64>(
    obj: &mut CountedGradient<F>,
    at: &Point,
    options: &MinimizeOptions,
) -> Certificate {
    let Some(hess) = gradient_hessian(obj, at) else {
        return Certificate::Fails;
    };
    let neg_g: Vec<f64> = at.g.iter().map(|v| -v).collect();
    let Some(step) = cholesky_solve(&hess, 0.0, &neg_g) else {
        return Certificate::Fails;
    };
    if max_abs(&step) <= options.newton_step_tol {
        return Certificate::Located(step);
    }
    inverse_positive_definite(&hess).map_or(Certificate::Fails, Certificate::Continue)
}

/// Starting inverse Hessian for BFGS: the inverse of the Hessian at the start
/// if it is positive definite, else the inverse of its diagonal if that is
/// positive; `None` (use the identity) otherwise. Costs `n` evaluations and
/// saves BFGS the iterations it would spend learning the scales.
fn initial_inverse_hessian<F: FnMut(&[f64], &mut [f64]) -> f64>(
    obj: &mut CountedGradient<F>,
    at: &Point,
) -> Option<Vec<Vec<f64>>> {
    let hess = gradient_hessian(obj, at)?;
    inverse_positive_definite(&hess).or_else(|| {
        let n = hess.len();
        let diagonal: Vec<f64> = (0..n).map(|i| hess[i][i]).collect();
        diagonal.iter().all(|d| d.is_finite() && *d > 0.0).then(|| {
            (0..n)
                .map(|i| (0..n).map(|j| if i == j { 1.0 / diagonal[i] } else { 0.0 }).collect())
                .collect()
        })
    })
}

/// Hessian by forward differences of the analytic gradient (`n`
/// evaluations), symmetrised; `None` if a probe is not finite.
fn gradient_hessian<F: FnMut(&[f64], &mut [f64]) -> f64>(
    obj: &mut CountedGradient<F>,
    at: &Point,
) -> Option<Vec<Vec<f64>>> {
    let n = at.x.len();
    // columns[j][i] = d g_i / d x_j
    let mut columns: Vec<Vec<f64>> = Vec::with_capacity(n);
    let mut probe = at.x.clone();
    for j in 0..n {
        let h = {
            let h = 1e-6 * at.x[j].abs().max(1.0);
            (at.x[j] + h) - at.x[j]
        };
        probe[j] = at.x[j] + h;
        let p = obj.eval(&probe);
        probe[j] = at.x[j];
        if !p.f.is_finite() {
            return None;
        }
        columns.push(p.g.iter().zip(&at.g).map(|(gp, g0)| (gp - g0) / h).collect());
    }
    Some(
        (0..n)
            .map(|i| (0..n).map(|j| 0.5 * (columns[j][i] + columns[i][j])).collect())
            .collect(),
    )
}

/// Inverse of a symmetric positive-definite matrix (by Cholesky); `None` if
/// it is not positive definite.
fn inverse_positive_definite(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = a.len();
    // The inverse of a symmetric matrix is symmetric: its columns are its rows.
    (0..n)
        .map(|j| {
            let unit: Vec<f64> = (0..n).map(|i| f64::from(u8::from(i == j))).collect();
            cholesky_solve(a, 0.0, &unit)
        })
        .collect()
}

/// `H <- (I - rho s y') H (I - rho y s') + rho s s'` with `rho = 1 / s'y`.
fn bfgs_update(h: &mut [Vec<f64>], s: &[f64], y: &[f64], sy: f64) {
    let rho = 1.0 / sy;
    let hy: Vec<f64> = h.iter().map(|row| dot(row, y)).collect();
    let yhy = dot(y, &hy);
    let ss_coef = rho * rho * yhy + rho;
    for (i, row) in h.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v += ss_coef * s[i] * s[j] - rho * (hy[i] * s[j] + s[i] * hy[j]);
        }
    }
}

/// One end of a line-search bracket: step length, value, directional derivative.
#[derive(Clone, Copy)]
struct Probe {
    alpha: f64,
    f: f64,
    slope: f64,
}

/// Line search along `d` from `from` for a step satisfying the strong Wolfe
/// conditions (Nocedal and Wright alg. 3.5), no longer than `alpha_max`.
/// `None` if no step decreases the objective enough (Armijo).
fn line_search<F: FnMut(&[f64], &mut [f64]) -> f64>(
    obj: &mut CountedGradient<F>,
    from: &Point,
    d: &[f64],
    alpha0: f64,
    alpha_max: f64,
) -> Option<Point> {
    const MAX_TRIALS: usize = 30;
    let slope0 = dot(&from.g, d);
    let origin = Probe {
        alpha: 0.0,
        f: from.f,
        slope: slope0,
    };
    let mut prev = (origin, None::<Point>);
    let mut alpha = alpha0;
    for i in 0..MAX_TRIALS {
        let p = probe(obj, from, d, alpha);
        let trial = Probe {
            alpha,
            f: p.f,
            slope: slope_of(&p, d),
        };
        if !sufficient_decrease(from.f, slope0, trial) || (i > 0 && trial.f >= prev.0.f) {
            return zoom(obj, from, d, prev, trial);
        }
        if trial.slope.abs() <= -WOLFE_C2 * slope0 {
            return Some(p);
        }
        if trial.slope >= 0.0 {
            return zoom(obj, from, d, (trial, Some(p)), prev.0);
        }
        if alpha >= alpha_max {
            return Some(p); // longest step allowed, and still descending
        }
        prev = (trial, Some(p));
        alpha = (2.0 * alpha).min(alpha_max);
    }
    prev.1
}

/// Armijo constant of the line search.
const WOLFE_C1: f64 = 1e-4;
/// Curvature constant of the line search (the usual choice for quasi-Newton).
const WOLFE_C2: f64 = 0.9;

fn probe<F: FnMut(&[f64], &mut [f64]) -> f64>(
    obj: &mut CountedGradient<F>,
    from: &Point,
    d: &[f64],
    alpha: f64,
) -> Point {
    let x: Vec<f64> = from.x.iter().zip(d).map(|(xi, di)| xi + alpha * di).collect();
    obj.eval(&x)
}

fn slope_of(p: &Point, d: &[f64]) -> f64 {
    if p.f.is_finite() { dot(&p.g, d) } else { f64::NAN }
}

fn sufficient_decrease(f0: f64, slope0: f64, t: Probe) -> bool {
    t.f.is_finite() && t.f <= f0 + WOLFE_C1 * t.alpha * slope0
}

/// Nocedal and Wright alg. 3.6: shrink the bracket `[lo, hi]` (`lo` satisfies
/// the Armijo condition and has the lower value; its point is `None` at step
/// 0) by safeguarded cubic interpolation. Returns the last `lo` point if the
/// curvature condition cannot be met (`None` if that is still step 0).
fn zoom<F: FnMut(&[f64], &mut [f64]) -> f64>(
    obj: &mut CountedGradient<F>,
    from: &Point,
    d: &[f64],
    lo: (Probe, Option<Point>),
    hi: Probe,
) -> Option<Point> {
    const MAX_TRIALS: usize = 30;
    let slope0 = dot(&from.g, d);
    let (mut lo, mut lo_point) = lo;
    let mut hi = hi;
    let x_scale = 1.0 + max_abs(&from.x);
    let d_norm = max_abs(d);
    for _ in 0..MAX_TRIALS {
        let width = hi.alpha - lo.alpha;
        if width.abs() * d_norm <= 1e-15 * x_scale {
            break;
        }
        let alpha = safeguarded_cubic(lo, hi);
        let p = probe(obj, from, d, alpha);
        let trial = Probe {
            alpha,
            f: p.f,
            slope: slope_of(&p, d),
        };
        if !sufficient_decrease(from.f, slope0, trial) || trial.f >= lo.f {
            hi = trial;
        } else {
            if trial.slope.abs() <= -WOLFE_C2 * slope0 {
                return Some(p);
            }
            if trial.slope * (hi.alpha - lo.alpha) >= 0.0 {
                hi = lo;
            }
            lo = trial;
            lo_point = Some(p);
        }
    }
    lo_point
}

/// Minimiser of the cubic through `lo` and `hi` (values and slopes), kept
/// at least a tenth of the bracket away from either end; bisection when `hi`
/// is not finite or the cubic has no usable minimum.
fn safeguarded_cubic(lo: Probe, hi: Probe) -> f64 {
    let width = hi.alpha - lo.alpha;
    let (low, high) = (lo.alpha + 0.1 * width, hi.alpha - 0.1 * width);
    let (min, max) = if low <= high { (low, high) } else { (high, low) };
    let bisect = lo.alpha + 0.5 * width;
    if !(hi.f.is_finite() && hi.slope.is_finite()) {
        return bisect;
    }
    let d1 = lo.slope + hi.slope - 3.0 * (lo.f - hi.f) / (lo.alpha - hi.alpha);
    let disc = d1 * d1 - lo.slope * hi.slope;
    if disc.is_nan() || disc < 0.0 {
        return bisect;
    }
    let d2 = width.signum() * disc.sqrt();
    let alpha = hi.alpha - width * (hi.slope + d2 - d1) / (hi.slope - lo.slope + 2.0 * d2);
    if alpha.is_finite() {
        alpha.clamp(min, max)
    } else {
        bisect
    }
}

struct NmResult {
    params: Vec<f64>,
    value: f64,
    iterations: usize,
    converged: bool,
}

fn nelder_mead<F: FnMut(&[f64]) -> f64>(
    obj: &mut Counted<F>,
    x0: &[f64],
    options: &MinimizeOptions,
    budget: usize,
) -> NmResult {
    const REFLECT: f64 = 1.0;
    const EXPAND: f64 = 2.0;
    const CONTRACT: f64 = 0.5;
    const SHRINK: f64 = 0.5;
    let n = x0.len();

    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    simplex.push((x0.to_vec(), obj.eval(x0)));
    for i in 0..n {
        let mut x = x0.to_vec();
        x[i] += options.initial_step;
        let fx = obj.eval(&x);
        simplex.push((x, fx));
    }

    let point =
        |c: &[f64], d: &[f64], t: f64| -> Vec<f64> { c.iter().zip(d).map(|(ci, di)| ci + t * (di - ci)).collect() };

    let mut iterations = 0;
    let mut converged = false;
    loop {
        simplex.sort_by(|p, q| p.1.total_cmp(&q.1));
        let f_best = simplex[0].1;
        let f_worst = simplex[n].1;
        let f_spread = f_worst - f_best;
        let x_spread = simplex[1..]
            .iter()
            .flat_map(|(x, _)| x.iter().zip(&simplex[0].0).map(|(a, b)| (a - b).abs()))
            .fold(0.0_f64, f64::max);
        if f_best.is_finite() && f_spread <= options.f_tol * f_best.abs().max(1.0) && x_spread <= options.x_tol {
            converged = true;
            break;
        }
        if iterations >= budget {
            break;
        }
        iterations += 1;

        // Centroid of all vertices but the worst.
        let mut centroid = vec![0.0; n];
        for (x, _) in &simplex[..n] {
            for (c, xi) in centroid.iter_mut().zip(x) {
                *c += xi / n as f64;
            }
        }
        let worst = simplex[n].0.clone();
        let xr = point(&centroid, &worst, -REFLECT);
        let fr = obj.eval(&xr);
        if fr < f_best {
            let xe = point(&centroid, &xr, EXPAND);
            let fe = obj.eval(&xe);
            simplex[n] = if fe < fr { (xe, fe) } else { (xr, fr) };
            continue;
        }
        if fr < simplex[n - 1].1 {
            simplex[n] = (xr, fr);
            continue;
        }
        let (xc, fc) = if fr < f_worst {
            let xc = point(&centroid, &xr, CONTRACT);
            let fc = obj.eval(&xc);
            (xc, if fc <= fr { fc } else { f64::INFINITY })
        } else {
            let xc = point(&centroid, &worst, CONTRACT);
            let fc = obj.eval(&xc);
            (xc, if fc < f_worst { fc } else { f64::INFINITY })
        };
        if fc.is_finite() {
            simplex[n] = (xc, fc);
            continue;
        }
        // Shrink towards the best vertex.
        let best = simplex[0].0.clone();
        for vertex in simplex.iter_mut().skip(1) {
            let x = point(&best, &vertex.0, SHRINK);
            let fx = obj.eval(&x);
            *vertex = (x, fx);
        }
    }
    simplex.sort_by(|p, q| p.1.total_cmp(&q.1));
    let (params, value) = simplex.swap_remove(0);
    NmResult {
        params,
        value,
        iterations,
        converged,
    }
}

/// Central-difference gradient; `None` if any probe is not finite.
fn gradient<F: FnMut(&[f64]) -> f64>(obj: &mut Counted<F>, x: &[f64]) -> Option<Vec<f64>> {
    let mut g = Vec::with_capacity(x.len());
    let mut probe = x.to_vec();
    for i in 0..x.len() {
        // Step ~ cbrt(eps) * scale balances truncation and rounding error.
        let h = 6e-6 * x[i].abs().max(1.0);
        probe[i] = x[i] + h;
        let hi = probe[i] - x[i]; // exact representable step
        let fp = obj.eval(&probe);
        probe[i] = x[i] - hi;
        let fm = obj.eval(&probe);
        probe[i] = x[i];
        if !(fp.is_finite() && fm.is_finite()) {
            return None;
        }
        g.push((fp - fm) / (2.0 * hi));
    }
    Some(g)
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0_f64, |m, x| m.max(x.abs()))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

struct PolishResult {
    params: Vec<f64>,
    value: f64,
    iterations: usize,
    gradient_norm: f64,
    converged: bool,
}

/// Central-difference Hessian with steps ~ eps^(1/4) * scale; `None` if any
/// probe is not finite.
fn hessian<F: FnMut(&[f64]) -> f64>(obj: &mut Counted<F>, x: &[f64], fx: f64) -> Option<Vec<Vec<f64>>> {
    let n = x.len();
    let h: Vec<f64> = x
        .iter()
        .map(|xi| {
            let h = 1e-4 * xi.abs().max(1.0);
            (xi + h) - xi
        })
        .collect();
    let mut probe = x.to_vec();
    let mut at = |probe: &mut Vec<f64>, steps: &[(usize, f64)]| -> f64 {
        for &(i, s) in steps {
            probe[i] = x[i] + s;
        }
        let v = obj.eval(probe);
        for &(i, _) in steps {
            probe[i] = x[i];
        }
        v
    };
    let mut hess = vec![vec![0.0; n]; n];
    for i in 0..n {
        let fp = at(&mut probe, &[(i, h[i])]);
        let fm = at(&mut probe, &[(i, -h[i])]);
        hess[i][i] = (fp - 2.0 * fx + fm) / (h[i] * h[i]);
        for j in 0..i {
            let fpp = at(&mut probe, &[(i, h[i]), (j, h[j])]);
            let fpm = at(&mut probe, &[(i, h[i]), (j, -h[j])]);
            let fmp = at(&mut probe, &[(i, -h[i]), (j, h[j])]);
            let fmm = at(&mut probe, &[(i, -h[i]), (j, -h[j])]);
            let v = (fpp - fpm - fmp + fmm) / (4.0 * h[i] * h[j]);
            hess[i][j] = v;
            hess[j][i] = v;
        }
    }
    hess.iter().flatten().all(|v| v.is_finite()).then_some(hess)
}

/// Solve `(A + mu I) d = b` by Cholesky; `None` if not positive definite.
fn cholesky_solve(a: &[Vec<f64>], mu: f64, b: &[f64]) -> Option<Vec<f64>> {
    let n = b.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let dot_ij: f64 = l[i][..j].iter().zip(&l[j][..j]).map(|(p, q)| p * q).sum();
            let s = a[i][j] + if i == j { mu } else { 0.0 } - dot_ij;
            if i == j {
                if s.is_nan() || s <= 0.0 {
                    return None;
                }
                l[i][i] = s.sqrt();
            } else {
                l[i][j] = s / l[j][j];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i][k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i][i];
    }
    let mut d = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k][i] * d[k]).sum();
        d[i] = (y[i] - s) / l[i][i];
    }
    d.iter().all(|v| v.is_finite()).then_some(d)
}

/// Damped Newton polish (Levenberg-style damping `mu` added to a
/// finite-difference Hessian until it is positive definite and the step
/// decreases `f`), from a point Nelder-Mead has already brought close to the
/// minimum.
fn newton_polish<F: FnMut(&[f64]) -> f64>(
    obj: &mut Counted<F>,
    x0: &[f64],
    f0: f64,
    options: &MinimizeOptions,
) -> PolishResult {
    const ARMIJO: f64 = 1e-4;
    let mut x = x0.to_vec();
    let mut fx = f0;
    let mut iterations = 0;
    let mut gradient_norm = f64::INFINITY;
    let mut converged = false;
    if !fx.is_finite() {
        return PolishResult {
            params: x,
            value: fx,
            iterations,
            gradient_norm,
            converged,
        };
    }
    while let Some(g) = gradient(obj, &x) {
        gradient_norm = max_abs(&g);
        if gradient_norm <= options.grad_tol * fx.abs().max(1.0) {
            converged = true;
            break;
        }
        let Some(hess) = hessian(obj, &x, fx) else {
            break;
        };
        let neg_g: Vec<f64> = g.iter().map(|v| -v).collect();
        // Newton-step certificate: positive-definite Hessian and a full
        // Newton step below tolerance means the minimum is located to that
        // precision, even when the gradient is not small in absolute terms
        // (steep likelihoods of large data sets).
        if let Some(d) = cholesky_solve(&hess, 0.0, &neg_g)
            && max_abs(&d) <= options.newton_step_tol
        {
            converged = true;
            break;
        }
        if iterations >= options.max_newton_iterations {
            break;
        }
        iterations += 1;
        let diag_scale = hess
            .iter()
            .enumerate()
            .map(|(i, row)| row[i].abs())
            .fold(0.0_f64, f64::max)
            .max(1e-300);
        let mut mu = 0.0;
        let mut improved = false;
        for _ in 0..40 {
            let Some(mut d) = cholesky_solve(&hess, mu, &neg_g) else {
                mu = (mu * 10.0).max(1e-10 * diag_scale);
                continue;
            };
            let d_norm = max_abs(&d);
            if d_norm > options.max_newton_step {
                let s = options.max_newton_step / d_norm;
                d.iter_mut().for_each(|v| *v *= s);
            }
            let slope = dot(&d, &g);
            let mut t = 1.0;
            while t > 1e-3 {
                let xt: Vec<f64> = x.iter().zip(&d).map(|(xi, di)| xi + t * di).collect();
                let ft = obj.eval(&xt);
                if ft < fx && ft <= fx + ARMIJO * t * slope {
                    x = xt;
                    fx = ft;
                    improved = true;
                    break;
                }
                t *= 0.5;
            }
            if improved {
                break;
            }
            mu = (mu * 10.0).max(1e-6 * diag_scale);
        }
        if !improved {
            break; // no descent possible: at the noise floor or a kink
        }
    }
    PolishResult {
        params: x,
        value: fx,
        iterations,
        gradient_norm,
        converged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimises_rosenbrock() {
        // Rosenbrock (1960): minimum 0 at (1, 1), a curved narrow valley.
        let f = |p: &[f64]| (1.0 - p[0]).powi(2) + 100.0 * (p[1] - p[0] * p[0]).powi(2);
        let m = minimize(f, &[-1.2, 1.0], &MinimizeOptions::default());
        assert!(m.converged, "{m:?}");
        assert!((m.params[0] - 1.0).abs() < 1e-6, "{m:?}");
        assert!((m.params[1] - 1.0).abs() < 1e-6, "{m:?}");
        assert!(m.value < 1e-12);
    }

    #[test]
    fn minimises_shifted_quadratic_in_four_dimensions() {
        let centre = [0.3, -2.0, 5.0, 1e-3];
        let f = |p: &[f64]| {
            p.iter()
                .zip(&centre)
                .enumerate()
                .map(|(i, (x, c))| (i as f64 + 1.0) * (x - c).powi(2))
                .sum::<f64>()
                + 7.0
        };
        let m = minimize(f, &[0.0; 4], &MinimizeOptions::default());
        assert!(m.converged);
        for (x, c) in m.params.iter().zip(&centre) {
            assert!((x - c).abs() < 1e-6, "{m:?}");
        }
        assert!((m.value - 7.0).abs() < 1e-10);
    }

    #[test]
    fn treats_nan_as_infinite_and_stays_in_domain() {
        // f(x) = x - ln x has its minimum at x = 1 and is undefined for x <= 0.
        let f = |p: &[f64]| {
            if p[0] > 0.0 { p[0] - p[0].ln() } else { f64::NAN }
        };
        let m = minimize(f, &[3.0], &MinimizeOptions::default());
        assert!(m.converged);
        assert!((m.params[0] - 1.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn reports_non_convergence_when_budget_is_tiny() {
        let f = |p: &[f64]| (1.0 - p[0]).powi(2) + 100.0 * (p[1] - p[0] * p[0]).powi(2);
        let opts = MinimizeOptions {
            max_nelder_mead_iterations: 3,
            max_newton_iterations: 1,
            max_restarts: 0,
            ..MinimizeOptions::default()
        };
        let m = minimize(f, &[-1.2, 1.0], &opts);
        assert!(!m.converged);
        assert!(m.iterations <= 4);
    }

    #[test]
    fn is_deterministic() {
        let f = |p: &[f64]| (p[0] - 1.0).powi(4) + (p[0] + p[1]).powi(2) + p[2].cosh();
        let a = minimize(f, &[2.0, 2.0, 2.0], &MinimizeOptions::default());
        let b = minimize(f, &[2.0, 2.0, 2.0], &MinimizeOptions::default());
        assert_eq!(a, b);
    }

    fn rosenbrock_with_gradient(p: &[f64], g: &mut [f64]) -> f64 {
        let (a, b) = (1.0 - p[0], p[1] - p[0] * p[0]);
        g[0] = -2.0 * a - 400.0 * p[0] * b;
        g[1] = 200.0 * b;
        a * a + 100.0 * b * b
    }

    #[test]
    fn quasi_newton_minimises_rosenbrock_in_few_evaluations() {
        let opts = MinimizeOptions::default();
        let m = minimize_with_gradient(rosenbrock_with_gradient, &[-1.2, 1.0], &opts);
        assert!(m.converged, "{m:?}");
        assert!(
            (m.params[0] - 1.0).abs() < 1e-6 && (m.params[1] - 1.0).abs() < 1e-6,
            "{m:?}"
        );
        assert!(m.gradient_norm <= opts.grad_tol, "{m:?}");
        // BFGS alone (no fallback): far fewer evaluations than the derivative-free path.
        let derivative_free = minimize(
            |p: &[f64]| rosenbrock_with_gradient(p, &mut [0.0; 2]),
            &[-1.2, 1.0],
            &opts,
        );
        assert!(m.iterations <= opts.max_quasi_newton_iterations, "{m:?}");
        assert!(
            m.evaluations * 5 < derivative_free.evaluations,
            "{m:?} vs {derivative_free:?}"
        );
    }

    #[test]
    fn quasi_newton_minimises_an_ill_scaled_quadratic() {
        // Curvatures 1 .. 1e6: the initial-Hessian scaling and the updates must cope.
        let centre = [0.3, -2.0, 5.0, 1e-3];
        let fg = |p: &[f64], g: &mut [f64]| {
            let mut f = 7.0;
            for i in 0..4 {
                let c = 10f64.powi(2 * i as i32);
                g[i] = 2.0 * c * (p[i] - centre[i]);
                f += c * (p[i] - centre[i]).powi(2);
            }
            f
        };
        let m = minimize_with_gradient(fg, &[0.0; 4], &MinimizeOptions::default());
        assert!(m.converged, "{m:?}");
        for (x, c) in m.params.iter().zip(&centre) {
            assert!((x - c).abs() < 1e-6, "{m:?}");
        }
        assert!(m.evaluations < 100, "{m:?}");
    }

    #[test]
    fn quasi_newton_stays_in_the_domain() {
        // f(x) = x - ln x, minimum at 1, undefined for x <= 0; a long first
        // step lands outside and must be shortened.
        let fg = |p: &[f64], g: &mut [f64]| {
            g[0] = 1.0 - 1.0 / p[0];
            if p[0] > 0.0 { p[0] - p[0].ln() } else { f64::NAN }
        };
        let m = minimize_with_gradient(fg, &[30.0], &MinimizeOptions::default());
        assert!(m.converged, "{m:?}");
        assert!((m.params[0] - 1.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn wrong_gradient_falls_back_to_the_derivative_free_path() {
        // The gradient points uphill, so no BFGS step can descend; the fallback
        // (which uses only values) still finds the minimum at 2.
        let fg = |p: &[f64], g: &mut [f64]| {
            g[0] = -2.0 * (p[0] - 2.0);
            (p[0] - 2.0).powi(2)
        };
        let opts = MinimizeOptions::default();
        let m = minimize_with_gradient(fg, &[0.0], &opts);
        assert!(m.converged, "{m:?}");
        assert!((m.params[0] - 2.0).abs() < 1e-6, "{m:?}");
        let alone = minimize(|p: &[f64]| (p[0] - 2.0).powi(2), &[0.0], &opts);
        assert_eq!(m.params, alone.params);
        assert!(
            m.iterations > alone.iterations && m.evaluations > alone.evaluations,
            "{m:?} vs {alone:?}"
        );
    }

    #[test]
    fn zero_quasi_newton_budget_is_the_derivative_free_path() {
        let opts = MinimizeOptions {
            max_quasi_newton_iterations: 0,
            ..MinimizeOptions::default()
        };
        let with = minimize_with_gradient(rosenbrock_with_gradient, &[-1.2, 1.0], &opts);
        let without = minimize(
            |p: &[f64]| rosenbrock_with_gradient(p, &mut [0.0; 2]),
            &[-1.2, 1.0],
            &opts,
        );
        assert_eq!(with, without);
    }

    #[test]
    fn quasi_newton_reports_non_convergence_and_is_deterministic() {
        let opts = MinimizeOptions {
            max_quasi_newton_iterations: 2,
            max_nelder_mead_iterations: 3,
            max_newton_iterations: 1,
            max_restarts: 0,
            ..MinimizeOptions::default()
        };
        let m = minimize_with_gradient(rosenbrock_with_gradient, &[-1.2, 1.0], &opts);
        assert!(!m.converged, "{m:?}");
        assert!(m.iterations <= 2 + 4, "{m:?}");
        let again = minimize_with_gradient(rosenbrock_with_gradient, &[-1.2, 1.0], &opts);
        assert_eq!(m, again);
        let never = minimize_with_gradient(|_p: &[f64], _g: &mut [f64]| f64::NAN, &[0.0, 0.0], &opts);
        assert!(!never.converged);
        assert_eq!(never.value, f64::INFINITY);
    }

    #[test]
    fn unbounded_objective_is_not_converged() {
        // Never finite anywhere: value stays +inf.
        let m = minimize(|_p: &[f64]| f64::NAN, &[0.0, 0.0], &MinimizeOptions::default());
        assert!(!m.converged);
        assert_eq!(m.value, f64::INFINITY);
    }
}
