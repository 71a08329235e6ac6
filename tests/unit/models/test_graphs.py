"""The graph baselines' building blocks against slow references and by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brainharmony.models.graphs import (
    BNTConfig,
    BrainGNN,
    BrainGNNConfig,
    BrainNetCNN,
    BrainNetCNNConfig,
    BrainNetworkTransformer,
    EdgeToEdge,
    EdgeToNode,
    OCRead,
    RPool,
    braingnn_regularisers,
    orthonormal_rows,
    sparsify_positive,
)

R = 12


def fc_batch(b: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 40, R, generator=g)
    x = x - x.mean(dim=1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True)
    return x.transpose(1, 2) @ x


def test_edge_filters_equal_their_convolution_form():
    torch.manual_seed(0)
    e2e = EdgeToEdge(3, 4, R)
    x = torch.randn(2, 3, R, R)
    rows = F.conv2d(x, e2e.row[:, :, None, :])  # (B, 4, R, 1): 1 x R kernel
    cols = F.conv2d(x, e2e.col[:, :, :, None])  # (B, 4, 1, R): R x 1 kernel
    ref = rows + cols + e2e.bias[None, :, None, None]
    torch.testing.assert_close(e2e(x), ref)
    e2n = EdgeToNode(3, 4, R)
    ref = F.conv2d(x, e2n.weight[:, :, None, :], e2n.bias)[..., 0]
    torch.testing.assert_close(e2n(x), ref)


def test_output_shapes():
    torch.manual_seed(0)
    x = fc_batch()
    cnn = BrainNetCNN(BrainNetCNNConfig(R, 3, (4, 4), 8, 16, (8,), 0.5, 0.33))
    gnn = BrainGNN(BrainGNNConfig(R, 3, (8, 8), 4, 0.5, 16, 0.5))
    bnt = BrainNetworkTransformer(BNTConfig(R, 1, 2, 4, 16, 0.1, 6, 8, 4, (16,)))
    assert cnn(x).shape == (5, 3)
    out, scores = gnn.forward_with_scores(x, sparsify_positive(x, 0.3))
    assert out.shape == (5, 3) and [s.shape for s in scores] == [(5, R), (5, R // 2)]
    assert bnt(x).shape == (5, 1)
    with pytest.raises(ValueError, match=r"BNT: expected connectivity matrices of shape"):
        bnt(x[:, :, :5])
    with pytest.raises(ValueError, match="clusters"):
        BrainNetworkTransformer(BNTConfig(R, 1, 1, 4, 16, 0.1, R + 1, 8, 4, (16,)))


def test_sparsify_keeps_the_strongest_positive_edges():
    x = fc_batch(3)
    a = sparsify_positive(x, 0.2)
    iu = torch.triu_indices(R, R, 1)
    k = round(0.2 * iu.shape[1])
    for i in range(3):
        assert torch.equal(a[i], a[i].T) and torch.all(torch.diagonal(a[i]) == 0)
        upper = x[i][iu[0], iu[1]]
        kept = a[i][iu[0], iu[1]] > 0
        assert int(kept.sum()) == min(k, int((upper > 0).sum()))
        assert upper[kept].min() >= upper[~kept].max()
    # all negative: no edge
    assert torch.all(sparsify_positive(-x.abs() - 0.1, 0.5) == 0)


def test_rpool_keeps_the_top_scoring_nodes_gated():
    torch.manual_seed(0)
    pool = RPool(4, 0.5)
    x = torch.randn(2, 7, 4)
    adj = torch.rand(2, 7, 7)
    roi = torch.arange(7).expand(2, 7)
    xp, ap, rp, s = pool(x, adj, roi)
    k = math.ceil(0.5 * 7)
    raw = (x @ pool.weight) / pool.weight.norm()
    for b in range(2):
        top = raw[b].topk(k).indices
        assert torch.equal(rp[b], top)
        torch.testing.assert_close(xp[b], x[b, top] * torch.sigmoid(raw[b, top])[:, None])
        torch.testing.assert_close(ap[b], adj[b][top][:, top])
    torch.testing.assert_close(s, torch.sigmoid(raw))


def test_regularisers_by_hand():
    torch.manual_seed(0)
    gnn = BrainGNN(BrainGNNConfig(R, 2, (4,), 2, 0.5, 8, 0.0))
    with torch.no_grad():
        gnn.pools[0].weight.copy_(torch.tensor([3.0, 0.0, 4.0, 0.0]))  # norm 5
    s = torch.tensor([[0.9, 0.1, 0.8, 0.2], [0.7, 0.3, 0.6, 0.4], [0.5, 0.5, 0.5, 0.5]])
    codes = torch.tensor([0, 0, 1])
    with torch.no_grad():
        reg = braingnn_regularisers(gnn, [s], codes, eps=0.0)
    assert float(reg["unit"]) == pytest.approx(16.0)
    # ratio 0.5 of 4 nodes: the top two -log s, the bottom two -log(1 - s), averaged
    top = -torch.log(torch.tensor([[0.8, 0.9], [0.6, 0.7], [0.5, 0.5]])).mean()
    bottom = -torch.log(1 - torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.5]])).mean()
    assert float(reg["topk"]) == pytest.approx(float(top + bottom), rel=1e-6)
    # class 0: two subjects, trace(S^T L S) = ||s1 - s2||^2, over m^2 = 4 (class 1 alone: 0)
    assert float(reg["consistency"]) == pytest.approx(float(((s[0] - s[1]) ** 2).sum() / 4))
    assert float(braingnn_regularisers(gnn, [s], None)["consistency"]) == 0.0


def test_ocread_centres_are_orthonormal_and_assignments_sum_to_one():
    c = orthonormal_rows(5, 9, torch.Generator().manual_seed(0))
    torch.testing.assert_close(c @ c.T, torch.eye(5), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    read = OCRead(6, 9, 5, 8)
    torch.testing.assert_close(read.centres @ read.centres.T, torch.eye(5), atol=1e-5, rtol=0)
    z = torch.randn(2, 6, 9)
    p = read.assignment(z)
    torch.testing.assert_close(p.sum(dim=-1), torch.ones(2, 6))
    assert read(z).shape == (2, 5, 9)
    assert "centres" not in dict(read.named_parameters())  # frozen
    with pytest.raises(ValueError, match="orthonormal"):
        orthonormal_rows(10, 9)
