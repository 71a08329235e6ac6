"""RWMoE: graphs, transition matrices, diffusion features, gates, balancing, export."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from brainharmony.models.rwmoe import (
    RWMoE,
    correlation_affinity,
    diffusion_features,
    expert_weight_table,
    load_balancing_loss,
    sparsify_affinity,
    token_affinity,
    transition_matrix,
    window_assignment,
    window_dfc_affinity,
    write_expert_weights,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_graph(b: int = 3, n: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(b, n, n, generator=g, dtype=torch.float64) * 2 - 1
    s = (s + s.transpose(1, 2)) / 2
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, -2:] = False  # padded nodes
    return s, valid


def test_transition_matrix_is_row_stochastic_and_never_reaches_invalid_nodes() -> None:
    s, valid = random_graph()
    a = sparsify_affinity(s, valid, threshold=0.1, top_k=3)
    assert (a >= 0).all() and (torch.diagonal(a, dim1=1, dim2=2) == 0).all()
    assert ((a > 0).sum(-1) <= 3).all()
    assert (a[s.float() <= 0.1] == 0).all()
    # An isolated node: no edge left after the threshold.
    a[0, 4, :] = 0
    a[0, :, 4] = 0
    p = transition_matrix(a, valid)
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 9), rtol=0, atol=1e-6)
    assert (p >= 0).all()
    assert p[0, 4, 4] == 1 and p[1, -1, -1] == 1  # self-loops of isolated / invalid nodes
    assert (p[1][valid[1]][:, ~valid[1]] == 0).all()  # no walk from a valid node leaves them
    with pytest.raises(ValueError, match="negative"):
        transition_matrix(s)


def _reference_graph(s, valid, threshold, top_k):
    """sparsify_affinity + transition_matrix written plainly with torch.topk / where."""
    a = torch.where(s > threshold, s, torch.zeros_like(s)).float()
    a = a.masked_fill(torch.eye(a.shape[-1], dtype=torch.bool), 0.0)
    pair = (valid[:, :, None] & valid[:, None, :]).float()
    a = a * pair
    if top_k is not None and top_k < a.shape[-1]:
        values, index = a.topk(top_k, dim=-1)
        a = torch.zeros_like(a).scatter_(-1, index, values)
    deg = (a * pair).sum(-1, keepdim=True)
    eye = torch.eye(a.shape[-1]).expand_as(a)
    return a, torch.where(deg > 0, a * pair / deg.clamp(min=torch.finfo(a.dtype).tiny), eye)


@pytest.mark.parametrize("seed", range(6))
def test_graph_equals_a_topk_reference_exactly(seed: int) -> None:
    # the fast path (np.partition, in-place edits) against torch.topk, bit for bit: ties
    # (duplicated and rounded series), invalid nodes, isolated nodes, k near n
    g = torch.Generator().manual_seed(seed)
    b, t, n = 3, 12, 40
    x = torch.randn(b, t, n, generator=g)
    x[:, :, 1] = x[:, :, 0]  # a duplicated ROI: tied correlations
    if seed % 2:
        x = (x * 2).round()  # coarse values: many ties
    frames = torch.ones(b, t, dtype=torch.bool)
    rois = torch.ones(b, n, dtype=torch.bool)
    if seed % 3 == 0:
        rois[1, -3:] = False
    s = correlation_affinity(x, frames, rois)
    for threshold in (0.0, 0.2, 0.9):
        for top_k in (None, 1, 5, n - 1, n + 3):
            a_ref, p_ref = _reference_graph(s, rois, threshold, top_k)
            a = sparsify_affinity(s, rois, threshold, top_k)
            assert torch.equal(a, a_ref), (threshold, top_k)
            assert torch.equal(transition_matrix(a, rois), p_ref), (threshold, top_k)
    bad = s.clone()
    bad[0, 2, 3] = float("nan")
    bad[2, 4, 5] = float("inf")
    a_ref, _ = _reference_graph(bad, rois, 0.0, 5)
    a = sparsify_affinity(bad, rois, 0.0, 5)
    assert torch.equal(a.isnan(), a_ref.isnan())
    assert torch.equal(a.nan_to_num(0.5), a_ref.nan_to_num(0.5))


@pytest.mark.parametrize("walk", ["power", "lazy", "ppr"])
def test_diffusion_features_match_a_dense_reference(walk: str) -> None:
    s, valid = random_graph(seed=1)
    p = transition_matrix(sparsify_affinity(s, valid), valid).double()
    h = torch.randn(3, 9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    steps, alpha = 4, 0.2
    got = diffusion_features(p, h, steps=steps, walk=walk, alpha=alpha)
    eye = torch.eye(9, dtype=torch.float64)
    if walk == "ppr":
        # Personalised PageRank as its power series alpha * sum_k (1 - alpha)^k P^k.
        pi = sum(alpha * (1 - alpha) ** k * torch.linalg.matrix_power(p, k) for k in range(400))
        want = torch.cat([h, pi @ h], dim=-1)
    else:
        q = 0.5 * (eye + p) if walk == "lazy" else p
        want = torch.cat([torch.linalg.matrix_power(q, k) @ h for k in range(steps + 1)], dim=-1)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_correlation_affinity_is_pearson_over_valid_frames() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 6, generator=g)
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[0, 30:] = False
    valid[1, 5:8] = False
    roi_mask = torch.ones(2, 6, dtype=torch.bool)
    roi_mask[1, 2] = False
    x = torch.where(valid[:, :, None] & roi_mask[:, None, :], x, 0.0)
    fc = correlation_affinity(x, valid, roi_mask)
    for i in range(2):
        keep = roi_mask[i].numpy()
        want = np.corrcoef(x[i][valid[i]].numpy()[:, keep].T)
        np.fill_diagonal(want, 0)
        np.testing.assert_allclose(fc[i].numpy()[np.ix_(keep, keep)], want, atol=1e-5)
    assert (fc[1, 2] == 0).all() and (fc[1, :, 2] == 0).all()


def test_window_assignment_and_dfc_affinity_match_a_dense_reference() -> None:
    g = torch.Generator().manual_seed(4)
    b, t, r = 2, 60, 5
    x = torch.randn(b, t, r, generator=g)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[0, 45:] = False
    valid[1, 10] = False
    tr = torch.tensor([1.0, 2.0])
    x = torch.where(valid[:, :, None], x, 0.0)
    assign = window_assignment(valid, tr, 12.0)
    # sample 1: 60 frames at 2 s = 120 s -> 10 windows; sample 0 has 45 valid frames.
    assert assign.shape == (b, t, 10)
    torch.testing.assert_close(assign.sum(-1), valid.float())
    assert assign[0, 11, 0] == 1 and assign[0, 12, 1] == 1 and assign[1, 6, 1] == 1
    sim = window_dfc_affinity(x, assign).double()
    for i in range(b):
        k_of = assign[i].argmax(-1)
        mats = {}
        for k in range(assign.shape[-1]):
            frames = x[i][(k_of == k) & valid[i]].double().numpy()
            if len(frames) >= 2:
                c = np.corrcoef(frames.T)
                mats[k] = c[~np.eye(r, dtype=bool)]
        for k in range(assign.shape[-1]):
            for m in range(assign.shape[-1]):
                if k in mats and m in mats:
                    want = mats[k] @ mats[m] / np.linalg.norm(mats[k]) / np.linalg.norm(mats[m])
                    assert abs(float(sim[i, k, m]) - want) < 1e-4
                else:
                    assert sim[i, k, m] == 0
    # Trailing padding adds no window.
    padded = torch.cat([valid, torch.zeros(b, 20, dtype=torch.bool)], dim=1)
    assert window_assignment(padded, tr, 12.0).shape[-1] == 10


def test_gates_sum_to_one_and_padded_nodes_change_nothing() -> None:
    torch.manual_seed(5)
    s, valid = random_graph(n=10, seed=6)
    p = transition_matrix(sparsify_affinity(s, valid, top_k=4), valid)
    h = torch.randn(3, 10, 16)
    for walk, top_k in (("power", None), ("lazy", 2), ("ppr", None)):
        layer = RWMoE(16, 4, steps=2, walk=walk, top_k=top_k)  # type: ignore[arg-type]
        out, gates = layer(h, p, valid)
        assert out.shape == h.shape and gates.shape == (3, 10, 4)
        torch.testing.assert_close(gates.sum(-1), torch.ones(3, 10))
        if top_k is not None:
            assert ((gates > 0).sum(-1) == top_k).all()
        changed = h.clone()
        changed[~valid] = 1e3 * torch.randn(int((~valid).sum()), 16)
        out2, gates2 = layer(changed, p, valid)
        torch.testing.assert_close(out2[valid], out[valid])
        torch.testing.assert_close(gates2[valid], gates[valid])


def test_load_balancing_loss() -> None:
    e = 4
    uniform = torch.full((2, 6, e), 1.0 / e)
    assert float(load_balancing_loss(uniform)) == pytest.approx(1.0)
    collapsed = torch.zeros(2, 6, e)
    collapsed[..., 0] = 1
    assert float(load_balancing_loss(collapsed)) == pytest.approx(e)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[:, 3:] = False
    mixed = uniform.clone()
    mixed[:, 3:] = collapsed[:, 3:]  # invalid tokens do not count
    assert float(load_balancing_loss(mixed, valid)) == pytest.approx(1.0)
    logits = torch.randn(2, 6, e, requires_grad=True)
    load_balancing_loss(logits.softmax(-1), valid).backward()
    assert logits.grad is not None and logits.grad[:, :3].abs().sum() > 0
    assert (logits.grad[:, 3:] == 0).all()


def test_token_affinity_is_cosine_and_detached() -> None:
    h = torch.randn(2, 5, 8, requires_grad=True)
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[0, 4] = False
    sim = token_affinity(h, valid)
    assert not sim.requires_grad
    want = torch.nn.functional.cosine_similarity(h[1, :, None], h[1, None], dim=-1)
    torch.testing.assert_close(sim[1], want.detach())
    assert (sim[0, 4] == 0).all()


def test_expert_weight_table(tmp_path) -> None:
    g = torch.randn(3, 5, 4).softmax(-1)
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[0, 1] = False
    valid[:, 4] = False
    names = [f"7Networks_LH_Vis_{i}" for i in range(5)]
    table = expert_weight_table(g, valid, names)
    assert list(table.columns) == ["roi", "expert", "weight"]
    assert table.shape == (5 * 4, 3)
    assert table["roi"].tolist()[:5] == [names[0]] * 4 + [names[1]]
    sums = table.groupby("roi", sort=False)["weight"].sum(min_count=1)
    np.testing.assert_allclose(sums.iloc[:4].to_numpy(), 1.0, atol=1e-6)
    assert np.isnan(sums.iloc[4])  # valid in no subject
    roi1 = table.loc[table["roi"] == names[1], "weight"].to_numpy()
    np.testing.assert_allclose(roi1, g[1:, 1].double().mean(0).numpy(), atol=1e-6)
    single = expert_weight_table(g[0])
    assert single.shape == (20, 3) and single["roi"].iloc[-1] == "4"
    with pytest.raises(ValueError, match="ROI names"):
        expert_weight_table(g, valid, names[:3])

    out = write_expert_weights(tmp_path / "w.tsv", table, parameters={"graph": "subject"})
    back = pd.read_csv(out, sep="\t")
    assert back.shape == (20, 3)
    side = json.loads((tmp_path / "w.json").read_text())
    assert side["Step"] == "rwmoe-expert-weights"
