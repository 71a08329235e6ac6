"""TAPE: temporal adaptive patch embedding of ROI time series (BrainHarmonix-F).

A time patch always spans the same duration, the canonical window ``tau`` (35.28 s by
default, 48 frames at the UK Biobank TR of 0.735 s), whatever the TR of the series: a
series at repetition time ``tr`` is cut into patches of ``k = round(tau / tr)`` frames.
One learned *base* kernel of ``k_base`` taps (a linear map from ``k_base`` frames to the
token width ``D``, shared by every ROI) is turned into a ``k``-tap kernel by the
pseudo-inverse (PI) resize of FlexiViT (Beyer et al. 2023):

* Let ``B`` (``k x k_base``) be the linear map that resamples a patch recorded with
  ``k_base`` frames to the ``k`` frames the series at ``tr`` actually has (``x_k ~ B x``).
* The resized kernel ``w_k`` is the least-squares solution of ``B^T w_k = w``, that is
  ``w_k = pinv(B^T) w`` (minimum norm when ``k > k_base``). For a white input
  ``x ~ N(0, I)`` it minimises ``E[(<w, x> - <w_k, B x>)^2] = ||w - B^T w_k||^2``, so the
  token of a series does not depend (much) on the TR at which it was sampled.

The matrix ``pinv(B)`` (``k_base x k``) depends only on ``k`` (and on ``tr`` when
``grid="tr"``), not on the learned weights, so it is computed once in float64 and cached
per key (and per device and dtype); the kernel ``W pinv(B)`` itself is one small matmul.
The official code recomputed the pseudo-inverse at every forward call.

Resampling model ``B``
----------------------
``interp="lanczos3", grid="tr"`` (default)
    Frame ``m`` of a patch at TR ``tr`` lies at time ``m * tr``, i.e. at position
    ``m * tr / tr_base`` in base frames (``tr_base = tau / k_base``); ``B[m, n]`` is a
    Lanczos-3 kernel centred there, widened by ``tr / tr_base`` when the series is coarser
    (an anti-alias low-pass at the new Nyquist frequency), rows normalised to sum to 1.
    This is what the multi-TR stage does: its frame ``m`` is the value of the signal at
    ``m * tr``. ``grid="k"`` uses position ``m * k_base / k`` instead (the cache key is then
    ``k`` alone), which is exact only when ``k * tr == tau``.
``interp="bicubic"`` (the official recipe; requires ``grid="k"``)
    ``torch.nn.functional.interpolate(..., mode="bicubic", antialias=True)`` of the
    one-hot basis, which places output sample ``m`` at the centre of its span
    (``(m + 0.5) * k_base / k - 0.5``), half a coarse frame away from where the frame was
    sampled.

Measured on band-limited (0.01-0.1 Hz) signals and random Gaussian kernels (relative error
of the first patch's tokens at the new TR against those at 0.735 s; table and script in
``docs/models.md``): 0.07 / 0.11 / 0.13 (lanczos3, tr) against 0.14 / 0.27 / 0.40 (the
official bicubic) at TR 1.47 / 2.205 / 2.94 s, and 0.05 against 0.18 (lanczos3, k) and 0.13
(bicubic) at TR 2.0 s, where ``k * tr = 36 s != tau``; naive subsampling of the kernel gives
errors of 1 and more.

Padding and validity
--------------------
Every series is laid out on a fixed grid of ``n_patches`` time patches. A patch is a real
token when at least ``min_valid_fraction`` of its ``k`` frames are real (``mask``), and
its ROI has data (``roi_mask``); frames that are not real are replaced by zeros *before*
the projection (so their stored values never matter), and tokens that are not real are
returned as zeros with ``valid = False``. Real frames past ``n_patches * k`` are an error
(``overflow="error"``) or are dropped (``overflow="crop"``: the model sees the first
``n_patches * tau`` seconds of each window).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_TAU",
    "TAPE",
    "naive_resize_kernel",
    "patch_frames",
    "pi_resize_kernel",
    "pi_resize_kernel_lstsq",
    "pi_resize_matrix",
    "resample_matrix",
]

#: Canonical patch duration in seconds: 48 frames at TR 0.735 s (UK Biobank).
DEFAULT_TAU = 35.28

Interp = Literal["lanczos3", "bicubic"]
Grid = Literal["tr", "k"]
Overflow = Literal["error", "crop"]


def patch_frames(tr: float, tau: float = DEFAULT_TAU) -> int:
    """Frames per time patch, ``k = round(tau / tr)`` (at least 1).

    Parameters
    ----------
    tr : float
        Repetition time in seconds (> 0).
    tau : float
        Canonical patch duration in seconds (> 0).

    Raises
    ------
    ValueError
        For a non-finite or non-positive ``tr`` or ``tau``.
    """
    if not (math.isfinite(tr) and tr > 0):
        raise ValueError(f"TAPE: the repetition time must be a positive number; got {tr!r}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"TAPE: tau must be a positive number of seconds; got {tau!r}")
    return max(1, round(tau / tr))


def _lanczos(d: Tensor, a: int = 3) -> Tensor:
    out = torch.special.sinc(d) * torch.special.sinc(d / a)
    return torch.where(d.abs() < a, out, torch.zeros_like(out))


def resample_matrix(
    k_base: int,
    k: int,
    *,
    interp: Interp = "lanczos3",
    step: float | None = None,
) -> Tensor:
    """The resampling model ``B`` (``k x k_base``, float64): ``x_k ~ B @ x_base``.

    Parameters
    ----------
    k_base : int
        Frames of the base patch.
    k : int
        Frames of the patch at the series' TR.
    interp : {"lanczos3", "bicubic"}
        Lanczos-3 point sampling (see the module docstring) or the official bicubic,
        anti-aliased, centre-aligned ``F.interpolate``.
    step : float, optional
        Distance between consecutive frames of the patch in base frames, ``tr / tr_base``
        (lanczos3 only). Default ``k_base / k``.

    Returns
    -------
    Tensor of shape (k, k_base), float64
    """
    if k_base < 1 or k < 1:
        raise ValueError(f"resample_matrix: k_base and k must be >= 1; got {k_base}, {k}")
    if interp == "bicubic":
        if step is not None:
            raise ValueError("resample_matrix: interp='bicubic' has no step (grid must be 'k')")
        basis = torch.eye(k_base, dtype=torch.float64).reshape(k_base, 1, 1, k_base)
        bt = F.interpolate(
            basis, size=(1, k), mode="bicubic", antialias=True, align_corners=False
        ).reshape(k_base, k)
        return bt.T.contiguous()
    if interp != "lanczos3":
        raise ValueError(f"resample_matrix: interp must be 'lanczos3' or 'bicubic'; got {interp!r}")
    s = k_base / k if step is None else float(step)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"resample_matrix: step must be positive; got {step!r}")
    pos = torch.arange(k, dtype=torch.float64) * s
    taps = torch.arange(k_base, dtype=torch.float64)
    cutoff = min(1.0, 1.0 / s)  # anti-alias: widen the kernel when the patch is coarser
    b = cutoff * _lanczos(cutoff * (pos[:, None] - taps[None, :]))
    sums = b.sum(dim=1, keepdim=True)
    if bool((sums.abs() < 1e-12).any()):
        raise ValueError(
            f"resample_matrix: frames of a {k}-frame patch fall outside the {k_base}-tap "
            f"base kernel (step {s:.4g})"
        )
    return b / sums


def pi_resize_matrix(
    k_base: int, k: int, *, interp: Interp = "lanczos3", step: float | None = None
) -> Tensor:
    """``pinv(B)`` (``k_base x k``, float64): the resized kernel is ``W @ pinv(B)``.

    ``pinv(B^T) = pinv(B)^T``, so for a kernel ``W`` of shape (D, k_base) the rows of
    ``W @ pinv(B)`` are the least-squares solutions of ``B^T w_k = w``.
    """
    return torch.linalg.pinv(resample_matrix(k_base, k, interp=interp, step=step))


def pi_resize_kernel(
    weight: Tensor, k: int, *, interp: Interp = "lanczos3", step: float | None = None
) -> Tensor:
    """PI-resize a kernel of shape (D, k_base) to (D, k) (uncached; see :class:`TAPE`)."""
    mat = pi_resize_matrix(weight.shape[-1], k, interp=interp, step=step)
    return weight @ mat.to(device=weight.device, dtype=weight.dtype)


def pi_resize_kernel_lstsq(
    weight: Tensor, k: int, *, interp: Interp = "lanczos3", step: float | None = None
) -> Tensor:
    """The slow twin of :func:`pi_resize_kernel`: ``argmin_v ||B^T v - w||`` per row.

    Solved by ``torch.linalg.lstsq`` (``gelsd``, minimum norm) in float64 on the CPU; used
    by the tests to check the cached pseudo-inverse.
    """
    b = resample_matrix(weight.shape[-1], k, interp=interp, step=step)
    rhs = weight.detach().to("cpu", torch.float64).T  # (k_base, D)
    sol = torch.linalg.lstsq(b.T, rhs, driver="gelsd").solution  # (k, D)
    return sol.T.to(device=weight.device, dtype=weight.dtype)


def naive_resize_kernel(weight: Tensor, k: int) -> Tensor:
    """Baseline only: keep the nearest base taps and scale by ``k_base / k``.

    This is "subsample the kernel like the series": it keeps the kernel's sum but not
    its response to a band-limited input (the tests compare it with the PI resize).
    """
    k_base = weight.shape[-1]
    idx = torch.round(torch.arange(k, dtype=torch.float64) * k_base / k).long()
    idx = idx.clamp(max=k_base - 1).to(weight.device)
    return weight[..., idx] * (k_base / k)


class TAPE(nn.Module):
    """Temporal adaptive patch embedding: ROI series (B, T, R) -> tokens (B, R, P, D).

    Parameters
    ----------
    dim : int
        Token width ``D``.
    k_base : int
        Taps of the base kernel (48: the UK Biobank TR of 0.735 s with ``tau = 35.28``).
    tau : float
        Patch duration in seconds.
    n_patches : int
        Time patches of the token grid ``P`` (18 in the paper: at most 635 s).
    min_valid_fraction : float
        A patch is a real token when at least this fraction of its frames are real
        (``mask``); in (0, 1].
    interp : {"lanczos3", "bicubic"}
        Resampling model of the PI resize (module docstring).
    grid : {"tr", "k"}
        Sample positions from the actual TR (cached per ``(k, tr)``) or from ``k`` alone.
    overflow : {"error", "crop"}
        What to do with real frames past ``n_patches * k``.
    """

    def __init__(
        self,
        dim: int,
        *,
        k_base: int = 48,
        tau: float = DEFAULT_TAU,
        n_patches: int = 18,
        min_valid_fraction: float = 1.0,
        interp: Interp = "lanczos3",
        grid: Grid = "tr",
        overflow: Overflow = "error",
    ) -> None:
        super().__init__()
        if dim < 1 or k_base < 1 or n_patches < 1:
            raise ValueError(
                f"TAPE: dim, k_base and n_patches must be >= 1; got {dim}, {k_base}, {n_patches}"
            )
        if not 0.0 < min_valid_fraction <= 1.0:
            raise ValueError(
                f"TAPE: min_valid_fraction must be in (0, 1]; got {min_valid_fraction}"
            )
        if interp not in ("lanczos3", "bicubic"):
            raise ValueError(f"TAPE: interp must be 'lanczos3' or 'bicubic'; got {interp!r}")
        if grid not in ("tr", "k"):
            raise ValueError(f"TAPE: grid must be 'tr' or 'k'; got {grid!r}")
        if interp == "bicubic" and grid != "k":
            raise ValueError("TAPE: interp='bicubic' places samples by k only; use grid='k'")
        if overflow not in ("error", "crop"):
            raise ValueError(f"TAPE: overflow must be 'error' or 'crop'; got {overflow!r}")
        patch_frames(1.0, tau)  # validates tau
        self.dim = int(dim)
        self.k_base = int(k_base)
        self.tau = float(tau)
        self.n_patches = int(n_patches)
        self.min_valid_fraction = float(min_valid_fraction)
        self.interp: Interp = interp
        self.grid: Grid = grid
        self.overflow: Overflow = overflow
        self.weight = nn.Parameter(torch.empty(self.dim, self.k_base))
        self.bias = nn.Parameter(torch.zeros(self.dim))
        nn.init.xavier_uniform_(self.weight)
        # (k, tr in microseconds or -1) -> pinv(B) in float64 on the CPU; plus per-device
        # copies. Derived from constants only, so never part of the state dict.
        self._pinv64: dict[tuple[int, int], Tensor] = {}
        self._pinv: dict[tuple[int, int, str, torch.dtype], Tensor] = {}

    @property
    def tr_base(self) -> float:
        """The TR (s) at which the base kernel needs no resize: ``tau / k_base``."""
        return self.tau / self.k_base

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, k_base={self.k_base}, tau={self.tau}, n_patches={self.n_patches}, "
            f"min_valid_fraction={self.min_valid_fraction}, interp={self.interp}, "
            f"grid={self.grid}, overflow={self.overflow}"
        )

    def _key(self, tr: float) -> tuple[int, int]:
        k = patch_frames(tr, self.tau)
        return k, (round(tr * 1e6) if self.grid == "tr" else -1)

    def resize_matrix(self, tr: float, device: torch.device, dtype: torch.dtype) -> Tensor | None:
        """Cached ``pinv(B)`` for a series at ``tr`` (``None`` when no resize is needed)."""
        k, tr_us = self._key(tr)
        if k == self.k_base and (self.grid == "k" or abs(tr - self.tr_base) < 1e-9):
            return None
        key = (k, tr_us, str(device), dtype)
        mat = self._pinv.get(key)
        if mat is None:
            base = self._pinv64.get((k, tr_us))
            if base is None:
                step = tr / self.tr_base if self.grid == "tr" else None
                base = pi_resize_matrix(self.k_base, k, interp=self.interp, step=step)
                self._pinv64[(k, tr_us)] = base
            mat = base.to(device=device, dtype=dtype)
            self._pinv[key] = mat
        return mat

    def kernel(self, tr: float) -> Tensor:
        """The (D, k) kernel applied to a series at repetition time ``tr``."""
        mat = self.resize_matrix(tr, self.weight.device, self.weight.dtype)
        return self.weight if mat is None else self.weight @ mat

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._pinv.clear()  # device/dtype copies are rebuilt lazily after .to()/.half()
        return super()._apply(fn, recurse)

    def forward(
        self,
        x: Tensor,
        tr: Tensor | float,
        mask: Tensor | None = None,
        roi_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Embed a batch of ROI series.

        Parameters
        ----------
        x : Tensor of shape (B, T, R)
            Time-major ROI series.
        tr : Tensor of shape (B,) or float
            Repetition time of each item in seconds (items may differ).
        mask : bool Tensor of shape (B, T), optional
            Real frames (default: all).
        roi_mask : bool Tensor of shape (B, R), optional
            ROIs with data (default: all).

        Returns
        -------
        tokens : Tensor of shape (B, R, P, D)
            Zero where not valid.
        valid : bool Tensor of shape (B, R, P)
        """
        if x.dim() != 3:
            raise ValueError(f"TAPE: x must have shape (B, T, R); got {tuple(x.shape)}")
        b, t, r = x.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        if roi_mask is None:
            roi_mask = torch.ones(b, r, dtype=torch.bool, device=x.device)
        if mask.shape != (b, t) or roi_mask.shape != (b, r):
            raise ValueError(
                f"TAPE: mask {tuple(mask.shape)} / roi_mask {tuple(roi_mask.shape)} do not "
                f"match x {tuple(x.shape)}"
            )
        trs = (
            [float(tr)] * b
            if not isinstance(tr, Tensor)
            else [float(v) for v in tr.reshape(-1).tolist()]
        )
        if len(trs) != b:
            raise ValueError(f"TAPE: {len(trs)} repetition times for a batch of {b}")
        mask = mask.bool()
        x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        keys = [self._key(v) for v in trs]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        p = self.n_patches
        outs: list[Tensor] = []
        oks: list[Tensor] = []
        order: list[int] = []
        for (k, _), items in groups.items():
            idx = torch.tensor(items, device=x.device)
            xs, ms = x.index_select(0, idx), mask.index_select(0, idx)
            span = p * k
            if t > span:
                if self.overflow == "error" and bool(ms[:, span:].any()):
                    tr_i = trs[items[0]]
                    raise ValueError(
                        f"TAPE: a series at TR {tr_i:g} s has real frames past frame {span} "
                        f"({p} patches x {k} frames = {p * self.tau:g} s); shorten the "
                        f"window, raise n_patches, or set overflow: crop"
                    )
                xs, ms = xs[:, :span], ms[:, :span]
            elif t < span:
                xs = F.pad(xs, (0, 0, 0, span - t))
                ms = F.pad(ms, (0, span - t), value=False)
            w = self.kernel(trs[items[0]])  # (D, k)
            tok = torch.einsum("bpkr,dk->brpd", xs.reshape(len(items), p, k, r), w) + self.bias
            frac = ms.reshape(len(items), p, k).sum(dim=-1) / k
            ok_t = (frac >= self.min_valid_fraction - 1e-9) & (frac > 0)
            ok = ok_t[:, None, :] & roi_mask.index_select(0, idx)[:, :, None]
            outs.append(tok * ok[..., None].to(tok.dtype))
            oks.append(ok)
            order.extend(items)
        tokens = torch.cat(outs, dim=0)
        valid = torch.cat(oks, dim=0)
        if order != list(range(b)):
            inverse = torch.empty(b, dtype=torch.long)
            inverse[torch.tensor(order)] = torch.arange(b)
            inverse = inverse.to(x.device)
            tokens, valid = tokens.index_select(0, inverse), valid.index_select(0, inverse)
        return tokens, valid
