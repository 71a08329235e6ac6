"""RWMoE: a mixture of experts routed by random walks on a connectivity graph.

The second stage of the LMAE -> RWMoE -> SSM predictor (arXiv 2508.16597). The paper says
only that the module "clusters features across spatial and temporal dimensions" and
captures indirect ROI interactions; the equations here are this package's reconstruction,
explained in ``docs/predictor.md``.

Pipeline of one RWMoE layer over ``N`` nodes (ROIs, or time windows)::

    S  (B, N, N)   similarity: per-subject FC, a group FC, windowed-FC similarity, ...
    A  = sparsify(S)             positive part, threshold, optional top-k per row, no
                                 self-loops, invalid nodes cut off
    P  = D^-1 A                  row-stochastic transition matrix (an isolated node keeps
                                 a self-loop, so every row sums to 1)
    F  = [H, P H, ..., P^s H]    multi-step diffusion of the node tokens ("power" walk),
         or with the lazy walk (I + P) / 2, or [H, Pi H] with the personalised-PageRank
         matrix Pi = alpha (I - (1 - alpha) P)^-1
    g  = softmax(W F / temperature)    per-node expert weights (optionally top-k)
    y  = h + sum_e g_e FFN_e(LayerNorm(h))

Public API
----------
:func:`correlation_affinity`, :func:`window_assignment`, :func:`window_dfc_affinity`,
:func:`token_affinity`, :func:`sparsify_affinity`, :func:`transition_matrix`,
:func:`diffusion_features`, :func:`load_balancing_loss`, :class:`RandomWalkRouter`,
:class:`ExpertFFNs`, :class:`RWMoE`, :func:`expert_weight_table`,
:func:`write_expert_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainharmony.io import PathLike, provenance, sidecar_path, write_json, write_tsv
from brainharmony.models.lmae import zscore_series

__all__ = [
    "ExpertFFNs",
    "RWMoE",
    "RandomWalkRouter",
    "correlation_affinity",
    "diffusion_features",
    "expert_weight_table",
    "load_balancing_loss",
    "sparsify_affinity",
    "token_affinity",
    "transition_matrix",
    "window_assignment",
    "window_dfc_affinity",
    "write_expert_weights",
]

Walk = Literal["power", "lazy", "ppr"]
WALKS = ("power", "lazy", "ppr")


# --------------------------------------------------------------------------------------
# Graphs
# --------------------------------------------------------------------------------------


def correlation_affinity(x: Tensor, valid: Tensor, roi_mask: Tensor) -> Tensor:
    """Per-subject Pearson functional connectivity over the valid frames.

    Parameters
    ----------
    x : Tensor of shape (B, T, R)
    valid : Tensor of shape (B, T), bool
    roi_mask : Tensor of shape (B, R), bool

    Returns
    -------
    Tensor of shape (B, R, R)
        Correlations; 0 on the diagonal and for absent or constant ROIs.
    """
    z = zscore_series(x, valid, roi_mask)
    n = valid.sum(dim=1).clamp(min=1).to(z.dtype)[:, None, None]
    fc = torch.einsum("bti,btj->bij", z, z) / n
    fc.diagonal(dim1=-2, dim2=-1).zero_()  # in place: no (B, R, R) copy
    return fc


def window_assignment(valid: Tensor, tr: Tensor, window_s: float) -> Tensor:
    """One-hot assignment of valid frames to consecutive windows of ``window_s`` seconds.

    Frame ``t`` of sample ``b`` (at ``t * tr[b]`` seconds) belongs to window
    ``floor(t * tr[b] / window_s)``. The number of windows ``K`` is set by the last valid
    frame in the batch, so trailing padding adds no window.

    Parameters
    ----------
    valid : Tensor of shape (B, T), bool
    tr : Tensor of shape (B,)
        Seconds.
    window_s : float
        Window length in seconds.

    Returns
    -------
    Tensor of shape (B, T, K), float
        1 where a valid frame belongs to a window; rows of invalid frames are 0.
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be positive seconds; got {window_s}")
    t = valid.shape[1]
    seconds = (
        torch.arange(t, device=valid.device, dtype=torch.float64)[None, :] * tr.double()[:, None]
    )
    index = torch.floor(seconds / window_s + 1e-9).long()  # (B, T)
    k = int(torch.where(valid, index, torch.zeros_like(index)).max().item()) + 1
    onehot = F.one_hot(index.clamp(max=k - 1), k).to(torch.float32)
    return onehot * valid[:, :, None].to(torch.float32)


def window_dfc_affinity(x: Tensor, assign: Tensor, eps: float = 1e-6) -> Tensor:
    """Cosine similarity between the windows' functional-connectivity matrices.

    Each window's FC is the Pearson correlation of its frames,
    ``C_k = (1/n_k) sum_t xh_t xh_t^T`` with ``xh`` z-scored per ROI within the window.
    The similarity of two windows is the cosine of the off-diagonal parts of ``C_k`` and
    ``C_l``, computed without forming any ``R x R`` matrix:
    ``<C_k, C_l>_F = (1/(n_k n_l)) sum_{t in k, s in l} (xh_t . xh_s)^2``, minus the
    diagonal term ``sum_i C_k[i, i] C_l[i, i]``.

    Parameters
    ----------
    x : Tensor of shape (B, T, R)
        Series with invalid frames and absent ROIs set to 0.
    assign : Tensor of shape (B, T, K)
        From :func:`window_assignment`.
    eps : float
        Variance below which a ROI counts as constant in a window (its entries are 0).

    Returns
    -------
    Tensor of shape (B, K, K)
        In [-1, 1]; rows and columns of windows with fewer than 2 frames are 0.
    """
    x = x.float()
    counts = assign.sum(dim=1)  # (B, K)
    n = counts.clamp(min=1.0)[:, :, None]
    mean = torch.einsum("btk,btr->bkr", assign, x) / n
    xc = (x - torch.einsum("btk,bkr->btr", assign, mean)) * assign.sum(dim=2, keepdim=True)
    var = torch.einsum("btk,btr->bkr", assign, xc.square()) / n
    scale = torch.where(var > eps, var.clamp(min=eps).rsqrt(), torch.zeros_like(var))
    xh = xc * torch.einsum("btk,bkr->btr", assign, scale)
    gram = torch.einsum("btr,bsr->bts", xh, xh).square()
    full = torch.einsum("btk,bts,bsl->bkl", assign, gram, assign)
    full = full / (counts[:, :, None] * counts[:, None, :]).clamp(min=1.0)
    diag_c = torch.einsum("btk,btr->bkr", assign, xh.square()) / n  # C_k[i, i] (0 or 1)
    off = full - torch.einsum("bkr,blr->bkl", diag_c, diag_c)
    norm = torch.diagonal(off, dim1=1, dim2=2).clamp(min=0.0).sqrt()  # (B, K)
    denom = norm[:, :, None] * norm[:, None, :]
    sim = torch.where(denom > eps, off / denom.clamp(min=eps), torch.zeros_like(off))
    ok = counts >= 2
    return sim * (ok[:, :, None] & ok[:, None, :]).to(sim.dtype)


def token_affinity(tokens: Tensor, valid: Tensor) -> Tensor:
    """Cosine similarity of (detached) tokens (B, N, D) -> (B, N, N); invalid nodes 0."""
    u = F.normalize(tokens.detach().float(), dim=-1)
    sim = torch.einsum("bnd,bmd->bnm", u, u)
    pair = valid[:, :, None] & valid[:, None, :]
    return sim * pair.to(sim.dtype)


def sparsify_affinity(
    similarity: Tensor,
    valid: Tensor | None = None,
    threshold: float = 0.0,
    top_k: int | None = None,
) -> Tensor:
    """Non-negative, loop-free adjacency from a similarity matrix.

    Parameters
    ----------
    similarity : Tensor of shape (B, N, N)
    valid : Tensor of shape (B, N), bool, optional
        Invalid nodes lose every edge.
    threshold : float
        Entries ``<= threshold`` are dropped (0 keeps the strictly positive part).
    top_k : int, optional
        Keep only the ``top_k`` strongest edges of each row (after the threshold).

    Returns
    -------
    Tensor of shape (B, N, N)
    """
    if threshold < 0:
        raise ValueError(f"affinity threshold must be >= 0; got {threshold}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k edges must be >= 1; got {top_k}")
    s = similarity.float()
    n = s.shape[-1]
    if valid is not None and bool(valid.all()):
        valid = None  # a * 1 == a: skip the (B, N, N) mask
    # The spatial graphs are (B, 400, 400): each pass over them costs as much as a model
    # layer, and on CPU boolean-mask ops (where, masked_fill) are several times slower
    # than arithmetic. So a finite similarity takes the equal F.threshold (x <= t -> 0),
    # and edits are in place on the fresh result.
    if bool(torch.isfinite(s.sum())):
        a = F.threshold(s, threshold, 0.0)
    else:
        a = torch.where(s > threshold, s, torch.zeros_like(s))
    a.diagonal(dim1=-2, dim2=-1).zero_()
    if valid is not None:
        a = a * (valid[:, :, None] & valid[:, None, :]).to(a.dtype)
    if top_k is not None and top_k < n:
        a = _keep_top_k(a, top_k)
    return a


def _keep_top_k(a: Tensor, k: int) -> Tensor:
    """``a`` (B, N, N, non-negative) with all but the ``k`` largest entries of each row
    set to 0: equal to scattering ``a.topk(k)`` into zeros.

    On CPU without autograd, :func:`numpy.partition` gives the k-th largest value of every
    row (several times faster than ``torch.topk``) and smaller entries are zeroed. That
    keeps the same entries unless a row ties at its k-th value (topk then picks some of
    the tied entries: the reference) or holds a non-finite value; such inputs go through
    ``torch.topk``. A row with fewer than ``k`` positive entries keeps all of them either
    way (the zeros topk picks stay 0).
    """
    n = a.shape[-1]
    if (
        a.device.type == "cpu"
        and not (a.requires_grad and torch.is_grad_enabled())
        and a.is_contiguous()
        and bool(torch.isfinite(a.sum()))
    ):
        flat = a.detach().view(-1, n).numpy()
        part = np.partition(flat, n - k, axis=-1)
        kth = part[:, n - k]
        below = part[:, : n - k].max(axis=-1)  # the (k+1)-th largest
        if bool(np.all((kth == 0) | (below < kth))):
            keep = a >= torch.from_numpy(kth).view(*a.shape[:-1], 1)
            return a.mul_(keep)  # a >= 0 and finite: a * 1 == a, a * 0 == +0
    values, index = a.topk(k, dim=-1)
    return torch.zeros_like(a).scatter_(-1, index, values)


def transition_matrix(adjacency: Tensor, valid: Tensor | None = None) -> Tensor:
    """Random-walk transition matrix ``P = D^-1 A``.

    Parameters
    ----------
    adjacency : Tensor of shape (B, N, N)
        Non-negative.
    valid : Tensor of shape (B, N), bool, optional
        Edges from or to invalid nodes are removed first.

    Returns
    -------
    Tensor of shape (B, N, N)
        Every row sums to 1: a node without edges (isolated or invalid) gets a self-loop,
        so a walk from it stays put and no walk from a valid node ever reaches an
        invalid one.
    """
    low = adjacency.min() if adjacency.numel() else None
    if low is not None and not bool(low >= 0) and bool((adjacency < 0).any()):
        raise ValueError("transition_matrix: the adjacency has negative entries")
    a = adjacency.float()
    if valid is not None and not bool(valid.all()):
        a = a * (valid[:, :, None] & valid[:, None, :]).to(a.dtype)
    deg = a.sum(dim=-1, keepdim=True)
    p = a / deg.clamp(min=torch.finfo(a.dtype).tiny)
    # rows without edges (also a NaN degree) become rows of the identity, in place
    batch, node = torch.nonzero(~(deg[..., 0] > 0), as_tuple=True)
    if batch.numel():
        p[batch, node] = 0.0
        p[batch, node, node] = 1.0
    return p


def diffusion_features(
    transition: Tensor,
    tokens: Tensor,
    steps: int = 3,
    walk: Walk = "power",
    alpha: float = 0.15,
) -> Tensor:
    """Multi-step random-walk aggregation of node tokens.

    Parameters
    ----------
    transition : Tensor of shape (B, N, N)
        Row-stochastic ``P``.
    tokens : Tensor of shape (B, N, D)
        ``H``.
    steps : int
        ``s`` (``power`` and ``lazy`` walks).
    walk : {"power", "lazy", "ppr"}
        ``power``: ``[H, P H, ..., P^s H]``; ``lazy``: the same with ``(I + P) / 2``;
        ``ppr``: ``[H, Pi H]`` with ``Pi = alpha (I - (1 - alpha) P)^-1`` (personalised
        PageRank with restart probability ``alpha``; ``steps`` unused).
    alpha : float
        Restart probability of ``ppr``, in (0, 1].

    Returns
    -------
    Tensor of shape (B, N, D * (s + 1)) or (B, N, 2 D) for ``ppr``
    """
    if walk not in WALKS:
        raise ValueError(f"walk must be one of {WALKS}; got {walk!r}")
    p = transition.to(tokens.dtype)
    if walk == "ppr":
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"ppr alpha must be in (0, 1]; got {alpha}")
        eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
        pi_h = alpha * torch.linalg.solve(eye - (1.0 - alpha) * p, tokens)
        return torch.cat([tokens, pi_h], dim=-1)
    if steps < 1:
        raise ValueError(f"diffusion steps must be >= 1; got {steps}")
    feats = [tokens]
    current = tokens
    for _ in range(steps):
        moved = torch.bmm(p, current)
        current = 0.5 * (current + moved) if walk == "lazy" else moved
        feats.append(current)
    return torch.cat(feats, dim=-1)


def load_balancing_loss(gates: Tensor, valid: Tensor | None = None) -> Tensor:
    """Switch-Transformer load-balancing loss ``E * sum_e f_e p_e``.

    ``f_e`` is the fraction of valid tokens whose largest gate is expert ``e`` (no
    gradient) and ``p_e`` the mean gate of expert ``e`` over valid tokens. It is 1 when the
    load is uniform and ``E`` when one expert takes everything.

    Parameters
    ----------
    gates : Tensor of shape (B, N, E)
    valid : Tensor of shape (B, N), bool, optional

    Returns
    -------
    Tensor
        Scalar.
    """
    e = gates.shape[-1]
    w = (
        torch.ones(gates.shape[:2], dtype=gates.dtype, device=gates.device)
        if valid is None
        else valid.to(gates.dtype)
    )
    n = w.sum().clamp(min=1.0)
    importance = (gates * w[..., None]).sum(dim=(0, 1)) / n
    with torch.no_grad():
        top = F.one_hot(gates.argmax(dim=-1), e).to(gates.dtype)
        fraction = (top * w[..., None]).sum(dim=(0, 1)) / n
    return e * (fraction * importance).sum()


# --------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------


class RandomWalkRouter(nn.Module):
    """Expert weights of each node from its random-walk diffusion features.

    Parameters
    ----------
    dim : int
        Token width.
    n_experts : int
        ``E``.
    steps, walk, alpha
        See :func:`diffusion_features`.
    top_k : int, optional
        Keep the ``top_k`` largest gates per node (renormalised); ``None``: dense softmax.
    temperature : float
        Softmax temperature.
    """

    def __init__(
        self,
        dim: int,
        n_experts: int,
        steps: int = 3,
        walk: Walk = "power",
        alpha: float = 0.15,
        top_k: int | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if walk not in WALKS:
            raise ValueError(f"walk must be one of {WALKS}; got {walk!r}")
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1; got {n_experts}")
        if top_k is not None and not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k gates must be in [1, {n_experts}]; got {top_k}")
        if not temperature > 0:
            raise ValueError(f"gate temperature must be > 0; got {temperature}")
        self.steps, self.walk, self.alpha = steps, walk, alpha
        self.top_k, self.temperature = top_k, temperature
        n_feats = 2 if walk == "ppr" else steps + 1
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(n_feats * dim, n_experts)

    def forward(self, tokens: Tensor, transition: Tensor, valid: Tensor) -> Tensor:
        """Gates (B, N, E) of tokens (B, N, D) on the graph ``transition`` (B, N, N)."""
        h = self.norm(tokens)
        h = torch.where(valid[..., None], h, torch.zeros_like(h))
        feats = diffusion_features(transition, h, self.steps, self.walk, self.alpha)
        logits = self.proj(feats) / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return logits.softmax(dim=-1)


class ExpertFFNs(nn.Module):
    """``E`` two-layer GELU feed-forward experts, evaluated densely and mixed by gates.

    Parameters
    ----------
    dim : int
        Token width.
    n_experts : int
        ``E``.
    hidden : int
        Hidden width of each expert.
    """

    def __init__(self, dim: int, n_experts: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(n_experts, dim))
        nn.init.trunc_normal_(self.w1, std=0.02, a=-0.04, b=0.04)
        nn.init.trunc_normal_(self.w2, std=0.02, a=-0.04, b=0.04)
        for bias in (self.b1, self.b2):  # biases (2-D only because stacked): no decay
            bias._no_weight_decay = True  # type: ignore[attr-defined]

    def forward(self, x: Tensor, gates: Tensor) -> Tensor:
        """``sum_e gates[..., e] * FFN_e(x)`` for x (B, N, D), gates (B, N, E)."""
        h = F.gelu(torch.einsum("bnd,edh->bneh", x, self.w1) + self.b1)
        h = h * gates[..., None].to(h.dtype)
        return torch.einsum("bneh,ehd->bnd", h, self.w2) + gates.to(h.dtype) @ self.b2


class RWMoE(nn.Module):
    """A residual mixture-of-experts layer routed by :class:`RandomWalkRouter`.

    Parameters
    ----------
    dim : int
        Token width.
    n_experts : int
        Number of experts.
    steps, walk, alpha, top_k, temperature
        Router settings (see :class:`RandomWalkRouter`).
    hidden_ratio : float
        Expert hidden width as a multiple of ``dim``.
    """

    def __init__(
        self,
        dim: int,
        n_experts: int,
        steps: int = 3,
        walk: Walk = "power",
        alpha: float = 0.15,
        top_k: int | None = None,
        temperature: float = 1.0,
        hidden_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.router = RandomWalkRouter(dim, n_experts, steps, walk, alpha, top_k, temperature)
        self.norm = nn.LayerNorm(dim)
        self.experts = ExpertFFNs(dim, n_experts, max(1, round(dim * hidden_ratio)))

    def route(self, tokens: Tensor, transition: Tensor, valid: Tensor) -> Tensor:
        """Gates (B, N, E) of the nodes."""
        return self.router(tokens, transition, valid)

    def mix(self, tokens: Tensor, gates: Tensor) -> Tensor:
        """``tokens + sum_e gates_e FFN_e(LayerNorm(tokens))`` (gates per token)."""
        return tokens + self.experts(self.norm(tokens), gates)

    def forward(self, tokens: Tensor, transition: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Route the nodes on their graph and mix: returns (tokens, gates)."""
        gates = self.route(tokens, transition, valid)
        return self.mix(tokens, gates), gates


# --------------------------------------------------------------------------------------
# Export for the report
# --------------------------------------------------------------------------------------


def expert_weight_table(
    gates: Tensor | np.ndarray,
    valid: Tensor | np.ndarray | None = None,
    roi_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per-ROI expert weights as a tidy table (the report's brain figure).

    Parameters
    ----------
    gates : array of shape (B, R, E) or (R, E)
        Spatial gates (e.g. :meth:`brainharmony.models.predictor.Predictor.spatial_gates`),
        one row per subject when 3-D.
    valid : array of shape (B, R) or (R,), bool, optional
        ROIs with data per subject; a ROI is averaged over the subjects where it is valid.
    roi_names : sequence of str, optional
        Names of the ``R`` ROIs (default: ``"0"``, ``"1"``, ...).

    Returns
    -------
    pandas.DataFrame
        ``R * E`` rows, columns ``roi`` (str), ``expert`` (int), ``weight`` (float: the mean
        gate; NaN for a ROI valid in no subject). Weights of a ROI sum to 1.
    """
    g = torch.as_tensor(gates).detach().double().cpu()
    if g.dim() == 2:
        g = g[None]
    if g.dim() != 3:
        raise ValueError(f"gates must have shape (B, R, E) or (R, E); got {tuple(g.shape)}")
    _, r, e = g.shape
    if valid is None:
        v = torch.ones(g.shape[:2], dtype=torch.bool)
    else:
        v = torch.as_tensor(valid).bool().cpu()
        if v.dim() == 1:
            v = v[None]
        if v.shape != g.shape[:2]:
            raise ValueError(f"valid has shape {tuple(v.shape)}; expected {tuple(g.shape[:2])}")
    count = v.sum(dim=0).double()  # (R,)
    total = (g * v[..., None].double()).sum(dim=0)  # (R, E)
    mean = torch.where(count[:, None] > 0, total / count.clamp(min=1)[:, None], float("nan"))
    names = [str(i) for i in range(r)] if roi_names is None else [str(n) for n in roi_names]
    if len(names) != r:
        raise ValueError(f"{len(names)} ROI names for {r} ROIs")
    return pd.DataFrame(
        {
            "roi": np.repeat(np.asarray(names, dtype=object), e),
            "expert": np.tile(np.arange(e, dtype=np.int64), r),
            "weight": mean.numpy().reshape(-1),
        }
    )


def write_expert_weights(
    path: PathLike,
    table: pd.DataFrame,
    *,
    inputs: Sequence[PathLike] = (),
    parameters: Mapping[str, Any] | None = None,
) -> Path:
    """Write an :func:`expert_weight_table` as TSV with a provenance JSON sidecar."""
    missing = {"roi", "expert", "weight"} - set(table.columns)
    if missing:
        raise ValueError(f"expert weight table lacks columns {sorted(missing)}")
    out = write_tsv(path, table[["roi", "expert", "weight"]])
    write_json(
        sidecar_path(out),
        {
            "Description": "Per-ROI RWMoE spatial expert weights (mean gate over subjects)",
            "Columns": {
                "roi": "ROI name",
                "expert": "spatial expert index",
                "weight": "mean gate weight; the weights of a ROI sum to 1",
            },
            **provenance(step="rwmoe-expert-weights", inputs=inputs, parameters=parameters),
        },
    )
    return out
