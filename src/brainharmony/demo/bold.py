"""BOLD image formation: parcels' signals in voxels, physiology, motion, noise.

A subject's BOLD *source* lives on the 3 mm MNI grid of the atlas: tissue fractions
(from :func:`brainharmony.demo.anatomy.bold_tissues`), the Schaefer-400 labels at
3 mm, a baseline EPI intensity ``S0`` and per-voxel weights of each signal. For every
acquired volume ``v``, each source voxel is first placed where the head is during that
volume (MNI -> scanner through pose ``P`` and motion ``M_v``), which tells which slice
``k`` of the scanner grid it lies in; its signal is evaluated at that slice's
acquisition time (volume onset + ``SliceTiming[k]``). The volume is then read on the
scanner grid by trilinear interpolation of that field at ``P^-1 M_v^-1 A_bold x``. So a
voxel's signal follows the time of the slice that actually acquires it, also when the
head moves across slices (up to the interpolation's sub-voxel mixing at slice borders).

Signal of a source voxel at time ``t`` (relative units, grey matter ``S0`` = 1)::

    S0 * (1 + drift(t) + g(t)) + S0amp * s_label(t) + S0wm * p_wm(t) + S0csf * p_csf(t)

with ``s_label`` the parcel's BOLD (fraction, from percent), ``p_wm``/``p_csf`` the
white-matter and CSF physiological signals (respiration and cardiac pulsation at
their true frequencies, aliased by the sampling, plus slow fluctuations; grey matter
receives ``gm_leak`` of them) and ``g`` a global signal. Then, in the scanner frame:
spin-history dips after movements, a receive-coil sensitivity profile (fixed in the
scanner, so the moving head changes intensity with position), spatially smooth
signal-proportional noise (scanner instability, white in time) and complex Gaussian
thermal noise (magnitude image, Rician) whose level follows the protocol: image SNR
grows with the voxel volume and with the steady-state signal at the repetition time
(:meth:`BoldModel.thermal_snr`).

Noise levels (defaults; see ``docs/demo-data.md``): thermal SNR 85 for a 3 mm voxel at
TR 2 s, which with the physiological terms gives a grey-matter tSNR of about 70 at
that reference protocol (real 3 T resting-state data: about 40-100 at 3 mm), and about
120-130 at the tiny preset's 5-6 mm voxels, where physiology dominates.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from brainharmony.atlas import grid_affine, schaefer400_volume
from brainharmony.demo.anatomy import BOLD_SOURCE_MM

logger = logging.getLogger(__name__)


def _default_dropout() -> tuple[tuple[float, float, float, float, float], ...]:
    # (x, y, z, sigma_mm, depth): orbitofrontal and temporal-pole susceptibility loss.
    return (
        (0.0, 38.0, -24.0, 13.0, 0.55),
        (-40.0, 12.0, -36.0, 10.0, 0.45),
        (40.0, 12.0, -36.0, 10.0, 0.45),
    )


@dataclass(frozen=True)
class BoldModel:
    """Constants of the BOLD image formation (relative to grey-matter ``S0`` = 1).

    Attributes
    ----------
    s0_gm, s0_wm, s0_csf, s0_other : float
        Baseline T2*-weighted intensity of each tissue (``other``: scalp, muscle).
    amp_sd : float
        Spatial heterogeneity (SD of a smooth multiplicative field) of the BOLD
        amplitude across a parcel's voxels.
    gm_leak : float
        Share of the white-matter and CSF physiological signals grey matter receives.
    resp_csf, card_csf, slow_csf : float
        Amplitudes (fraction of ``S0``) of respiration, cardiac and slow signals in CSF.
    resp_wm, card_wm, slow_wm : float
        The same in white matter.
    global_amp : float
        Amplitude of the global (all-tissue) slow signal.
    drift : float
        Range of the scanner drift (linear and quadratic terms, fraction over a run).
    spin_history : float
        Fractional signal loss per mm of framewise displacement (odd slices 1.5x).
    thermal_tsnr : float
        Grey-matter ``S0`` over the thermal noise SD for the reference acquisition: an
        isotropic voxel of ``thermal_ref_mm`` at repetition time ``thermal_ref_tr``.
        Other protocols scale it (:meth:`thermal_snr`): image SNR grows with the
        voxel volume and with the steady-state signal at the Ernst angle.
    thermal_ref_mm, thermal_ref_tr : float
        The reference voxel edge (mm) and repetition time (s).
    t1_gm_s : float
        Grey-matter T1 (s) for the steady-state (Ernst angle) signal.
    smooth_noise, smooth_noise_sigma : float
        SD (fraction of the signal) and spatial sigma (output voxels) of spatially
        smooth, signal-proportional noise that is white in time (scanner instability;
        phantom QA of current 3 T scanners reports 0.1-0.2 % fluctuation).
    coil_sd : float
        SD of the coefficients of the log receive-coil profile.
    gain : float
        Scanner units per unit ``S0``.
    dropout : tuple of (x, y, z, sigma, depth)
        Gaussian signal-dropout regions in MNI space.
    """

    s0_gm: float = 1.0
    s0_wm: float = 0.75
    s0_csf: float = 1.6
    s0_other: float = 0.12
    amp_sd: float = 0.25
    gm_leak: float = 0.3
    resp_csf: float = 0.008
    card_csf: float = 0.004
    slow_csf: float = 0.006
    resp_wm: float = 0.003
    card_wm: float = 0.0005
    slow_wm: float = 0.005
    global_amp: float = 0.004
    drift: float = 0.015
    spin_history: float = 0.012
    thermal_tsnr: float = 85.0
    thermal_ref_mm: float = 3.0
    thermal_ref_tr: float = 2.0
    t1_gm_s: float = 1.5
    smooth_noise: float = 0.001
    smooth_noise_sigma: float = 0.8
    coil_sd: float = 0.08
    gain: float = 800.0
    dropout: tuple[tuple[float, float, float, float, float], ...] = field(
        default_factory=_default_dropout
    )

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["dropout"] = [list(d) for d in self.dropout]
        return out

    def thermal_snr(self, voxel_mm: tuple[float, float, float] | None, tr: float | None) -> float:
        """Grey-matter thermal SNR of a protocol (``S0`` over the thermal noise SD).

        ``thermal_tsnr * (V / V_ref) * e(TR) / e(TR_ref)`` with ``V`` the voxel volume
        and ``e(TR) = sqrt((1 - E) / (1 + E))``, ``E = exp(-TR / T1)``, the
        steady-state signal at the Ernst angle (relative to full relaxation). Without
        ``voxel_mm`` and ``tr``: the reference value ``thermal_tsnr``.

        Parameters
        ----------
        voxel_mm : tuple of 3 float or None
            Voxel size (mm).
        tr : float or None
            Repetition time (s).

        Returns
        -------
        float
        """
        snr = float(self.thermal_tsnr)
        if voxel_mm is not None:
            volume = float(np.prod(np.asarray(voxel_mm, dtype=np.float64)))
            if not volume > 0:
                raise ValueError(f"voxel size must be positive, got {voxel_mm!r}")
            snr *= volume / self.thermal_ref_mm**3
        if tr is not None:
            if not tr > 0:
                raise ValueError(f"repetition time must be positive, got {tr!r}")

            def ernst(t: float) -> float:
                e = np.exp(-t / self.t1_gm_s)
                return float(np.sqrt((1.0 - e) / (1.0 + e)))

            snr *= ernst(float(tr)) / ernst(self.thermal_ref_tr)
        return snr


@dataclass
class Physiology:
    """Continuous-time physiological signals of one run (evaluated on demand).

    Attributes
    ----------
    t0_s, dt_s : float
        Fine grid of the phases and envelopes.
    resp_phase, card_phase : ndarray of shape (n,)
        Unwrapped phases (rad) of respiration and cardiac cycles.
    resp_env : ndarray of shape (n,)
        Respiratory depth (positive, mean about 1).
    slow : ndarray of shape (n, 3)
        Standardised slow signals (white matter, CSF, global).
    resp_hz, card_hz : float
        Mean frequencies.
    """

    t0_s: float
    dt_s: float
    resp_phase: np.ndarray
    card_phase: np.ndarray
    resp_env: np.ndarray
    slow: np.ndarray
    resp_hz: float
    card_hz: float

    def evaluate(self, times_s: np.ndarray) -> dict[str, np.ndarray]:
        """Respiration, cardiac and slow signals at ``times_s`` (any shape).

        Phases and envelopes are interpolated linearly, then the waveforms are
        computed from the phase, so fast cycles are represented exactly.
        """
        t = np.asarray(times_s, dtype=np.float64)
        grid = self.t0_s + self.dt_s * np.arange(self.resp_phase.size)
        rp = np.interp(t, grid, self.resp_phase)
        cp = np.interp(t, grid, self.card_phase)
        env = np.interp(t, grid, self.resp_env)
        resp = env * (np.sin(rp) + 0.25 * np.sin(2.0 * rp + 0.6))
        card = np.sin(cp) + 0.35 * np.sin(2.0 * cp + 0.4)
        slow = np.stack([np.interp(t, grid, self.slow[:, i]) for i in range(3)], axis=-1)
        return {
            "respiration": resp,
            "cardiac": card,
            "slow_wm": slow[..., 0],
            "slow_csf": slow[..., 1],
            "slow_global": slow[..., 2],
        }


def _lowpass_noise(n: int, dt: float, tau_s: float, rng: np.random.Generator) -> np.ndarray:
    """Standardised AR(1) noise with time constant ``tau_s`` (shape (n,))."""
    from scipy.signal import lfilter

    a = np.exp(-dt / tau_s)
    x = lfilter([1.0], [1.0, -a], rng.standard_normal(n) * np.sqrt(1.0 - a**2))
    x[:] = lfilter([1.0], [1.0, -a], x)  # second pass: smoother (1/f^4 tail)
    return (x - x.mean()) / (x.std() + 1e-12)


def simulate_physiology(
    duration_s: float, rng: np.random.Generator, dt_s: float = 0.05
) -> Physiology:
    """Respiration (0.2-0.33 Hz), cardiac (0.9-1.3 Hz) and slow (< 0.05 Hz) signals."""
    n = int(np.ceil((duration_s + 20.0) / dt_s)) + 1
    resp_hz = float(rng.uniform(0.2, 0.33))
    card_hz = float(rng.uniform(0.9, 1.3))
    resp_f = resp_hz * np.exp(0.08 * _lowpass_noise(n, dt_s, 15.0, rng))
    card_f = card_hz * np.exp(0.04 * _lowpass_noise(n, dt_s, 10.0, rng))
    resp_phase = 2 * np.pi * np.cumsum(resp_f) * dt_s + rng.uniform(0, 2 * np.pi)
    card_phase = 2 * np.pi * np.cumsum(card_f) * dt_s + rng.uniform(0, 2 * np.pi)
    resp_env = np.exp(0.25 * _lowpass_noise(n, dt_s, 20.0, rng))
    slow = np.stack([_lowpass_noise(n, dt_s, 12.0, rng) for _ in range(3)], axis=1)
    return Physiology(-10.0, dt_s, resp_phase, card_phase, resp_env, slow, resp_hz, card_hz)


@dataclass
class BoldSource:
    """A subject's BOLD source on the padded 3 mm MNI grid.

    Attributes
    ----------
    affine : ndarray of shape (4, 4)
        Voxel -> MNI mm of the padded grid.
    shape : tuple of 3 int
        Padded shape (one zero voxel on every side).
    static : ndarray of shape (n_voxels, 5), float32
        Per voxel ``S0, S0amp, S0wm, S0csf, S0glob`` (C order of ``shape``).
    labels : ndarray of shape (n_voxels,), int32
        0 background, 1-400 parcels, 401 other grey matter (subcortex, cerebellum).
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    static: np.ndarray
    labels: np.ndarray


N_LABELS = 402  # 0, 1..400, 401 = non-cortical grey matter


def bold_source(
    tissues: dict[str, np.ndarray], rng: np.random.Generator, model: BoldModel | None = None
) -> BoldSource:
    """Build a subject's BOLD source from its 3 mm tissue fractions.

    Parameters
    ----------
    tissues : dict of str -> ndarray
        ``gm``, ``wm``, ``csf``, ``other`` on the 3 mm atlas grid.
    rng : numpy.random.Generator
        Draws the amplitude heterogeneity.
    model : BoldModel, optional
    """
    model = model or BoldModel()
    affine3, shape3 = grid_affine(float(BOLD_SOURCE_MM))
    atlas, _ = schaefer400_volume(float(BOLD_SOURCE_MM))
    labels = np.asarray(atlas.dataobj, dtype=np.int32)
    gm, wm, csf, other = (tissues[k] for k in ("gm", "wm", "csf", "other"))
    if labels.shape != gm.shape:
        raise ValueError(f"tissue grid {gm.shape} does not match the atlas {labels.shape}")
    labels = np.where((labels == 0) & (gm > 0.35), N_LABELS - 1, labels)

    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape3], indexing="ij"), axis=-1)
    xyz = ijk * float(BOLD_SOURCE_MM) + affine3[:3, 3]
    dropout = np.ones(shape3)
    for x, y, z, sigma, depth in model.dropout:
        r2 = ((xyz - np.array([x, y, z])) ** 2).sum(-1)
        dropout *= 1.0 - depth * np.exp(-r2 / (2.0 * sigma**2))
    field_ = ndi.gaussian_filter(rng.standard_normal(shape3), 1.5)
    field_ /= field_.std() + 1e-12
    amp = np.clip(1.0 + model.amp_sd * field_, 0.2, None) * (labels > 0)

    s0 = gm * model.s0_gm + wm * model.s0_wm + csf * model.s0_csf + other * model.s0_other
    s0 *= dropout
    gm_s0 = gm * model.s0_gm * dropout
    static = np.stack(
        [
            s0,
            gm_s0 * amp,
            (wm * model.s0_wm) * dropout + model.gm_leak * gm_s0,
            (csf * model.s0_csf) * dropout + model.gm_leak * gm_s0,
            (gm * model.s0_gm + 0.5 * wm * model.s0_wm + 0.3 * csf * model.s0_csf) * dropout,
        ],
        axis=-1,
    ).astype(np.float32)
    pad = ((1, 1), (1, 1), (1, 1))
    static = np.pad(static, (*pad, (0, 0)))
    labels = np.pad(labels, pad)
    affine = affine3.copy()
    affine[:3, 3] -= affine3[:3, :3] @ np.ones(3)
    shape = tuple(int(n) for n in labels.shape)
    return BoldSource(affine, shape, static.reshape(-1, 5), labels.reshape(-1))


def render_volumes(
    source: BoldSource,
    to_source: np.ndarray,
    out_shape: tuple[int, int, int],
    slice_group: np.ndarray,
    roi_table: np.ndarray,
    scalars: np.ndarray,
) -> np.ndarray:
    """Noise-free BOLD volumes (relative units) sampled through moving heads.

    Parameters
    ----------
    source : BoldSource
    to_source : ndarray of shape (n_volumes, 4, 4)
        Output voxel index -> source voxel index, per volume.
    out_shape : tuple of 3 int
        Output grid; slices along the third axis.
    slice_group : ndarray of shape (n_slices,), int
        Index of each slice's acquisition offset among the distinct offsets.
    roi_table : ndarray of shape (n_volumes, n_offsets, N_LABELS), float32
        Fractional BOLD change of each label at each slice offset (column 0 is 0).
    scalars : ndarray of shape (n_volumes, n_offsets, 4)
        Per offset: ``1 + drift`` (multiplies ``S0``), ``p_wm`` (multiplies
        ``S0wm``), ``p_csf`` (``S0csf``) and the global signal ``g`` (``S0glob``).

    Returns
    -------
    ndarray of shape (n_volumes,) + out_shape, float32
        Time-major, so each volume is contiguous.
    """
    n_vol = to_source.shape[0]
    if roi_table.shape[:2] != scalars.shape[:2] or roi_table.shape[0] != n_vol:
        raise ValueError("roi_table, scalars and to_source disagree on volumes/offsets")
    n_slices = out_shape[2]
    if slice_group.shape != (n_slices,):
        raise ValueError(f"slice_group must have shape ({n_slices},)")
    n_lab = roi_table.shape[2]
    # Source voxels with signal, their indices and static weights.
    head = np.flatnonzero(source.static[:, 0] > 0)
    src_ijk = np.column_stack(np.unravel_index(head, source.shape)).astype(np.float32)
    static4 = np.ascontiguousarray(source.static[head][:, [0, 2, 3, 4]])
    amp = source.static[head, 1]
    lab = source.labels[head].astype(np.int64)
    field = np.zeros(source.shape, dtype=np.float32)
    flat_field = field.reshape(-1)
    # Output points whose 8 neighbours are all empty need no work (they stay 0).
    nonzero = (source.static[:, 0] > 0).reshape(source.shape)
    reach = ndi.binary_dilation(nonzero, structure=np.ones((3, 3, 3), dtype=bool)).reshape(-1)
    dims = np.asarray(source.shape)
    strides = np.array([dims[1] * dims[2], dims[2], 1])
    upper = (dims - 1 - 1e-3).astype(np.float32)
    ijk = np.stack(
        np.meshgrid(*[np.arange(n, dtype=np.float32) for n in out_shape], indexing="ij"),
        axis=-1,
    ).reshape(-1, 3)
    out = np.zeros((n_vol, *out_shape), dtype=np.float32)
    flat_out = out.reshape(n_vol, -1)
    row_start = np.arange(head.size) * scalars.shape[1]  # rows of per_offset, flat
    for v in range(n_vol):
        m = to_source[v]
        # Slice of the scanner grid each source voxel lies in during this volume.
        k_row = np.linalg.inv(m)[2].astype(np.float32)
        k_pos = src_ijk @ k_row[:3]
        k_pos += k_row[3] + 0.5
        k = k_pos.astype(np.int64)  # rounded
        np.maximum(k, 0, out=k)
        np.minimum(k, n_slices - 1, out=k)
        group = np.take(slice_group, k)
        # Signal of each source voxel at that slice's acquisition time. The full
        # product is kept (one BLAS call): its bits are those of the planted truth.
        per_offset = static4 @ scalars[v].T  # (n_head, n_offsets)
        values = np.take(per_offset.reshape(-1), row_start + group)
        group *= n_lab
        group += lab
        values += amp * np.take(roi_table[v].reshape(-1), group)
        flat_field[head] = values
        # Read the field on the scanner grid (trilinear).
        m32 = m.astype(np.float32)
        coords = ijk @ m32[:3, :3].T
        coords += m32[:3, 3]
        np.maximum(coords, 0.0, out=coords)
        np.minimum(coords, upper, out=coords)
        base = coords.astype(np.int64)
        flat = base[:, 0] * strides[0]
        flat += base[:, 1] * strides[1]
        flat += base[:, 2]
        keep = np.flatnonzero(reach[flat])
        flat_out[v, keep] = ndi.map_coordinates(
            field, coords[keep].T, order=1, mode="constant", cval=0.0, prefilter=False
        )
    return out


def label_table(parcel_percent: np.ndarray) -> np.ndarray:
    """Per-label fractional BOLD change from the parcels' percent signal change.

    Parameters
    ----------
    parcel_percent : ndarray of shape (n_volumes, n_offsets, 400)
        Parcel BOLD (percent) at each volume's distinct slice times.

    Returns
    -------
    ndarray of shape (n_volumes, n_offsets, N_LABELS), float32
        Column 0 (background) is 0; columns 1-400 the parcels; column 401 (other grey
        matter) their mean.
    """
    frac = np.asarray(parcel_percent, dtype=np.float32) / 100.0
    table = np.zeros((*frac.shape[:2], N_LABELS), dtype=np.float32)
    table[..., 1:401] = frac
    table[..., 401] = frac.mean(axis=-1)
    return table


def tissue_scalars(
    model: BoldModel,
    signals: dict[str, np.ndarray],
    relative_time: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The per-time multipliers of ``S0``, ``S0wm``, ``S0csf`` and ``S0glob``.

    Parameters
    ----------
    model : BoldModel
    signals : dict of str -> ndarray of shape (n_volumes, n_offsets)
        :meth:`Physiology.evaluate` at the acquisition times.
    relative_time : ndarray of shape (n_volumes, n_offsets)
        Acquisition times divided by the run duration (for the drift).
    rng : numpy.random.Generator
        Draws the drift coefficients.

    Returns
    -------
    scalars : ndarray of shape (n_volumes, n_offsets, 4), float32
        ``1 + drift``, ``p_wm``, ``p_csf``, ``g`` (see :func:`render_volumes`).
    drift : ndarray of shape (n_volumes, n_offsets)
        Scanner drift (fraction).
    """
    resp, card = signals["respiration"], signals["cardiac"]
    p_wm = model.resp_wm * resp + model.card_wm * card + model.slow_wm * signals["slow_wm"]
    p_csf = model.resp_csf * resp + model.card_csf * card + model.slow_csf * signals["slow_csf"]
    g = model.global_amp * signals["slow_global"]
    coef = rng.uniform(-model.drift, model.drift, 2)
    drift = coef[0] * relative_time + coef[1] * relative_time**2
    scalars = np.stack([1.0 + drift, p_wm, p_csf, g], axis=-1).astype(np.float32)
    return scalars, drift


def spin_history(fd: np.ndarray, n_slices: int, strength: float) -> np.ndarray:
    """Multiplicative signal dips after movements.

    ``1 - strength * (fd[v] * (1 + 0.5 * odd[k]) + 0.5 * fd[v - 1])``: the volume that
    moved and, by half, the next one; odd slices (excited later in interleaved
    orders) 1.5x.

    Returns
    -------
    ndarray of shape (n_volumes, n_slices), float32
    """
    odd = (np.arange(n_slices) % 2).astype(np.float64)
    previous = np.r_[0.0, fd[:-1]]
    hist = fd[:, None] * (1.0 + 0.5 * odd[None, :]) + 0.5 * previous[:, None]
    return (1.0 - strength * hist).astype(np.float32)


def coil_profile(
    affine: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator, sd: float
) -> np.ndarray:
    """Smooth receive-coil sensitivity in the scanner frame (mean 1).

    Returns
    -------
    ndarray of shape ``shape``, float32
    """
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = (ijk @ affine[:3, :3].T + affine[:3, 3]) / 100.0
    terms = [world[..., i] for i in range(3)]
    terms += [terms[i] * terms[j] for i in range(3) for j in range(i, 3)]
    log_c = sum(float(sd * rng.standard_normal()) * t for t in terms)
    return np.exp(log_c - np.mean(log_c)).astype(np.float32)


def add_noise(
    clean: np.ndarray,
    rng: np.random.Generator,
    model: BoldModel | None = None,
    *,
    voxel_mm: tuple[float, float, float] | None = None,
    tr: float | None = None,
) -> np.ndarray:
    """Spatially smooth noise plus complex thermal noise; magnitude, in place-safe.

    Parameters
    ----------
    clean : ndarray of shape (T, X, Y, Z), float32
        Relative intensities (grey matter about 1), time-major.
    rng : numpy.random.Generator
    model : BoldModel, optional
    voxel_mm, tr : optional
        The protocol's voxel size (mm) and repetition time (s), which set the thermal
        noise level (:meth:`BoldModel.thermal_snr`); omitted: the reference level.

    Returns
    -------
    ndarray of shape (X, Y, Z, T), int16
        ``round(gain * |signal + noise|)``.
    """
    model = model or BoldModel()
    sigma = 1.0 / model.thermal_snr(voxel_mm, tr)
    out = np.empty(clean.shape, dtype=np.int16)  # time-major while filling
    shape = clean.shape[1:]
    s = model.smooth_noise_sigma
    impulse = np.zeros((15, 15, 15))
    impulse[7, 7, 7] = 1.0
    kernel = ndi.gaussian_filter(impulse, s, truncate=2.5)
    norm = model.smooth_noise / np.sqrt((kernel**2).sum())
    for v in range(clean.shape[0]):
        smooth = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), s, truncate=2.5)
        smooth *= norm
        real = clean[v] * (1.0 + smooth)
        real += sigma * rng.standard_normal(shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(shape, dtype=np.float32)
        mag = np.sqrt(real * real + imag * imag) * model.gain
        out[v] = np.clip(np.round(mag), 0, 32767).astype(np.int16)
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))
