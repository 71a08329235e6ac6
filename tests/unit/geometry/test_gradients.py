"""Functional gradients: agreement with BrainSpace, Procrustes alignment, group FC, CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from brainharmony.geometry import gradients as gr
from brainharmony.geometry.surfaces import _brainspace_data
from brainharmony.pipelines import gradients as gradients_command


@pytest.fixture(scope="module")
def hcp_fc() -> np.ndarray:
    """BrainSpace's HCP group FC, Schaefer-400 (what load_group_fc('schaefer', 400) reads)."""
    path = _brainspace_data("matrices", "main_group", "schaefer_400_mean_connectivity_matrix.csv")
    return np.loadtxt(path, delimiter=",")


@pytest.fixture(scope="module")
def brainspace_gradients(hcp_fc):
    pytest.importorskip("brainspace")
    from brainspace.gradient import GradientMaps

    gm = GradientMaps(n_components=30, approach="dm", kernel="normalized_angle", random_state=0)
    gm.fit(hcp_fc)
    return gm.gradients_, gm.lambdas_


def test_agrees_with_brainspace_gradientmaps(hcp_fc, brainspace_gradients):
    ref, ref_lambdas = brainspace_gradients
    ours = gr.compute_gradients(hcp_fc, 30)
    assert ours.gradients.shape == (400, 30)
    # component by component: same sign convention, correlation ~1
    corr = np.array([np.corrcoef(ours.gradients[:, i], ref[:, i])[0, 1] for i in range(30)])
    assert corr.min() > 0.9995, corr
    np.testing.assert_allclose(ours.lambdas, ref_lambdas, rtol=5e-3)
    # as a whole, up to rotation: Procrustes residual well under 1 %
    aligned, rot = gr.procrustes(ours.gradients, ref)
    assert np.linalg.norm(aligned - ref) / np.linalg.norm(ref) < 0.01
    np.testing.assert_allclose(rot @ rot.T, np.eye(30), atol=1e-10)


def test_disagrees_when_the_recipe_changes(hcp_fc, brainspace_gradients):
    """The comparison can fail: a plain cosine kernel without sparsification differs."""
    ref, _ = brainspace_gradients
    other = gr.compute_gradients(hcp_fc, 30, kernel="cosine", n_keep=400, alpha=1.0)
    corr = [abs(np.corrcoef(other.gradients[:, i], ref[:, i])[0, 1]) for i in range(5)]
    assert min(corr) < 0.99


def test_sparsify_rows_counts(hcp_fc):
    # BrainSpace's arithmetic: int(400 * (1 - 0.9)) == 39
    kept = (gr.sparsify_rows(hcp_fc) != 0).sum(axis=1)
    assert (kept == 39).all()
    assert ((gr.sparsify_rows(hcp_fc, n_keep=40) != 0).sum(axis=1) == 40).all()
    x = np.array([[1.0, 5.0, 3.0], [2.0, 0.5, 9.0], [4.0, 4.0, 1.0]])
    np.testing.assert_array_equal(gr.sparsify_rows(x, n_keep=1), [[0, 5, 0], [0, 0, 9], [4, 0, 0]])


def test_two_block_fc_first_gradient_separates_blocks():
    rng = np.random.default_rng(0)
    n = 40
    block = np.repeat([0, 1], n // 2)
    fc = np.where(block[:, None] == block[None, :], 0.6, 0.05) + 0.02 * rng.standard_normal((n, n))
    fc = (fc + fc.T) / 2
    np.fill_diagonal(fc, 1.0)
    g = gr.compute_gradients(fc, 3, n_keep=10).gradients
    first = g[:, 0]
    assert np.all(np.sign(first[block == 0]) == np.sign(first[block == 0][0]))
    assert np.sign(first[block == 0][0]) != np.sign(first[block == 1][0])
    assert g[np.abs(g[:, 0]).argmax(), 0] > 0  # sign convention


def test_procrustes_recovers_rotation():
    rng = np.random.default_rng(1)
    g = rng.standard_normal((100, 5))
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    aligned, rot = gr.procrustes(g @ q, g)
    np.testing.assert_allclose(aligned, g, atol=1e-10)
    np.testing.assert_allclose(rot, q.T, atol=1e-10)
    sets = [g @ np.linalg.qr(rng.standard_normal((5, 5)))[0] for _ in range(3)]
    out, ref = gr.generalized_procrustes(sets, reference=g)
    for a in out:
        np.testing.assert_allclose(a, g, atol=1e-8)
    np.testing.assert_allclose(ref, g, atol=1e-8)
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        gr.procrustes(g, g[:, :3])


def test_mean_connectivity():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((200, 6))
    r = np.corrcoef(a, rowvar=False)
    np.testing.assert_allclose(gr.mean_connectivity([a, a]), r, atol=1e-12)
    b = rng.standard_normal((150, 6))
    z = (
        np.arctanh(np.clip(r, -0.9999999, 0.9999999))
        + np.arctanh(np.clip(np.corrcoef(b, rowvar=False), -0.9999999, 0.9999999))
    ) / 2
    expected = np.tanh(z)
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_allclose(gr.mean_connectivity([a, b]), expected, atol=1e-12)
    a[:, 2] = 1.0
    with pytest.raises(ValueError, match=r"ROIs \[2\] are constant"):
        gr.mean_connectivity([a])
    with pytest.raises(ValueError, match="no series"):
        gr.mean_connectivity([])


def test_errors():
    with pytest.raises(ValueError, match="square"):
        gr.affinity(np.ones((3, 4)))
    bad = np.eye(5)
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gr.affinity(bad)
    with pytest.raises(ValueError, match="n_components"):
        gr.diffusion_map(np.ones((5, 5)), 4)
    with pytest.raises(ValueError, match="kernel"):
        gr.affinity(np.eye(5), kernel="gaussian")  # type: ignore[arg-type]


def test_cli_from_fc_with_reference(tmp_path, hcp_fc):
    fc_path = tmp_path / "fc.npy"
    np.save(fc_path, hcp_fc)
    ref = gr.compute_gradients(hcp_fc, 10).gradients
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((10, 10)))
    ref_table = pd.DataFrame(ref @ q, index=[f"ROI_{i}" for i in range(1, 401)])
    ref_path = tmp_path / "ref.tsv"
    ref_table.to_csv(ref_path, sep="\t")
    parser = argparse.ArgumentParser()
    gradients_command.add_arguments(parser)
    out = tmp_path / "gradients.tsv"
    args = parser.parse_args(
        [
            "--fc",
            str(fc_path),
            "--out",
            str(out),
            "--n-components",
            "10",
            "--reference",
            str(ref_path),
        ]
    )
    assert gradients_command.run(args) == 0
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns[:2]) == ["roi", "gradient_1"]
    np.testing.assert_allclose(table.iloc[:, 1:].to_numpy(), ref @ q, atol=1e-8)
    side = json.loads(out.with_suffix(".json").read_text())
    assert len(side["Lambdas"]) == 10
    assert side["Parameters"]["sparsity"] == 0.9


def test_cli_from_series(tmp_path):
    rng = np.random.default_rng(4)
    paths = []
    for i in range(3):
        p = tmp_path / f"sub-{i}_timeseries.tsv"
        pd.DataFrame(rng.standard_normal((80, 12)), columns=[f"R{j}" for j in range(12)]).to_csv(
            p, sep="\t", index=False
        )
        paths.append(str(p))
    parser = argparse.ArgumentParser()
    gradients_command.add_arguments(parser)
    out = tmp_path / "g.tsv"
    args = parser.parse_args(
        [
            "--series",
            *paths,
            "--out",
            str(out),
            "--n-components",
            "3",
            "--n-keep",
            "4",
            "--out-fc",
            str(tmp_path / "fc.npy"),
        ]
    )
    assert gradients_command.run(args) == 0
    table = pd.read_csv(out, sep="\t")
    assert table["roi"].tolist() == [f"R{j}" for j in range(12)]
    assert np.load(tmp_path / "fc.npy").shape == (12, 12)


def test_mean_connectivity_skips_censored_rows_and_missing_rois():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((100, 5))
    b = rng.standard_normal((100, 5))
    a_nan = a.copy()
    a_nan[[10, 11, 12]] = np.nan  # censored volumes
    b_nan = b.copy()
    b_nan[:, 4] = np.nan  # ROI 4 missing in series b
    fc = gr.mean_connectivity([a_nan, b_nan])
    za = np.arctanh(np.clip(np.corrcoef(np.delete(a, [10, 11, 12], axis=0), rowvar=False),
                            -1 + 1e-7, 1 - 1e-7))  # fmt: skip
    zb = np.arctanh(np.clip(np.corrcoef(b[:, :4], rowvar=False), -1 + 1e-7, 1 - 1e-7))
    np.testing.assert_allclose(fc[:4, :4], np.tanh((za[:4, :4] + zb) / 2) * (1 - np.eye(4))
                               + np.eye(4), atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(fc[4, :4], np.tanh(za[4, :4]), atol=1e-12)
    with pytest.raises(ValueError, match=r"ROIs \[4\] have no data"):
        gr.mean_connectivity([b_nan])
