"""Context and target masks over the ROI x time-patch grid (BrainHarmonix-F's JEPA).

The official BrainHarmonix release has no mask collator for F; this follows Brain-JEPA's
spatiotemporal masking (``MaskCollator_fmri``: an observation block, a *cross-ROI* target
and *cross-time* / *double-cross* targets), adapted to grids whose valid part differs from
item to item (padded time patches, ROIs without data).

Per batch, the block scales are drawn once (as Brain-JEPA); per item, the positions:

1. **Observation block**: a contiguous run of ``int(n_t * s)`` of the item's valid time
   patches (``s ~ U(context_time_scale)``) and a random subset of ``int(n_r * s')`` of its
   valid ROIs (``s' ~ U(context_roi_scale)``).
2. **Cross-ROI target** (alpha): a random subset of the valid ROIs (fraction
   ``U(cross_roi_scale)``) over a contiguous run of time patches inside the observation
   window (fraction ``U(cross_roi_time_scale)`` of ``n_t``). These ROIs are removed from the
   context at *every* time patch, so they must be predicted from other ROIs.
3. **Cross-time targets** (right and left; needs ``n_t >= 3``): on each side, ``m =
   int(n_t * U(cross_time_scale))`` columns (at most ``ceil(edge_fraction * n_t)``, and
   fewer than half the columns) picked among the first / last valid time patches. Their
   ROIs: a fraction ``U(cross_time_roi_scale)`` of set A (observed ROIs that are also
   alpha ROIs: *double-cross*, unseen in space and time) and the same fraction of set B
   (the other valid ROIs: *cross-time*). The chosen columns are removed from the context
   for every ROI.
4. **Context** = observation block minus the alpha ROIs minus the cross-time columns;
   **targets** = the union of the three target blocks. Both are restricted to valid tokens
   and are disjoint.

Guarantees (tested): context and targets are non-empty subsets of the valid tokens and do
not overlap, for every item with at least two valid tokens (fewer is an error). When a
tiny grid leaves the context empty, the observation block minus the targets is used;
when it leaves no target, one valid token outside the context becomes the target.

Unlike I-JEPA/Brain-JEPA, nothing is truncated to the batch's shortest mask: items keep
their own numbers of context and target tokens, and :func:`mask_to_index` pads them with a
validity mask that the attention and the loss honour.

Randomness comes from ``generator`` (default: torch's global generator, which the training
loop seeds and checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

__all__ = ["JepaMaskConfig", "mask_to_index", "sample_jepa_masks"]

Range = tuple[float, float]


@dataclass(frozen=True)
class JepaMaskConfig:
    """Scales of the JEPA blocks (fractions; Brain-JEPA's values by default).

    Attributes
    ----------
    context_roi_scale, context_time_scale : (float, float)
        Observation block: fraction of the valid ROIs / valid time patches.
    cross_roi_scale : (float, float)
        Fraction of the valid ROIs in the cross-ROI target.
    cross_roi_time_scale : (float, float)
        Its time span as a fraction of the valid time patches.
    cross_time_scale : (float, float)
        Columns per side of the cross-time targets, fraction of the valid time patches.
    cross_time_roi_scale : (float, float)
        ROIs per side, fraction of set A and of set B.
    edge_fraction : float
        Share of the valid time patches, on each side, eligible for cross-time targets.
    """

    context_roi_scale: Range = (0.84, 1.0)
    context_time_scale: Range = (0.84, 1.0)
    cross_roi_scale: Range = (0.45, 0.6)
    cross_roi_time_scale: Range = (0.2, 0.6)
    cross_time_scale: Range = (0.0, 0.4)
    cross_time_roi_scale: Range = (0.15, 0.3)
    edge_fraction: float = 0.3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "edge_fraction":
                if not 0.0 < float(value) <= 0.5:
                    raise ValueError(f"masks.edge_fraction must be in (0, 0.5]; got {value}")
                continue
            lo, hi = (float(v) for v in value)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"masks.{f.name} must satisfy 0 <= low <= high <= 1; got {value}")
            object.__setattr__(self, f.name, (lo, hi))

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> JepaMaskConfig:
        """Build from a mapping; unknown keys are an error naming them."""
        if cfg is None:
            return cls()
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - allowed)
        if unknown:
            raise ValueError(f"masks: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        kwargs: dict[str, Any] = {}
        for key, value in cfg.items():
            kwargs[key] = float(value) if key == "edge_fraction" else tuple(value)
        return cls(**kwargs)


def _uniform(rng: Range, gen: torch.Generator | None) -> float:
    lo, hi = rng
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _pick(ids: Tensor, n: int, gen: torch.Generator | None) -> Tensor:
    if n <= 0 or ids.numel() == 0:
        return ids[:0]
    return ids[torch.randperm(ids.numel(), generator=gen)[:n]]


def _randint(high: int, gen: torch.Generator | None) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=gen)) if high > 1 else 0


def _item_masks(
    valid: Tensor, scales: dict[str, float], cfg: JepaMaskConfig, gen: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    r, p = valid.shape
    rows = torch.nonzero(valid.any(dim=1)).flatten()
    cols = torch.nonzero(valid.any(dim=0)).flatten()
    n_r, n_c = rows.numel(), cols.numel()

    # 1. observation block
    n_ot = min(max(1, int(n_c * scales["ctx_t"])), n_c)
    start = _randint(n_c - n_ot + 1, gen)
    obs_cols = cols[start : start + n_ot]
    obs_rois = _pick(rows, min(max(1, int(n_r * scales["ctx_r"])), n_r), gen)
    # 2. cross-ROI target, inside the observation window
    a_rois = _pick(rows, min(max(1, int(n_r * scales["a_r"])), n_r), gen)
    n_at = min(max(1, int(n_c * scales["a_t"])), n_ot)
    a_start = _randint(n_ot - n_at + 1, gen)
    a_cols = obs_cols[a_start : a_start + n_at]
    # 3. cross-time targets at both ends
    side_blocks: list[tuple[Tensor, Tensor]] = []
    if n_c >= 3:
        edge = min(math.ceil(cfg.edge_fraction * n_c), (n_c - 1) // 2)
        m = min(edge, int(n_c * scales["ct"]))
        if m > 0:
            in_a = torch.zeros(r, dtype=torch.bool)
            in_a[a_rois] = True
            in_obs = torch.zeros(r, dtype=torch.bool)
            in_obs[obs_rois] = True
            set_a = rows[(in_a & in_obs)[rows]]
            set_b = rows[~(in_a & in_obs)[rows]]
            for side in (cols[n_c - edge :], cols[:edge]):
                side_cols = _pick(side, m, gen)
                n_a = int(set_a.numel() * scales["ct_r"])
                n_b = int(set_b.numel() * scales["ct_r"])
                side_rois = torch.cat([_pick(set_a, n_a, gen), _pick(set_b, n_b, gen)])
                side_blocks.append((side_rois, side_cols))

    ctx = torch.zeros(r, p, dtype=torch.bool)
    ctx[obs_rois[:, None], obs_cols[None, :]] = True
    observed = ctx & valid
    ctx[a_rois] = False
    tgt = torch.zeros(r, p, dtype=torch.bool)
    tgt[a_rois[:, None], a_cols[None, :]] = True
    for side_rois, side_cols in side_blocks:
        ctx[:, side_cols] = False
        if side_rois.numel():
            tgt[side_rois[:, None], side_cols[None, :]] = True
    ctx &= valid
    tgt &= valid & ~ctx

    # Fallbacks for tiny grids (see the module docstring).
    if not bool(ctx.any()):
        ctx = observed & ~tgt
        if not bool(ctx.any()):
            ctx = valid & ~tgt
        if not bool(ctx.any()):  # the targets cover every valid token: give one back
            one = _pick(torch.nonzero(tgt.flatten()).flatten(), 1, gen)
            ctx.view(-1)[one] = True
            tgt.view(-1)[one] = False
    if not bool(tgt.any()):
        free = torch.nonzero((valid & ~ctx).flatten()).flatten()
        if free.numel() == 0:
            free = torch.nonzero(ctx.flatten()).flatten()
            one = _pick(free, 1, gen)
            ctx.view(-1)[one] = False
        else:
            one = _pick(free, 1, gen)
        tgt.view(-1)[one] = True
    return ctx, tgt


def sample_jepa_masks(
    valid: Tensor,
    cfg: JepaMaskConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw context and target masks for a batch.

    Parameters
    ----------
    valid : bool Tensor of shape (B, R, P)
        Real tokens of each item's ROI x time grid.
    cfg : JepaMaskConfig, optional
    generator : torch.Generator, optional
        CPU generator (default: the global one).

    Returns
    -------
    context, target : bool Tensor of shape (B, R, P)
        On ``valid``'s device.

    Raises
    ------
    ValueError
        When an item has fewer than two valid tokens.
    """
    cfg = cfg or JepaMaskConfig()
    if valid.dim() != 3 or valid.dtype != torch.bool:
        raise ValueError(f"JEPA masks: valid must be a (B, R, P) bool tensor; got {valid.shape}")
    counts = valid.flatten(1).sum(dim=1)
    if bool((counts < 2).any()):
        bad = torch.nonzero(counts < 2).flatten().tolist()
        raise ValueError(
            f"JEPA masks: batch item(s) {bad} have fewer than 2 valid tokens (nothing to "
            "predict); check the series' mask, the ROI mask and TAPE's min_valid_fraction"
        )
    scales = {
        "ctx_r": _uniform(cfg.context_roi_scale, generator),
        "ctx_t": _uniform(cfg.context_time_scale, generator),
        "a_r": _uniform(cfg.cross_roi_scale, generator),
        "a_t": _uniform(cfg.cross_roi_time_scale, generator),
        "ct": _uniform(cfg.cross_time_scale, generator),
        "ct_r": _uniform(cfg.cross_time_roi_scale, generator),
    }
    host = valid.detach().cpu()
    ctxs, tgts = zip(*(_item_masks(v, scales, cfg, generator) for v in host), strict=True)
    return torch.stack(ctxs).to(valid.device), torch.stack(tgts).to(valid.device)


def mask_to_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of the True entries of each row, padded to the longest row.

    Parameters
    ----------
    mask : bool Tensor of shape (B, N)

    Returns
    -------
    index : LongTensor of shape (B, M)
        Ascending positions of the True entries first; the padding repeats other positions
        (harmless: marked invalid).
    valid : bool Tensor of shape (B, M)
        True for real entries. ``M = max(1, max row count)``.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask_to_index: expected a (B, N) bool tensor; got {mask.shape}")
    counts = mask.sum(dim=1)
    m = max(1, int(counts.max()) if mask.numel() else 1)
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :m]
    ok = torch.arange(m, device=mask.device)[None, :] < counts[:, None]
    return order, ok
