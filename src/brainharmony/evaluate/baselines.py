"""Baselines and linear probes: null model, (kernel) ridge and logistic regression.

Every feature-based model first standardises the features with the training
partition's mean and standard deviation and divides every row by the training rows'
root-mean-square norm, so the regularisation grids are scale-free: the same grid
suits 79,800 FC edges and a 64-dimensional embedding.

* **Ridge** (``fc_ridge``; the linear probes' regression head): linear-kernel ridge
  in its dual form (``K = X X^T``, one eigendecomposition per fold serves the whole
  alpha grid), intercept = training mean. For classification, a ridge classifier:
  one-vs-rest targets in {-1, +1}, the class with the largest score is predicted,
  ``p_<class>`` are the softmax of the scores (monotone, not calibrated).
* **Kernel ridge** (``fc_kernel_ridge``): the same with an RBF kernel
  ``exp(-gamma |x - x'|^2)``, ``gamma = factor / median squared distance`` between
  training rows (median heuristic) over ``rbf_gamma_factors``.
* **Logistic regression** (``fc_logistic``; the linear probes' classification
  head): L2-penalised (multinomial for more than two classes; scikit-learn's
  objective, ``C`` as there), fitted by L-BFGS on the training rows projected onto
  their own row space. The L2 solution lies in that span (representer theorem), so
  this is exact and turns a 79,800-column problem into an n_train-column one; the
  ``C`` grid is warm-started from the strongest regularisation.
* **Null** (``null_model``): the majority class of the training partition with the
  training class frequencies as probabilities; the training mean for regression.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from brainharmony.evaluate.harness import Fold, FoldOutcome, GridModel, HarnessModel, Output
from brainharmony.evaluate.settings import TaskSpec

logger = logging.getLogger(__name__)

#: Relative eigenvalue below which a Gram-matrix direction is treated as null.
_EIG_TOL = 1e-10


def standardise(x_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Standardise with training statistics and scale rows to unit RMS norm.

    Parameters
    ----------
    x_train : ndarray of shape (n_train, d)
    *others : ndarray of shape (n, d)
        Transformed with the training statistics only.

    Returns
    -------
    x_train_scaled, others_scaled
    """
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    xt = (x_train - mean) / std
    rms = float(np.sqrt((xt * xt).sum(axis=1).mean()))
    rms = rms if rms > 0 else 1.0
    return xt / rms, [((o - mean) / std) / rms for o in others]


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_codes(y: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    pos = {c: i for i, c in enumerate(classes)}
    return np.asarray([pos[str(v)] for v in y], dtype=np.int64)


def _targets(y: np.ndarray, task: TaskSpec, classes: Sequence[str] | None) -> np.ndarray:
    """Regression: (n, 1) floats. Classification: (n, C) one-vs-rest in {-1, +1}."""
    if task.type == "regression":
        return np.asarray(y, dtype=float)[:, None]
    assert classes is not None
    codes = class_codes(y, classes)
    out = -np.ones((codes.size, len(classes)))
    out[np.arange(codes.size), codes] = 1.0
    return out


def _outputs(scores: np.ndarray, task: TaskSpec, classes: Sequence[str] | None) -> Output:
    if task.type == "regression":
        return Output(scores[:, 0].astype(float))
    assert classes is not None
    labels = np.asarray(classes, dtype=object)[scores.argmax(axis=1)]
    return Output(labels, softmax(scores))


def kernel_ridge_path(
    k_train: np.ndarray,
    targets: np.ndarray,
    k_eval: Sequence[np.ndarray],
    alphas: Sequence[float],
) -> list[list[np.ndarray]]:
    """Kernel ridge predictions for every alpha from one eigendecomposition.

    Parameters
    ----------
    k_train : ndarray of shape (n, n)
        Training Gram matrix.
    targets : ndarray of shape (n, t)
        Training targets (centred inside; the mean is added back).
    k_eval : sequence of ndarray of shape (m_i, n)
        Cross-kernels evaluation x training.
    alphas : sequence of float

    Returns
    -------
    list (per alpha) of list (per k_eval) of ndarray of shape (m_i, t)
    """
    mean = targets.mean(axis=0)
    w, u = np.linalg.eigh((k_train + k_train.T) / 2.0)
    w = np.clip(w, 0.0, None)
    proj = u.T @ (targets - mean)
    out = []
    for alpha in alphas:
        dual = u @ (proj / (w + alpha)[:, None])
        out.append([k @ dual + mean for k in k_eval])
    return out


def _ridge_candidates(
    k_train: np.ndarray,
    k_eval: Sequence[np.ndarray],
    targets: np.ndarray,
    alphas: Sequence[float],
    task: TaskSpec,
    classes: Sequence[str] | None,
    **fixed: float,
) -> list[tuple[dict[str, Any], list[Output]]]:
    """One grid candidate per alpha of :func:`kernel_ridge_path` on these kernels.

    ``fixed`` are the kernel's own hyperparameters, listed before ``alpha`` in each
    candidate's parameters.
    """
    preds = kernel_ridge_path(k_train, targets, k_eval, alphas)
    return [
        ({**fixed, "alpha": float(a)}, [_outputs(p, task, classes) for p in per])
        for a, per in zip(alphas, preds, strict=True)
    ]


class _FeatureModel(GridModel):
    """Reads its features from a :class:`brainharmony.evaluate.data.FeatureTable`."""

    feature_key = "fc"

    def _table(self) -> Any:
        if self.feature_key == "embedding":
            tables = self.inputs.get("embedding", {})
            if self.name not in tables:
                raise ValueError(f"{self.name}: no embedding file given (--embedding NAME=FILE)")
            return tables[self.name]
        table = self.inputs.get("fc")
        if table is None:
            raise ValueError(f"{self.name}: no FC input given (--series or --fc-shard)")
        return table

    def available_subjects(self) -> set[str] | None:
        return {str(s) for s in self._table().subjects}

    def features(self, subjects: Sequence[str]) -> np.ndarray:
        return self._table().take(list(subjects))


class NullModel(HarnessModel):
    """Majority class / training mean, ignoring the features."""

    def run_fold(self, fold: Fold) -> FoldOutcome:
        if self.task.type == "regression":
            mean = float(np.mean(np.asarray(fold.y_train, dtype=float)))
            val = Output(np.full(fold.val.size, mean))
            test = Output(np.full(fold.test.size, mean))
        else:
            classes = fold.classes
            assert classes is not None
            counts = np.bincount(class_codes(fold.y_train, classes), minlength=len(classes))
            freq = counts / counts.sum()
            label = classes[int(np.argmax(counts))]  # ties: the first class in order
            val = Output(
                np.full(fold.val.size, label, dtype=object), np.tile(freq, (fold.val.size, 1))
            )
            test = Output(
                np.full(fold.test.size, label, dtype=object), np.tile(freq, (fold.test.size, 1))
            )
        return FoldOutcome(val, test, {}, self.select_value(fold.y_val, val, fold.classes))


class RidgeModel(_FeatureModel):
    """Linear ridge (regression) / ridge classifier on standardised features."""

    def fit_candidates(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_eval: Sequence[np.ndarray],
        classes: tuple[str, ...] | None,
    ) -> list[tuple[dict[str, Any], list[Output]]]:
        xt, others = standardise(x_train, *x_eval)
        return _ridge_candidates(
            xt @ xt.T,
            [o @ xt.T for o in others],
            _targets(y_train, self.task, classes),
            self.settings.grids.ridge_alphas,
            self.task,
            classes,
        )


class KernelRidgeModel(_FeatureModel):
    """RBF kernel ridge (regression) / kernel ridge classifier."""

    def fit_candidates(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_eval: Sequence[np.ndarray],
        classes: tuple[str, ...] | None,
    ) -> list[tuple[dict[str, Any], list[Output]]]:
        xt, others = standardise(x_train, *x_eval)
        sq_t = (xt * xt).sum(axis=1)
        d_train = np.clip(sq_t[:, None] + sq_t[None, :] - 2.0 * xt @ xt.T, 0.0, None)
        d_eval = [
            np.clip((o * o).sum(axis=1)[:, None] + sq_t[None, :] - 2.0 * o @ xt.T, 0.0, None)
            for o in others
        ]
        off = d_train[np.triu_indices_from(d_train, 1)]
        median = float(np.median(off)) if off.size else 1.0
        median = median if median > 0 else 1.0
        targets = _targets(y_train, self.task, classes)
        out: list[tuple[dict[str, Any], list[Output]]] = []
        for factor in self.settings.grids.rbf_gamma_factors:
            gamma = factor / median
            out += _ridge_candidates(
                np.exp(-gamma * d_train),
                [np.exp(-gamma * d) for d in d_eval],
                targets,
                self.settings.grids.kernel_alphas,
                self.task,
                classes,
                gamma_factor=float(factor),
            )
        return out


def row_space(x_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Coordinates in the training rows' span: ``Z = X V`` with ``X_train = U S V^T``.

    Inner products with any vector of that span are preserved, so an L2-penalised
    linear model fitted on ``Z`` equals the one fitted on ``X``.
    """
    k = x_train @ x_train.T
    w, u = np.linalg.eigh((k + k.T) / 2.0)
    keep = w > _EIG_TOL * max(float(w.max()), 1e-300)
    u, s = u[:, keep], np.sqrt(w[keep])
    z_train = u * s
    return z_train, [(o @ x_train.T) @ (u / s) for o in others]


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Limit BLAS/OpenMP pools to one thread when threadpoolctl is available."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - shipped with scikit-learn
        yield
        return
    with threadpool_limits(1):
        yield


def fit_logistic(
    z: np.ndarray,
    codes: np.ndarray,
    n_classes: int,
    c: float,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """L2-penalised logistic regression by L-BFGS (scikit-learn's objective).

    Minimises ``C * sum(cross-entropy) + ||W||^2 / 2`` (intercepts not penalised):
    binary with one weight vector, more classes multinomial (softmax), as
    :class:`sklearn.linear_model.LogisticRegression` does.

    Parameters
    ----------
    z : ndarray of shape (n, d)
    codes : ndarray of int, shape (n,)
        Class indices in ``[0, n_classes)``.
    n_classes : int
    c : float
        Inverse regularisation strength.
    init : ndarray, optional
        Starting parameters (warm start along a grid).

    Returns
    -------
    ndarray
        Binary: ``(d + 1,)`` = weights then intercept; else ``(d + 1, n_classes)``.
    """
    from scipy.optimize import minimize

    n, d = z.shape
    za = np.c_[z, np.ones(n)]
    if n_classes == 2:
        y = (codes == 1).astype(float)

        def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
            m = za @ w
            loss = np.logaddexp(0.0, m) - y * m
            p = 0.5 * (1.0 + np.tanh(0.5 * m))  # stable sigmoid
            grad = c * (za.T @ (p - y))
            grad[:d] += w[:d]
            return float(c * loss.sum() + 0.5 * w[:d] @ w[:d]), grad

        x0 = np.zeros(d + 1) if init is None else init
    else:
        onehot = np.eye(n_classes)[codes]

        def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
            w = flat.reshape(d + 1, n_classes)
            m = za @ w
            mx = m.max(axis=1, keepdims=True)
            lse = mx[:, 0] + np.log(np.exp(m - mx).sum(axis=1))
            loss = lse - (m * onehot).sum(axis=1)
            p = np.exp(m - lse[:, None])
            grad = c * (za.T @ (p - onehot))
            grad[:d] += w[:d]
            return float(c * loss.sum() + 0.5 * (w[:d] ** 2).sum()), grad.ravel()

        x0 = np.zeros((d + 1) * n_classes) if init is None else init.ravel()
    with _one_blas_thread():  # tiny matrices: BLAS threads only contend (15x slower)
        res = minimize(
            fun,
            x0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 5000, "gtol": 1e-8, "ftol": 1e-12},
        )
    return res.x if n_classes == 2 else res.x.reshape(d + 1, n_classes)


def logistic_proba(z: np.ndarray, params: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities of :func:`fit_logistic` parameters."""
    za = np.c_[z, np.ones(z.shape[0])]
    if n_classes == 2:
        p1 = 0.5 * (1.0 + np.tanh(0.5 * (za @ params)))
        return np.c_[1.0 - p1, p1]
    return softmax(za @ params)


def _logistic_candidates(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_eval: Sequence[np.ndarray],
    classes: tuple[str, ...],
    cs: Sequence[float],
) -> list[tuple[dict[str, Any], list[Output]]]:
    xt, others = standardise(x_train, *x_eval)
    zt, zs = row_space(xt, *others)
    codes = class_codes(y_train, classes)
    present = np.unique(codes)
    k = present.size
    local = np.searchsorted(present, codes)  # classes absent from train get probability 0
    out: list[tuple[dict[str, Any], list[Output]]] = []
    params = None
    for c in cs:
        if k >= 2:
            params = fit_logistic(zt, local, k, float(c), init=params)
        outputs = []
        for z in zs:
            proba = np.zeros((z.shape[0], len(classes)))
            if k < 2:  # one class in train: nothing to fit
                proba[:, present[0]] = 1.0
            else:
                proba[:, present] = logistic_proba(z, params, k)
            labels = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
            outputs.append(Output(labels, proba))
        out.append(({"C": float(c)}, outputs))
    return out


class LogisticModel(_FeatureModel):
    """L2 logistic regression on standardised features (classification only)."""

    def supports(self, task: TaskSpec) -> bool:
        return task.type == "classification"

    def fit_candidates(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_eval: Sequence[np.ndarray],
        classes: tuple[str, ...] | None,
    ) -> list[tuple[dict[str, Any], list[Output]]]:
        assert classes is not None
        return _logistic_candidates(
            x_train, y_train, x_eval, classes, self.settings.grids.logistic_cs
        )


class LinearProbe(RidgeModel):
    """Linear probe on pooled embeddings: ridge (regression) / logistic (classification)."""

    feature_key = "embedding"

    def fit_candidates(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_eval: Sequence[np.ndarray],
        classes: tuple[str, ...] | None,
    ) -> list[tuple[dict[str, Any], list[Output]]]:
        if self.task.type == "classification":
            assert classes is not None
            return _logistic_candidates(
                x_train, y_train, x_eval, classes, self.settings.grids.logistic_cs
            )
        return super().fit_candidates(x_train, y_train, x_eval, classes)


def describe() -> Mapping[str, str]:
    """One line per model of this module (for docs and the report)."""
    return {
        "null_model": "majority class / training mean",
        "fc_ridge": "ridge (classifier) on Fisher-z FC, dual form, alpha on val",
        "fc_kernel_ridge": "RBF kernel ridge on Fisher-z FC, gamma and alpha on val",
        "fc_logistic": "L2 logistic regression on Fisher-z FC, C on val",
        "probe_*": "ridge / logistic regression on pooled embeddings",
        "probe_bh_f_roisim": "the same on the BrainHarmonix-F ROI-similarity readout "
        "(Fisher z of ROI token-vector correlations)",
    }
