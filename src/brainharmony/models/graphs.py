"""Published graph baselines on functional-connectivity matrices: BrainNetCNN, BrainGNN and
the Brain Network Transformer.

Pure PyTorch (no torch_geometric), dense and batched, CPU-friendly. Each network takes a
batch of ROI x ROI connectivity matrices and returns one row of logits (or one value for
regression) per subject. The architectures follow the papers; the official code was read
for the details it fixes and is cited per class, none of it is reproduced here. The sizes
are arguments without defaults: the defaults (the papers') live in the evaluation settings
(:mod:`brainharmony.evaluate.settings`, ``evaluate.graphs``), and the training recipes in
:mod:`brainharmony.evaluate.graphs`.

* :class:`BrainNetCNN`: Kawahara et al. 2017, NeuroImage 146:1038 (edge-to-edge,
  edge-to-node, node-to-graph filters).
* :class:`BrainGNN`: Li et al. 2021, Medical Image Analysis 74:102233 (ROI-aware graph
  convolution, R-pool TopK pooling, with :func:`braingnn_regularisers`).
* :class:`BrainNetworkTransformer`: Kan et al. 2022, NeurIPS (self-attention over ROI
  nodes, orthonormal clustering readout :class:`OCRead`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BNTConfig",
    "BrainGNN",
    "BrainGNNConfig",
    "BrainNetCNN",
    "BrainNetCNNConfig",
    "BrainNetworkTransformer",
    "OCRead",
    "braingnn_regularisers",
    "sparsify_positive",
]


def _uniform_(t: Tensor, fan_in: int) -> Tensor:
    """In-place U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default for conv/linear)."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    with torch.no_grad():
        return t.uniform_(-bound, bound)


def _check_matrices(x: Tensor, n_rois: int, who: str) -> None:
    if x.ndim != 3 or x.shape[1] != n_rois or x.shape[2] != n_rois:
        raise ValueError(
            f"{who}: expected connectivity matrices of shape (B, {n_rois}, {n_rois}); "
            f"got {tuple(x.shape)}"
        )


# --------------------------------------------------------------------------- BrainNetCNN


@dataclass(frozen=True)
class BrainNetCNNConfig:
    """BrainNetCNN sizes (Kawahara et al. 2017, the "E2Enet" of their Fig. 2).

    Attributes
    ----------
    n_rois : int
    n_out : int
        Classes (logits) or 1 (regression).
    e2e_channels : sequence of int
        Feature maps of each edge-to-edge layer (the paper: 32, 32).
    e2n_channels : int
        Edge-to-node filters (64).
    n2g_channels : int
        Node-to-graph filters (256).
    hidden : sequence of int
        Fully connected layers before the output (128, 30).
    dropout : float
        After the E2N, N2G and hidden layers (0.5).
    negative_slope : float
        Of the leaky ReLUs (0.33).
    """

    n_rois: int
    n_out: int
    e2e_channels: Sequence[int]
    e2n_channels: int
    n2g_channels: int
    hidden: Sequence[int]
    dropout: float
    negative_slope: float


class EdgeToEdge(nn.Module):
    """Cross-shaped filter: output edge ``(i, j)`` = a weighted sum over row ``i`` plus one
    over column ``j`` of every input map (Kawahara et al. 2017, Eq. 2), bias added.

    Shapes: ``(B, C_in, R, R) -> (B, C_out, R, R)``.
    """

    def __init__(self, c_in: int, c_out: int, n_rois: int) -> None:
        super().__init__()
        fan_in = c_in * n_rois
        self.row = nn.Parameter(_uniform_(torch.empty(c_out, c_in, n_rois), fan_in))
        self.col = nn.Parameter(_uniform_(torch.empty(c_out, c_in, n_rois), fan_in))
        self.bias = nn.Parameter(_uniform_(torch.empty(c_out), fan_in))

    def forward(self, x: Tensor) -> Tensor:
        rows = torch.einsum("bcij,ocj->boi", x, self.row)
        cols = torch.einsum("bcij,oci->boj", x, self.col)
        return rows[..., :, None] + cols[..., None, :] + self.bias[None, :, None, None]


class EdgeToNode(nn.Module):
    """One row filter per output map: node ``i`` = weighted sum over row ``i``
    (``(B, C_in, R, R) -> (B, C_out, R)``). Kawahara et al. use the row filter only."""

    def __init__(self, c_in: int, c_out: int, n_rois: int) -> None:
        super().__init__()
        fan_in = c_in * n_rois
        self.weight = nn.Parameter(_uniform_(torch.empty(c_out, c_in, n_rois), fan_in))
        self.bias = nn.Parameter(_uniform_(torch.empty(c_out), fan_in))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bcij,ocj->boi", x, self.weight) + self.bias[None, :, None]


class NodeToGraph(nn.Module):
    """Weighted sum over the nodes of every map: ``(B, C_in, R) -> (B, C_out)``."""

    def __init__(self, c_in: int, c_out: int, n_rois: int) -> None:
        super().__init__()
        fan_in = c_in * n_rois
        self.weight = nn.Parameter(_uniform_(torch.empty(c_out, c_in, n_rois), fan_in))
        self.bias = nn.Parameter(_uniform_(torch.empty(c_out), fan_in))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bci,oci->bo", x, self.weight) + self.bias


class BrainNetCNN(nn.Module):
    """BrainNetCNN (Kawahara et al. 2017).

    E2E layers, an E2N layer, an N2G layer and fully connected layers, each followed by a
    leaky ReLU; dropout after E2N, N2G and the hidden layers; a linear output. Details
    checked against the PyTorch ports (nicofarr/brainnetcnnVis_pytorch, and the
    ``brainnetcnn.py`` of Wayfear/BrainNetworkTransformer); written anew here.

    Input ``(B, R, R)`` connectivity matrices; output ``(B, n_out)``.
    """

    def __init__(self, cfg: BrainNetCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        r = cfg.n_rois
        chans = [1, *cfg.e2e_channels]
        self.e2e = nn.ModuleList(EdgeToEdge(a, b, r) for a, b in pairwise(chans))
        self.e2n = EdgeToNode(chans[-1], cfg.e2n_channels, r)
        self.n2g = NodeToGraph(cfg.e2n_channels, cfg.n2g_channels, r)
        dims = [cfg.n2g_channels, *cfg.hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))
        self.out = nn.Linear(dims[-1], cfg.n_out)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        _check_matrices(x, self.cfg.n_rois, "BrainNetCNN")
        act = lambda t: F.leaky_relu(t, self.cfg.negative_slope)  # noqa: E731
        h = x[:, None]
        for layer in self.e2e:
            h = act(layer(h))
        h = self.drop(act(self.e2n(h)))
        h = self.drop(act(self.n2g(h)))
        for layer in self.hidden:
            h = self.drop(act(layer(h)))
        return self.out(h)


# --------------------------------------------------------------------------- BrainGNN


@dataclass(frozen=True)
class BrainGNNConfig:
    """BrainGNN sizes (Li et al. 2021; the official code's defaults in brackets).

    Attributes
    ----------
    n_rois : int
        Nodes (and node-feature width: the FC rows).
    n_out : int
    conv_dims : sequence of int
        Output width of each Ra-GConv layer, each followed by an R-pool ([32, 32]).
    communities : int
        ``K``, the number of community kernels of each Ra-GConv ([8]).
    pool_ratio : float
        Fraction of nodes each R-pool keeps ([0.5]).
    mlp_hidden : int
        Width of the second fully connected layer ([512]; the first has the last
        conv width).
    dropout : float
        After the fully connected layers ([0.5]).
    """

    n_rois: int
    n_out: int
    conv_dims: Sequence[int]
    communities: int
    pool_ratio: float
    mlp_hidden: int
    dropout: float


def sparsify_positive(fc: Tensor, density: float) -> Tensor:
    """Keep each graph's strongest positive edges, zero elsewhere (and on the diagonal).

    Parameters
    ----------
    fc : Tensor of shape (B, R, R)
        Symmetric connectivity matrices.
    density : float in (0, 1]
        Fraction of the ``R (R - 1) / 2`` node pairs kept: the largest values, of the
        positive ones only (BrainGNN keeps the top 10% positive edges).

    Returns
    -------
    Tensor of shape (B, R, R)
        Non-negative, symmetric, zero diagonal.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1]; got {density}")
    r = fc.shape[1]
    iu = torch.triu_indices(r, r, 1)
    upper = fc[:, iu[0], iu[1]]
    k = max(1, round(density * upper.shape[1]))
    thr = upper.topk(k, dim=1).values[:, -1:]
    keep = (upper >= thr) & (upper > 0)
    out = torch.zeros_like(fc)
    vals = torch.where(keep, upper, torch.zeros_like(upper))
    out[:, iu[0], iu[1]] = vals
    out[:, iu[1], iu[0]] = vals
    return out


class RaGConv(nn.Module):
    """ROI-aware graph convolution (Li et al. 2021, Eq. 2-4).

    Node ``i`` (ROI ``r_i``) has its own kernel ``W_i = sum_u relu(a_{u, r_i}) B_u + B_0``:
    a combination of ``K`` community kernels ``B_u`` with non-negative ROI memberships
    ``a`` (a bias-free linear map of the ROI's one-hot position, then ReLU; the official
    code, xxlya/BrainGNN_Pytorch ``MyNNConv``, builds it as that MLP). Messages:
    ``x'_i = mean_{j in N(i) + i} softmax_j(e_ij) (W_j x_j) + b``, the attention a softmax
    of the edge weights over ``i``'s neighbours and itself (self-loop weight 1).
    """

    def __init__(self, n_rois: int, d_in: int, d_out: int, communities: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.membership = nn.Parameter(_uniform_(torch.empty(communities, n_rois), n_rois))
        self.kernels = nn.Parameter(_uniform_(torch.empty(communities, d_in, d_out), communities))
        self.kernel0 = nn.Parameter(_uniform_(torch.empty(d_in, d_out), communities))
        self.bias = nn.Parameter(_uniform_(torch.empty(d_out), d_in))

    def forward(self, x: Tensor, adj: Tensor, roi: Tensor) -> Tensor:
        """``x`` (B, N, d_in), ``adj`` (B, N, N) non-negative weights (0: no edge),
        ``roi`` (B, N) ROI index of every node -> (B, N, d_out)."""
        alpha = F.relu(self.membership).T[roi]  # (B, N, K)
        per_k = torch.einsum("bnd,kde->bnke", x, self.kernels)
        h = torch.einsum("bnk,bnke->bne", alpha, per_k) + x @ self.kernel0
        n = adj.shape[1]
        eye = torch.eye(n, dtype=torch.bool, device=adj.device)
        edge = (adj > 0) | eye
        weights = torch.where(eye, torch.ones_like(adj), adj)
        att = torch.softmax(weights.masked_fill(~edge, float("-inf")), dim=-1)
        deg = edge.sum(dim=-1, keepdim=True).to(h.dtype)
        return (att @ h) / deg + self.bias


class RPool(nn.Module):
    """R-pool: TopK pooling by a learned projection (Li et al. 2021, Eq. 5-6).

    Score ``s = x p / ||p||``; the ``ceil(ratio N)`` highest-scoring nodes are kept, their
    features scaled by ``sigmoid(s)``; the graph is restricted to them.
    """

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.weight = nn.Parameter(_uniform_(torch.empty(dim), dim))

    def forward(self, x: Tensor, adj: Tensor, roi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns the pooled ``x``, ``adj``, ``roi`` and ``sigmoid(s)`` of all nodes."""
        score = (x @ self.weight) / self.weight.norm()
        k = max(1, math.ceil(self.ratio * x.shape[1]))
        top = score.topk(k, dim=1).indices  # (B, k)
        gate = torch.sigmoid(score.gather(1, top))
        x = x.gather(1, top[..., None].expand(-1, -1, x.shape[2])) * gate[..., None]
        adj = adj.gather(1, top[..., None].expand(-1, -1, adj.shape[2]))
        adj = adj.gather(2, top[:, None, :].expand(-1, k, -1))
        return x, adj, roi.gather(1, top), torch.sigmoid(score)


class BrainGNN(nn.Module):
    """BrainGNN (Li et al. 2021).

    Node features are the FC rows, edges the graph's kept positive FC weights
    (:func:`sparsify_positive`). Ra-GConv -> R-pool blocks; after each, the max and mean
    over the kept nodes are concatenated into the readout; before the next block the
    pooled graph is augmented with its two-hop paths (``(A + I)^2``, diagonal removed, as
    the official code does). Readout -> linear -> ReLU -> batch norm -> dropout -> linear
    -> ReLU -> batch norm -> dropout -> linear.

    :meth:`forward_with_scores` also returns what the regularisers need.
    """

    def __init__(self, cfg: BrainGNNConfig) -> None:
        super().__init__()
        if not cfg.conv_dims:
            raise ValueError("BrainGNN: conv_dims must name at least one layer")
        self.cfg = cfg
        dims = [cfg.n_rois, *cfg.conv_dims]
        self.convs = nn.ModuleList(
            RaGConv(cfg.n_rois, a, b, cfg.communities) for a, b in pairwise(dims)
        )
        self.pools = nn.ModuleList(RPool(d, cfg.pool_ratio) for d in cfg.conv_dims)
        readout = 2 * sum(cfg.conv_dims)
        self.fc1 = nn.Linear(readout, cfg.conv_dims[-1])
        self.bn1 = nn.BatchNorm1d(cfg.conv_dims[-1])
        self.fc2 = nn.Linear(cfg.conv_dims[-1], cfg.mlp_hidden)
        self.bn2 = nn.BatchNorm1d(cfg.mlp_hidden)
        self.fc3 = nn.Linear(cfg.mlp_hidden, cfg.n_out)
        self.drop = nn.Dropout(cfg.dropout)

    def forward_with_scores(self, x: Tensor, adj: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits (B, n_out) and each R-pool's node scores ``sigmoid(s)`` (B, N_layer);
        the first layer's are in ROI order."""
        _check_matrices(x, self.cfg.n_rois, "BrainGNN")
        _check_matrices(adj, self.cfg.n_rois, "BrainGNN (adjacency)")
        b, n, _ = x.shape
        roi = torch.arange(n, device=x.device).expand(b, n)
        h = x
        readouts: list[Tensor] = []
        scores: list[Tensor] = []
        for i, (conv, pool) in enumerate(zip(self.convs, self.pools, strict=True)):
            if i > 0:
                eye = torch.eye(adj.shape[1], dtype=adj.dtype, device=adj.device)
                a = adj + eye
                adj = (a @ a) * (1 - eye)
            h = conv(h, adj, roi)
            h, adj, roi, s = pool(h, adj, roi)
            scores.append(s)
            readouts += [h.max(dim=1).values, h.mean(dim=1)]
        z = torch.cat(readouts, dim=1)
        z = self.drop(_batch_norm(self.bn1, F.relu(self.fc1(z))))
        z = self.drop(_batch_norm(self.bn2, F.relu(self.fc2(z))))
        return self.fc3(z), scores

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        return self.forward_with_scores(x, adj)[0]


def _batch_norm(bn: nn.BatchNorm1d, z: Tensor) -> Tensor:
    """``bn(z)``; a batch of one subject in training (a fold with one training subject)
    is normalised with the running statistics, which it leaves unchanged (batch
    statistics of one sample are undefined)."""
    if bn.training and z.shape[0] == 1:
        return F.batch_norm(
            z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
    return bn(z)


def braingnn_regularisers(
    model: BrainGNN, scores: Sequence[Tensor], codes: Tensor | None, eps: float = 1e-10
) -> dict[str, Tensor]:
    """BrainGNN's regularisers (Li et al. 2021, Sec. 2.4).

    * ``unit``: ``sum_l (||p_l|| - 1)^2`` over the R-pool projections (Eq. 7).
    * ``topk``: ``sum_l`` of the TopK-pooling loss: the node scores sorted, minus the
      mean log of the top ``ratio`` fraction and of one minus the bottom fraction (Eq. 8;
      a ratio above 0.5 uses ``1 - ratio``), on every node's score before selection.
    * ``consistency``: group-level consistency of the first layer's scores (in ROI order)
      within each class: ``sum_c trace(S_c^T L_c S_c) / m_c^2`` with ``L_c`` the
      Laplacian of the complete graph on the class's ``m_c`` subjects (Eq. 9); zero
      without class codes (regression).
    """
    unit = sum(((pool.weight.norm() - 1.0) ** 2 for pool in model.pools), torch.tensor(0.0))
    ratio = model.cfg.pool_ratio
    ratio = 1.0 - ratio if ratio > 0.5 else ratio
    topk = torch.tensor(0.0)
    for s in scores:
        m = max(1, int(s.shape[1] * ratio))
        srt = s.sort(dim=1).values
        topk = topk - torch.log(srt[:, -m:] + eps).mean() - torch.log(1 - srt[:, :m] + eps).mean()
    consistency = torch.tensor(0.0)
    if codes is not None and scores:
        s1 = scores[0]
        for c in torch.unique(codes):
            sc = s1[codes == c]
            m = sc.shape[0]
            if m < 2:
                continue
            total = sc.sum(dim=0)
            consistency = consistency + (m * (sc * sc).sum() - (total * total).sum()) / m**2
    return {"unit": unit, "topk": topk, "consistency": consistency}


# --------------------------------------------------------------------------- BNT


@dataclass(frozen=True)
class BNTConfig:
    """Brain Network Transformer sizes (Kan et al. 2022; official defaults in brackets).

    Attributes
    ----------
    n_rois : int
        Nodes; also the node-feature width (the FC rows) and the attention width.
    n_out : int
    layers : int
        Transformer encoder layers before the readout ([2]).
    heads : int
        Attention heads ([4]; must divide ``n_rois``).
    ff_dim : int
        Feed-forward width ([1024]).
    dropout : float
        Of the transformer layers ([0.1], PyTorch's default there).
    clusters : int
        Orthonormal cluster centres of OCRead ([100]; at most ``n_rois``).
    encoder_hidden : int
        Width of OCRead's encoder MLP ([32]).
    reduced_dim : int
        Per-cluster width after the readout's reduction ([8]).
    hidden : sequence of int
        Fully connected layers before the output ([256, 32]).
    """

    n_rois: int
    n_out: int
    layers: int
    heads: int
    ff_dim: int
    dropout: float
    clusters: int
    encoder_hidden: int
    reduced_dim: int
    hidden: Sequence[int]


def orthonormal_rows(n: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` orthonormal vectors of length ``dim`` (rows), from a Gaussian by QR."""
    if n > dim:
        raise ValueError(f"cannot have {n} orthonormal vectors in {dim} dimensions")
    q, r = torch.linalg.qr(torch.randn(dim, n, generator=generator))
    return (q * torch.sign(torch.diagonal(r))[None, :]).T.contiguous()


class OCRead(nn.Module):
    """Orthonormal clustering readout (Kan et al. 2022, Sec. 3.3).

    A small MLP encodes the flattened node embeddings (as in the official
    ``TransPoolingEncoder``/``DEC``, Wayfear/BrainNetworkTransformer); each node is
    softly assigned to ``K`` fixed orthonormal centres ``c_k``:
    ``P_ik = softmax_k((z_i . c_k)^2 / ||c_k||)``, and the graph becomes the ``K`` cluster
    embeddings ``P^T Z``. Shapes: ``(B, N, D) -> (B, K, D)``.
    """

    def __init__(self, n_nodes: int, dim: int, clusters: int, hidden: int) -> None:
        super().__init__()
        flat = n_nodes * dim
        self.encoder = nn.Sequential(
            nn.Linear(flat, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, flat),
        )
        # frozen, as the official default (freeze_center: true)
        self.register_buffer("centres", orthonormal_rows(clusters, dim))

    def assignment(self, z: Tensor) -> Tensor:
        proj = (z @ self.centres.T) ** 2 / self.centres.norm(dim=1)
        return torch.softmax(proj, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        z = self.encoder(x.reshape(b, n * d)).reshape(b, n, d)
        return self.assignment(z).transpose(1, 2) @ z


class BrainNetworkTransformer(nn.Module):
    """Brain Network Transformer (Kan et al. 2022).

    Every ROI is a token whose features are its FC row (no positional encoding, the
    official default); ``layers`` transformer encoder layers (multi-head self-attention,
    post-norm, ReLU feed-forward); OCRead to ``clusters`` embeddings; a linear reduction
    to ``reduced_dim`` with leaky ReLU per cluster; flattened; an MLP with leaky ReLUs.
    Input ``(B, R, R)``; output ``(B, n_out)``.
    """

    def __init__(self, cfg: BNTConfig) -> None:
        super().__init__()
        if cfg.n_rois % cfg.heads:
            raise ValueError(f"BNT: heads ({cfg.heads}) must divide n_rois ({cfg.n_rois})")
        if cfg.clusters > cfg.n_rois:
            raise ValueError(
                f"BNT: clusters ({cfg.clusters}) must be at most n_rois ({cfg.n_rois}): the "
                "centres are orthonormal in the node-feature space"
            )
        self.cfg = cfg
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=cfg.n_rois,
                nhead=cfg.heads,
                dim_feedforward=cfg.ff_dim,
                dropout=cfg.dropout,
                batch_first=True,
            )
            for _ in range(cfg.layers)
        )
        self.readout = OCRead(cfg.n_rois, cfg.n_rois, cfg.clusters, cfg.encoder_hidden)
        self.reduce = nn.Linear(cfg.n_rois, cfg.reduced_dim)
        dims = [cfg.clusters * cfg.reduced_dim, *cfg.hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))
        self.out = nn.Linear(dims[-1], cfg.n_out)

    def forward(self, x: Tensor) -> Tensor:
        _check_matrices(x, self.cfg.n_rois, "BNT")
        h = x
        for layer in self.layers:
            h = layer(h)
        h = F.leaky_relu(self.reduce(self.readout(h))).flatten(1)
        for layer in self.hidden:
            h = F.leaky_relu(layer(h))
        return self.out(h)
