"""scikit-learn's L-BFGS against graft's whitened L-BFGS on the same logistic-regression fits.

Takes a feature file from `graft extract` (e.g. the one `scale_memory.py --keep DIR` leaves in
DIR/n100000/f.h5), draws the default head's 10,000-row stratified search sample from its train
split, and fits the first of the grid search's 3 cross-validation folds at each C with both
solvers, one BLAS thread, one fit at a time. For each: L-BFGS iterations, seconds, the loss's
distance from the optimum, and held-out accuracy on the fold's other rows. The optimum is the
whitened solver's loss run to tol 1e-8, where it computes in float64 (scikit-learn's L-BFGS
would need tens of thousands of iterations to get there).

Usage: python benchmarks/logreg_solver.py FEATURES.h5 [--C 1,10,100]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features")
    parser.add_argument("--C", default="1,10,100")
    args = parser.parse_args()
    import h5py
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    from graft.heads.fitting import MAX_SEARCH_ROWS, search_sample
    from graft.heads.logistic import WhitenedLogisticRegression

    with h5py.File(args.features, "r") as f:
        train = f["split"][:].astype(str) == "train"
        X, y = f["features"][:][train], f["labels"][:][train]
    sample = search_sample(y, MAX_SEARCH_ROWS)
    X, y = X[sample], y[sample]
    fit_rows, held_out = next(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    X_fit, y_fit = X[fit_rows], y[fit_rows]
    X64 = X_fit.astype(np.float64)

    def loss(model) -> float:
        z = X64 @ model.coef_.T + model.intercept_
        top = z.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
        rows = np.searchsorted(model.classes_, y_fit)
        return float((log_norm - z[np.arange(len(rows)), rows]).mean()
                     + (model.coef_ ** 2).sum() / (2 * model.C * len(rows)))

    print(f"{len(X_fit):,} x {X.shape[1]:,} features, {len(np.unique(y))} classes "
          f"(fold 1 of 3 of the {len(y):,}-row search sample)")
    print(f"{'C':>6}  {'solver':<14}{'iterations':>11}{'seconds':>9}{'gap':>10}{'accuracy':>10}")
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in (float(c) for c in args.C.split(",")):
            best = loss(WhitenedLogisticRegression(C=C, tol=1e-8, max_iter=20_000)
                        .fit(X_fit, y_fit))
            for name, model in (("scikit-learn", LogisticRegression(C=C, max_iter=3000)),
                                ("whitened", WhitenedLogisticRegression(C=C, max_iter=3000))):
                start = time.perf_counter()
                model.fit(X_fit, y_fit)
                seconds = time.perf_counter() - start
                accuracy = float(np.mean(model.predict(X[held_out]) == y[held_out]))
                print(f"{C:>6g}  {name:<14}{int(model.n_iter_[0]):>11,}{seconds:>9.1f}"
                      f"{loss(model) - best:>10.1e}{accuracy:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
