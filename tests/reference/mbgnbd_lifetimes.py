"""Reference values for the MBG/NBD model (src/score/mbgnbd.rs) from the Python
`lifetimes` package's ModifiedBetaGeoFitter, on the CDNOW calibration summary.

Run from the repository root (lifetimes 0.11.3 imports with current numpy/pandas):

    python3 -m venv /tmp/lt && /tmp/lt/bin/pip install lifetimes==0.11.3 mpmath
    /tmp/lt/bin/python tests/reference/mbgnbd_lifetimes.py

Writes, next to this script:

* mbgnbd_cdnow_fit.json -- the package versions; lifetimes' fit with its defaults
  (`params`, and `log_likelihood`, the total log-likelihood in weeks); the same
  likelihood maximised to full precision from there (`tight_params`,
  `tight_log_likelihood`; Newton's method on lifetimes' own objective and autograd
  derivatives); and unconditional checks with `params`.
* mbgnbd_cdnow.csv -- for every customer, in file order: x, t_x, T and, with
  `params`, lifetimes' P(alive) (`conditional_probability_alive`), its expected
  purchases in the next 39 weeks
  (`conditional_expected_number_of_purchases_up_to_time`), and the probability of no
  purchase in the next 13 weeks two ways: `p_no_purchase_13` from
  1 - p_alive + p_alive ((alpha+T)/(alpha+T+13))^(r+x) with lifetimes' P(alive), and
  `p_no_purchase_13_ll` as the likelihood ratio L(x, t_x, T+13) / L(x, t_x, T) with
  lifetimes' own log-likelihood (the likelihood of a history is the probability of
  its purchases and of no purchase after t_x until T, so the ratio is the probability
  of no purchase in (T, T+13] given the history). lifetimes 0.11.3 has no
  conditional P(X(T, T+t) = n) for this model; its unconditional
  `probability_of_n_purchases_up_to_time(t, 0)` is the x = t_x = T = 0 case of
  the same formula and is checked in the JSON.
* also in the JSON, `high_precision`: heavy buyers and long horizons, beyond the
  CDNOW customers, with P(alive), the conditional expectation and p_no_purchase
  evaluated in 50-digit arithmetic (mpmath) with `params`, and lifetimes' expectation.

Floats are written with repr(), so they round-trip exactly.
"""

import importlib.metadata
import json
import os
import sys

import autograd
import autograd.numpy as anp
import numpy as np
import pandas as pd
import scipy
from scipy.optimize import minimize

import lifetimes
import mpmath
from lifetimes import ModifiedBetaGeoFitter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SUMMARY = os.path.join(ROOT, "fixtures", "cdnow", "cdnow_customers_summary_with_transactions.csv")

EXPECTED_HORIZON = 39.0
NO_PURCHASE_HORIZON = 13.0


def total_log_likelihood(log_params, x, t_x, t_cal):
    """lifetimes' MBG/NBD total log-likelihood (its objective is the mean negative
    log-likelihood), in the time unit of the data (weeks)."""
    weights = anp.ones(len(x))
    nll = ModifiedBetaGeoFitter._negative_log_likelihood(log_params, x, t_x, t_cal, weights, 0.0)
    return -nll * len(x)


def high_precision(params, fitter):
    """P(alive), E[Y(t)] (Wagner and Hoppe 2008) and p_no_purchase in 50 digits."""
    mpmath.mp.dps = 50
    r, alpha, a, b = (mpmath.mpf(repr(params[k])) for k in ["r", "alpha", "a", "b"])
    out = []
    for x, t_x, t_cal, t in [
        (29.0, 38.0, 38.86, 39.0),
        (60.0, 38.0, 38.86, 39.0),
        (200.0, 38.0, 38.86, 39.0),
        (400.0, 38.0, 38.86, 52.0),
        (900.0, 38.86, 38.86, 13.0),
        (5.0, 10.0, 38.86, 520.0),
        (2.0, 30.43, 38.86, 5000.0),
        (0.0, 0.0, 0.5, 260.0),
    ]:
        mx, mtx, mT, mt = (mpmath.mpf(repr(v)) for v in (x, t_x, t_cal, t))
        alive = 1 / (1 + a / (b + mx) * ((alpha + mT) / (alpha + mtx)) ** (r + mx))
        z = mt / (alpha + mT + mt)
        hyp = mpmath.hyp2f1(r + mx, b + mx + 1, a + b + mx, z)
        expected = alive * (a + b + mx) / (a - 1) * (1 - ((alpha + mT) / (alpha + mT + mt)) ** (r + mx) * hyp)
        silent = 1 - alive + alive * ((alpha + mT) / (alpha + mT + mt)) ** (r + mx)
        out.append(
            {
                "x": x,
                "t_x": t_x,
                "T": t_cal,
                "t": t,
                "p_alive": float(alive),
                "expected_purchases": float(expected),
                "p_no_purchase": float(silent),
                "lifetimes_expected_purchases": float(
                    fitter.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, t_cal)
                ),
            }
        )
    return out


def main():
    data = pd.read_csv(SUMMARY)
    x = data["x"].to_numpy(dtype=float)
    t_x = data["t_x"].to_numpy(dtype=float)
    t_cal = data["T"].to_numpy(dtype=float)

    # lifetimes' fit with its defaults. It fits in rescaled time (the largest T is 1)
    # and its reported objective is per customer in that unit, so the log-likelihood
    # is evaluated again here in weeks.
    fitter = ModifiedBetaGeoFitter().fit(data["x"], data["t_x"], data["T"])
    names = ["r", "alpha", "a", "b"]
    params = {k: float(fitter.params_[k]) for k in names}
    log_params = np.log([params[k] for k in names])
    ll = float(total_log_likelihood(log_params, x, t_x, t_cal))

    # The same likelihood maximised to full precision (Newton's method, exact
    # derivatives), to tell the optimisers' tolerances apart from the model.
    objective = lambda p: -total_log_likelihood(p, x, t_x, t_cal) / len(x)
    tight = minimize(
        objective,
        log_params,
        jac=autograd.grad(objective),
        hess=autograd.hessian(objective),
        method="trust-exact",
        options={"gtol": 1e-13},
    )
    tight_params = dict(zip(names, map(float, np.exp(tight.x))))
    tight_ll = float(total_log_likelihood(tight.x, x, t_x, t_cal))
    gradient = autograd.grad(lambda p: total_log_likelihood(p, x, t_x, t_cal))(tight.x)

    r, alpha, a, b = (params[k] for k in names)
    p_alive = fitter.conditional_probability_alive(x, t_x, t_cal)
    expected = fitter.conditional_expected_number_of_purchases_up_to_time(EXPECTED_HORIZON, x, t_x, t_cal)
    h = NO_PURCHASE_HORIZON
    p_no = 1.0 - p_alive + p_alive * ((alpha + t_cal) / (alpha + t_cal + h)) ** (r + x)
    p_no_ll = np.array(
        [
            float(
                np.exp(
                    total_log_likelihood(log_params, x[i : i + 1], t_x[i : i + 1], t_cal[i : i + 1] + h)
                    - total_log_likelihood(log_params, x[i : i + 1], t_x[i : i + 1], t_cal[i : i + 1])
                )
            )
            for i in range(len(x))
        ]
    )
    for name, column in [("p_alive", p_alive), ("expected", expected), ("p_no_purchase", p_no)]:
        if not np.all(np.isfinite(column)):
            sys.exit(f"lifetimes returned a non-finite {name}")
    disagreement = float(np.max(np.abs(p_no - p_no_ll) / p_no))
    if disagreement > 1e-12:
        sys.exit(f"p_no_purchase: formula and likelihood ratio differ by {disagreement:e}")

    # The unconditional case: a customer seen only at their first purchase (x = t_x = T
    # = 0) has P(alive) = b/(a+b) and no purchase in t with probability
    # a/(a+b) + b/(a+b) (alpha/(alpha+t))^r, which is lifetimes' P(X(t) = 0).
    unconditional = []
    for t in [13.0, 39.0, 78.0]:
        formula = a / (a + b) + b / (a + b) * (alpha / (alpha + t)) ** r
        lifetimes_p0 = float(fitter.probability_of_n_purchases_up_to_time(t, 0))
        if abs(formula - lifetimes_p0) > 1e-12:
            sys.exit(f"P(X({t}) = 0): {formula} vs lifetimes {lifetimes_p0}")
        unconditional.append(
            {
                "t": t,
                "expected_purchases": float(fitter.expected_number_of_purchases_up_to_time(t)),
                "p_no_purchase": lifetimes_p0,
            }
        )

    fit = {
        "source": "tests/reference/mbgnbd_lifetimes.py",
        "data": "fixtures/cdnow/cdnow_customers_summary_with_transactions.csv",
        "versions": {
            "python": sys.version.split()[0],
            "lifetimes": lifetimes.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pandas": pd.__version__,
            "autograd": importlib.metadata.version("autograd"),
            "mpmath": mpmath.__version__,
        },
        "customers": len(x),
        "params": params,
        "log_likelihood": ll,
        "tight_params": tight_params,
        "tight_log_likelihood": tight_ll,
        "tight_gradient_max_abs": float(np.max(np.abs(gradient))),
        "expected_horizon": EXPECTED_HORIZON,
        "no_purchase_horizon": NO_PURCHASE_HORIZON,
        "p_no_purchase_formula_vs_likelihood_ratio_max_rel": disagreement,
        "unconditional": unconditional,
        "high_precision": high_precision(params, fitter),
    }
    with open(os.path.join(HERE, "mbgnbd_cdnow_fit.json"), "w") as f:
        json.dump(fit, f, indent=2)
        f.write("\n")

    with open(os.path.join(HERE, "mbgnbd_cdnow.csv"), "w") as f:
        f.write("x,t_x,T,p_alive,expected_39,p_no_purchase_13,p_no_purchase_13_ll\n")
        for row in zip(x, t_x, t_cal, p_alive, expected, p_no, p_no_ll):
            f.write(",".join(repr(float(v)) for v in row) + "\n")
    print(json.dumps(fit, indent=2))


if __name__ == "__main__":
    main()
