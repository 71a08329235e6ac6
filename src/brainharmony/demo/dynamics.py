"""Latent neural dynamics on the Schaefer-400 parcels and their BOLD response.

Model
-----
The latent neural activity ``x(t)`` of the 400 parcels follows a stable, symmetric
multivariate Ornstein-Uhlenbeck drift

    dx = -(I / tau - W) x dt + sigma M dB,

driven by spatially correlated noise (``M``: Gaussian kernel of centroid distance,
:func:`drive_mixing`), whose coupling matrix ``W`` (400 x 400, symmetric, zero
diagonal, rates in 1/s) mixes

* a within-network graph of the 7 Schaefer networks (distance-weighted, plus a
  weight for long-range pairs, farther apart than ``long_range_mm``),
* signed between-network block couplings (e.g. Default vs DorsAttn negative),
* weak local coupling that decays with the distance between parcel centroids,
* individual variability (random per-network-block gains, small edge noise),
* the planted phenotype effects of :class:`EffectSizes`,

rescaled per subject to a fixed spectral radius (stable). Because the drift
``Q = I / tau - W`` is symmetric positive definite, the process is simulated in the
eigenbasis of ``Q`` as independent AR(1) recursions with the exact decay
``exp(-lambda dt)`` (a VAR(1) on the 0.1 s grid; exact OU when ``M = I``), which costs a
subject a fraction of a second. The BOLD signal is the convolution of ``x`` with the
canonical double-gamma HRF on the fine grid, scaled to percent signal change, and is
read at any acquisition time (volume onset plus the slice's offset) by linear
interpolation of the fine grid (:func:`sample_at`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import signal as sps
from scipy import stats

from brainharmony.atlas import NETWORKS, schaefer400_centroids
from brainharmony.demo.phenotypes import PopulationModel, sample_phenotypes

logger = logging.getLogger(__name__)

N_ROIS = 400


@dataclass(frozen=True)
class EffectSizes:
    """Planted phenotype effects on the coupling matrix ``W``.

    Attributes
    ----------
    age_long_range : float
        Long-range within-network couplings (pairs of one network whose centroids are
        more than ``long_range_mm`` apart) are multiplied by
        ``exp(-age_long_range * z_age)``: ageing weakens them.
    long_range_mm : float
        Distance that separates short- from long-range pairs.
    dx_default_within : float
        Patients' within-Default couplings are multiplied by ``1 + dx_default_within``.
    dx_limbic_within : float
        Patients' within-Limbic couplings are multiplied by ``1 + dx_limbic_within``.
    dx_salience_default : float
        Added to the SalVentAttn-Default block gain for patients (less anti-coupled).
    fi_control : float
        Within-Cont couplings and the Cont-DorsAttn block gain are multiplied by
        ``exp(fi_control * z_fi)``.
    sex : float
        No effect is planted for sex (a built-in negative control); kept for clarity.
    """

    age_long_range: float = 0.9
    long_range_mm: float = 40.0
    dx_default_within: float = -0.4
    dx_limbic_within: float = 0.4
    dx_salience_default: float = 0.5
    fi_control: float = 0.3
    sex: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def describe(self) -> dict[str, object]:
        """Human-readable description of which networks and edges each effect acts on."""
        return {
            "age": {
                "acts_on": "within-network edges with centroid distance > long_range_mm",
                "networks": list(NETWORKS),
                "rule": "W_ij *= exp(-age_long_range * z_age)",
                "direction": "older -> weaker long-range within-network coupling",
            },
            "diagnosis": {
                "acts_on": [
                    "within Default",
                    "within Limbic",
                    "between SalVentAttn and Default",
                ],
                "rule": (
                    "PT: Default within *= 1 + dx_default_within; Limbic within *= 1 + "
                    "dx_limbic_within; SalVentAttn-Default block gain += dx_salience_default"
                ),
            },
            "fluid_intelligence": {
                "acts_on": ["within Cont", "between Cont and DorsAttn"],
                "rule": "gain *= exp(fi_control * z_fi)",
                "note": "fluid intelligence is correlated with age (fi_age_corr)",
            },
            "sex": {"acts_on": [], "rule": "no planted effect (negative control)"},
        }


def _default_between() -> tuple[tuple[str, str, float], ...]:
    return (
        ("Vis", "SomMot", 0.25),
        ("Vis", "DorsAttn", 0.3),
        ("SomMot", "SalVentAttn", 0.3),
        ("SomMot", "DorsAttn", 0.15),
        ("DorsAttn", "SalVentAttn", 0.25),
        ("DorsAttn", "Cont", 0.3),
        ("SalVentAttn", "Cont", 0.25),
        ("Cont", "Default", 0.25),
        ("Limbic", "Default", 0.3),
        ("Default", "DorsAttn", -0.45),
        ("Default", "SalVentAttn", -0.35),
        ("Default", "Vis", -0.15),
    )


@dataclass(frozen=True)
class DynamicsParams:
    """Parameters of the latent dynamics and of the neural-to-BOLD step.

    Attributes
    ----------
    tau_s : float
        Intrinsic decay time of each parcel (s).
    sigma : float
        Driving noise amplitude (arbitrary units; the BOLD is rescaled anyway).
    dt_s : float
        Fine simulation step (s) of the stored neural series.
    within_length_mm : float
        Within-network pairs are weighted ``exp(-d / within_length_mm)`` ...
    within_long_weight : float
        ... plus this weight for long-range pairs (``d > long_range_mm``, the pairs
        the age effect acts on). The within-network graph is normalised by the
        square root of the degrees of the population-average graph.
    within_gain : float
        Gain of the normalised within-network graph (1/s).
    between_scale : float
        Scale of the between-network block gains (1/s), divided by
        ``sqrt(n_k * n_l)`` so a gain is the eigenvalue of a uniform block.
    between : tuple of (str, str, float)
        Signed between-network gains (relative), symmetric.
    local_gain, local_length_mm : float
        Coupling ``local_gain * exp(-d / local_length_mm)`` between all parcels.
    block_sd : float
        SD of the log-normal individual gain of each of the 28 network blocks.
    edge_sd : float
        SD of independent symmetric edge noise (1/s).
    spectral_radius : float
        ``tau * W`` is scaled so its largest eigenvalue equals this (< 1: stable).
        The scaling is per subject, so the phenotype effects change the *pattern* of
        coupling, not its overall strength.
    drive_length_mm : float
        The driving noise is spatially correlated: the innovations are white noise
        mixed by a Gaussian kernel ``exp(-(d / drive_length_mm)**2)`` of centroid
        distance (rows normalised to unit variance).
    hrf_length_s : float
        Length of the HRF kernel, also the burn-in before t = 0.
    psc : float
        Mean temporal SD of the parcels' BOLD series, in percent signal change.
    """

    tau_s: float = 1.0
    sigma: float = 1.0
    dt_s: float = 0.1
    within_length_mm: float = 20.0
    within_long_weight: float = 0.4
    within_gain: float = 0.85
    between_scale: float = 0.15
    between: tuple[tuple[str, str, float], ...] = field(default_factory=_default_between)
    local_gain: float = 0.03
    local_length_mm: float = 8.0
    block_sd: float = 0.06
    edge_sd: float = 0.002
    spectral_radius: float = 0.95
    drive_length_mm: float = 10.0
    hrf_length_s: float = 32.0
    psc: float = 1.0

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["between"] = [list(b) for b in self.between]
        return out


@dataclass(frozen=True)
class RoiGeometry:
    """Network membership and centroid distances of the 400 parcels."""

    network: np.ndarray  # (400,) int, index into NETWORKS
    hemisphere: np.ndarray  # (400,) str
    centroids: np.ndarray  # (400, 3) MNI mm
    distance: np.ndarray  # (400, 400) mm


@functools.lru_cache(maxsize=1)
def roi_geometry() -> RoiGeometry:
    """Network index, hemisphere, surface centroid and pairwise distances of parcels."""

    table = schaefer400_centroids()
    network = table["network"].map({n: i for i, n in enumerate(NETWORKS)}).to_numpy()
    cen = table[["x", "y", "z"]].to_numpy(dtype=np.float64)
    dist = np.sqrt(((cen[:, None, :] - cen[None, :, :]) ** 2).sum(-1))
    for arr in (network, cen, dist):
        arr.setflags(write=False)
    return RoiGeometry(network, table["hemisphere"].to_numpy(), cen, dist)


def coupling_matrix(
    z_age: float,
    z_fi: float,
    is_patient: int,
    rng: np.random.Generator,
    params: DynamicsParams | None = None,
    effects: EffectSizes | None = None,
) -> np.ndarray:
    """Subject-specific coupling matrix ``W``.

    Parameters
    ----------
    z_age, z_fi : float
        Standardised age and fluid intelligence (see
        :class:`~brainharmony.demo.phenotypes.PopulationModel`).
    is_patient : int
        1 for a patient (``PT``), 0 for a control.
    rng : numpy.random.Generator
        Draws the individual variability.
    params, effects : optional
        Model parameters and planted effect sizes.

    Returns
    -------
    ndarray of shape (400, 400)
        Symmetric, zero diagonal, rates in 1/s, with
        ``tau * max eig(W) == params.spectral_radius``.
    """
    params = params or DynamicsParams()
    effects = effects or EffectSizes()
    if is_patient not in (0, 1):
        raise ValueError(f"is_patient must be 0 or 1, got {is_patient!r}")
    geo = roi_geometry()
    net = geo.network
    d = geo.distance
    n_net = len(NETWORKS)
    sizes = np.bincount(net, minlength=n_net).astype(float)
    idx = {name: i for i, name in enumerate(NETWORKS)}
    same = (net[:, None] == net[None, :]) & ~np.eye(N_ROIS, dtype=bool)
    long_range = d > effects.long_range_mm

    # Within-network graph; normalised by the population-average degrees.
    short_w = np.exp(-d / params.within_length_mm)
    reference = np.where(same, short_w + params.within_long_weight * long_range, 0.0)
    norm = 1.0 / np.sqrt(np.outer(reference.sum(1), reference.sum(1)))
    age_factor = float(np.exp(-effects.age_long_range * z_age))
    graph = np.where(same, short_w + params.within_long_weight * age_factor * long_range, 0.0)
    gain = np.ones(n_net)
    gain[idx["Default"]] *= 1.0 + effects.dx_default_within * is_patient
    gain[idx["Limbic"]] *= 1.0 + effects.dx_limbic_within * is_patient
    fi_gain = float(np.exp(effects.fi_control * z_fi))
    gain[idx["Cont"]] *= fi_gain

    # Between-network block gains.
    block = np.zeros((n_net, n_net))
    for a, b, value in params.between:
        block[idx[a], idx[b]] = block[idx[b], idx[a]] = value
    sal, dmn = idx["SalVentAttn"], idx["Default"]
    block[sal, dmn] = block[dmn, sal] = block[sal, dmn] + effects.dx_salience_default * is_patient
    con, dat = idx["Cont"], idx["DorsAttn"]
    block[con, dat] = block[dat, con] = block[con, dat] * fi_gain
    block[np.diag_indices(n_net)] = params.within_gain * gain

    # Individual variability: log-normal gain per network block (symmetric).
    noise = rng.standard_normal((n_net, n_net))
    indiv = np.exp(params.block_sd * (noise + noise.T) / np.sqrt(2.0))
    block_gain = (block * indiv)[net][:, net]

    size_norm = 1.0 / np.sqrt(np.outer(sizes[net], sizes[net]))
    w = np.where(same, block_gain * graph * norm, block_gain * size_norm)
    w = w + params.local_gain * np.exp(-d / params.local_length_mm)
    edge = rng.standard_normal((N_ROIS, N_ROIS)) * params.edge_sd
    w = w + (edge + edge.T) / np.sqrt(2.0)
    np.fill_diagonal(w, 0.0)
    with single_thread_blas():
        top = float(np.linalg.eigvalsh(w)[-1]) * params.tau_s
    return w * (params.spectral_radius / top)


@functools.lru_cache(maxsize=4)
def drive_mixing(length_mm: float) -> np.ndarray:
    """Spatial mixing of the driving noise: Gaussian kernel of centroid distance.

    Returns
    -------
    ndarray of shape (400, 400)
        Symmetric; each row has unit Euclidean norm (unit innovation variance).
    """
    d = roi_geometry().distance
    k = np.exp(-((d / length_mm) ** 2))
    k /= np.sqrt((k**2).sum(1))[:, None]
    k.setflags(write=False)
    return k


def canonical_hrf(dt_s: float, length_s: float = 32.0) -> np.ndarray:
    """SPM-style canonical double-gamma HRF sampled every ``dt_s`` seconds.

    Peak gamma (shape 6, scale 1 s) minus one sixth of an undershoot gamma (shape 16,
    scale 1 s), normalised to unit area (``sum(h) * dt_s == 1``).

    Returns
    -------
    ndarray of shape (round(length_s / dt_s),)
    """
    if dt_s <= 0 or length_s <= dt_s:
        raise ValueError(f"need 0 < dt_s < length_s, got dt_s={dt_s}, length_s={length_s}")
    t = np.arange(round(length_s / dt_s)) * dt_s
    h = stats.gamma.pdf(t, 6.0) - stats.gamma.pdf(t, 16.0) / 6.0
    return h / (h.sum() * dt_s)


def simulate_neural(
    w: np.ndarray,
    n_steps: int,
    dt_s: float,
    rng: np.random.Generator,
    tau_s: float = 1.0,
    sigma: float = 1.0,
    mixing: np.ndarray | None = None,
) -> np.ndarray:
    """Simulate the latent VAR(1) process on a fine grid, started stationary.

    The process is ``x[n + 1] = A x[n] + e[n]`` with ``A = expm(-Q dt)``, the exact
    propagator of the OU drift ``Q = I / tau - w``. In the eigenbasis of ``Q``
    (``Q = V diag(lam) V.T``) each coordinate ``y_i`` decays by ``a_i =
    exp(-lam_i dt)`` and receives the innovation ``s_i (V.T M xi)_i`` with
    ``s_i = sigma sqrt((1 - a_i**2) / (2 lam_i))``, ``xi`` white and ``M`` the
    spatial ``mixing`` (identity: the exact OU discretisation). The first sample is
    drawn from the stationary distribution (discrete Lyapunov equation, solved in
    closed form in the eigenbasis).

    Parameters
    ----------
    w : ndarray of shape (n_rois, n_rois)
        Symmetric coupling, ``tau_s * max eig(w) < 1``.
    n_steps : int
        Number of samples.
    dt_s : float
        Sampling step (s).
    rng : numpy.random.Generator
    tau_s, sigma : float
        Intrinsic decay time and noise amplitude.
    mixing : ndarray of shape (n_rois, n_rois), optional
        Spatial mixing of the innovations (default identity).

    Returns
    -------
    ndarray of shape (n_steps, n_rois), float64
    """
    if w.ndim != 2 or w.shape[0] != w.shape[1] or not np.allclose(w, w.T):
        raise ValueError(f"w must be a symmetric square matrix, got shape {w.shape}")
    n = w.shape[0]
    q = np.eye(n) / tau_s - w
    with single_thread_blas():
        lam, vec = np.linalg.eigh(q)
    if lam[0] <= 0:
        raise ValueError(f"coupling is unstable: smallest decay rate {lam[0]:.4g} <= 0")
    a = np.exp(-lam * dt_s)
    s = sigma * np.sqrt((1.0 - a**2) / (2.0 * lam))
    proj = (vec.T if mixing is None else vec.T @ mixing) * s[:, None]  # (modes, rois)
    # Stationary covariance of y: P = diag(a) P diag(a) + proj proj^T.
    with single_thread_blas():
        c = proj @ proj.T
        p = c / (1.0 - np.outer(a, a))
        chol = np.linalg.cholesky(p + 1e-12 * np.trace(p) / n * np.eye(n))
        y0 = chol @ rng.standard_normal(n)
        drive = rng.standard_normal((n_steps, n)) @ proj.T
        y = np.empty((n_steps, n))
        for i in range(n):
            y[:, i] = sps.lfilter([1.0], [1.0, -a[i]], drive[:, i], zi=[a[i] * y0[i]])[0]
        return y @ vec.T


def hrf_convolve(neural: np.ndarray, dt_s: float, length_s: float = 32.0) -> np.ndarray:
    """Causal convolution of each column with :func:`canonical_hrf`.

    Parameters
    ----------
    neural : ndarray of shape (n_steps, n_rois)
        Fine-grid series; ``bold[n] = sum_k h[k] * neural[n - k] * dt_s``.
    dt_s : float
    length_s : float

    Returns
    -------
    ndarray of shape (n_steps, n_rois)
        The first ``length_s / dt_s`` samples lack full history (burn-in).
    """
    h = canonical_hrf(dt_s, length_s) * dt_s
    return sps.fftconvolve(neural, h[:, None], mode="full", axes=0)[: neural.shape[0]]


def sample_at(fine: np.ndarray, t0_s: float, dt_s: float, times_s: np.ndarray) -> np.ndarray:
    """Linear interpolation of a fine-grid series at arbitrary times.

    Parameters
    ----------
    fine : ndarray of shape (n_steps, n_rois)
        Series with sample ``n`` at time ``t0_s + n * dt_s``.
    times_s : ndarray of any shape
        Query times (s), inside the fine grid.

    Returns
    -------
    ndarray of shape times_s.shape + (n_rois,)
    """
    times = np.asarray(times_s, dtype=np.float64)
    pos = (times - t0_s) / dt_s
    if pos.size and (pos.min() < 0 or pos.max() > fine.shape[0] - 1):
        raise ValueError(
            f"times {times.min():.3f}..{times.max():.3f} s fall outside the fine grid "
            f"{t0_s:.3f}..{t0_s + (fine.shape[0] - 1) * dt_s:.3f} s"
        )
    i0 = np.minimum(np.floor(pos).astype(np.int64), fine.shape[0] - 2)
    frac = (pos - i0)[..., None]
    return fine[i0] * (1.0 - frac) + fine[i0 + 1] * frac


@dataclass
class RunSeries:
    """Simulated series of one run.

    Attributes
    ----------
    t0_s, dt_s : float
        Time of the first fine sample (negative: burn-in) and the fine step.
    neural : ndarray of shape (n_fine, 400), float32
        Latent neural series on the fine grid.
    bold_fine : ndarray of shape (n_fine, 400), float64
        HRF-convolved series in percent signal change (valid for t >= 0).
    scale : float
        ``bold_fine = scale * hrf_convolve(neural)``.
    """

    t0_s: float
    dt_s: float
    neural: np.ndarray
    bold_fine: np.ndarray
    scale: float

    def at(self, times_s: np.ndarray) -> np.ndarray:
        """BOLD (percent) at ``times_s`` (any shape) -> shape + (400,)."""
        return sample_at(self.bold_fine, self.t0_s, self.dt_s, times_s)


def simulate_run(
    w: np.ndarray,
    duration_s: float,
    rng: np.random.Generator,
    params: DynamicsParams | None = None,
) -> RunSeries:
    """Neural and BOLD series of one run covering ``[0, duration_s]``.

    The fine grid starts ``params.hrf_length_s`` before 0 so the BOLD at t >= 0 has
    its full HRF history; the BOLD is scaled so that the parcels' mean temporal SD
    over ``[0, duration_s]`` equals ``params.psc`` percent.
    """
    params = params or DynamicsParams()
    dt = params.dt_s
    n_burn = round(params.hrf_length_s / dt)
    n_steps = n_burn + int(np.ceil(duration_s / dt)) + 2
    neural = simulate_neural(
        w, n_steps, dt, rng, params.tau_s, params.sigma, drive_mixing(params.drive_length_mm)
    ).astype(np.float32)
    conv = hrf_convolve(neural.astype(np.float64), dt, params.hrf_length_s)
    scale = params.psc / float(conv[n_burn:].std(axis=0).mean())
    return RunSeries(-n_burn * dt, dt, neural, conv * scale, scale)


def simulate_cohort(
    n_subjects: int,
    tr: float,
    n_volumes: int,
    seed: int,
    *,
    params: DynamicsParams | None = None,
    effects: EffectSizes | None = None,
    population: PopulationModel | None = None,
) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Phenotypes and truth ROI BOLD series for a cohort, without writing images.

    Parameters
    ----------
    n_subjects : int
    tr : float
        Repetition time (s); series are read at volume onsets ``k * tr``.
    n_volumes : int
    seed : int
    params, effects, population : optional
        Model parameters, planted effect sizes, population constants.

    Returns
    -------
    phenotypes : pandas.DataFrame
        See :func:`~brainharmony.demo.phenotypes.sample_phenotypes`.
    series : list of ndarray of shape (n_volumes, 400)
        HRF-convolved parcel series (percent signal change), one per subject.
    """
    if tr <= 0 or n_volumes < 2:
        raise ValueError(f"need tr > 0 and n_volumes >= 2, got tr={tr}, n_volumes={n_volumes}")
    root = np.random.SeedSequence(seed)
    pheno_ss, *subject_ss = root.spawn(n_subjects + 1)
    phenotypes = sample_phenotypes(n_subjects, np.random.default_rng(pheno_ss), population)
    times = np.arange(n_volumes) * tr
    series = []
    with single_thread_blas():
        for row, ss in zip(phenotypes.itertuples(), subject_ss, strict=True):
            rng = np.random.default_rng(ss)
            w = coupling_matrix(row.z_age, row.z_fi, int(row.is_patient), rng, params, effects)
            run = simulate_run(w, n_volumes * tr, rng, params)
            series.append(run.at(times).astype(np.float32))
    return phenotypes, series


class _LimitDepth(threading.local):
    depth = 0


_BLAS_LIMIT = _LimitDepth()


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """Limit BLAS/OpenMP pools to one thread (the matrices here are small; extra
    threads only add contention on a busy machine). No-op without threadpoolctl.

    Nested uses cost nothing: the limit of the outermost one already holds (each
    ``threadpool_limits`` call inspects every loaded library, about 10 ms).
    """
    if _BLAS_LIMIT.depth:
        _BLAS_LIMIT.depth += 1
        try:
            yield
        finally:
            _BLAS_LIMIT.depth -= 1
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        yield
        return
    with threadpool_limits(1):
        _BLAS_LIMIT.depth = 1
        try:
            yield
        finally:
            _BLAS_LIMIT.depth = 0


def fisher_fc(series: Sequence[np.ndarray]) -> np.ndarray:
    """Fisher-z of the upper-triangle correlations of each series.

    Parameters
    ----------
    series : sequence of ndarray of shape (n_volumes, n_rois)

    Returns
    -------
    ndarray of shape (n_series, n_rois * (n_rois - 1) / 2)
    """
    out = []
    for x in series:
        c = np.corrcoef(np.asarray(x, dtype=np.float64), rowvar=False)
        iu = np.triu_indices_from(c, k=1)
        out.append(np.arctanh(np.clip(c[iu], -0.999999, 0.999999)))
    return np.asarray(out)
