"""Position embeddings: sin-cos tables, ROI tables on disk, the ROI x time embedding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainharmony.io import InputDataError
from brainharmony.models.posemb import (
    RoiTimePosEmbed,
    read_roi_table,
    sincos_1d,
    sincos_nd,
    split_even,
)


def test_sincos_1d_formula() -> None:
    emb = sincos_1d(torch.arange(5), 8)
    assert emb.shape == (5, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # channel i uses frequency 10000 ** (-i / 4)
    p, i = 3, 2
    w = 10000.0 ** (-i / 4)
    assert emb[p, i].item() == pytest.approx(math.sin(p * w), abs=1e-6)
    assert emb[p, 4 + i].item() == pytest.approx(math.cos(p * w), abs=1e-6)
    with pytest.raises(ValueError, match="even"):
        sincos_1d([0, 1], 7)


def test_sincos_nd_axes_and_split() -> None:
    assert split_even(32, 3) == [12, 10, 10]
    emb = sincos_nd((2, 3, 4), 32)
    assert emb.shape == (24, 32)
    # Row (ix*3 + iy)*4 + iz: the x part depends on ix only.
    torch.testing.assert_close(emb[(1 * 3 + 2) * 4 + 3, :12], sincos_1d([1], 12)[0])
    torch.testing.assert_close(emb[(1 * 3 + 2) * 4 + 3, 22:], sincos_1d([3], 10)[0])


def _geometry_tables(tmp_path: Path, n_rois: int = 10) -> tuple[Path, Path]:
    """Tables in the layout the geometry stage writes (roi column, then features)."""
    from brainharmony.geometry.harmonics import write_table

    rng = np.random.default_rng(0)
    names = pd.Index([f"7Networks_LH_Vis_{i}" for i in range(n_rois)], name="roi")
    harm = pd.DataFrame(
        rng.normal(size=(n_rois, 6)) * 0.004, index=names, columns=[f"mode_{i}" for i in range(6)]
    )
    h_path = write_table(harm, tmp_path / "harmonics.tsv")
    grads = pd.DataFrame(rng.normal(size=(n_rois, 4)), columns=[f"gradient_{i}" for i in range(4)])
    grads.insert(0, "roi", list(names))
    g_path = tmp_path / "gradients.tsv"
    grads.to_csv(g_path, sep="\t", index=False)
    return h_path, g_path


def test_read_roi_table_formats(tmp_path: Path) -> None:
    h_path, g_path = _geometry_tables(tmp_path)
    harm = read_roi_table(h_path, n_columns=4, n_rois=10)
    assert harm.shape == (10, 4)
    expected = pd.read_csv(h_path, sep="\t", index_col=0).to_numpy()[:, :4]
    np.testing.assert_allclose(harm, expected)
    assert read_roi_table(g_path).shape == (10, 4)
    # A TSV header whose feature columns are numbers is still a header.
    numeric = pd.DataFrame(np.ones((10, 3)))
    numeric.insert(0, "roi", [f"R{i}" for i in range(10)])
    numeric.to_csv(tmp_path / "numeric.tsv", sep="\t", index=False)
    assert read_roi_table(tmp_path / "numeric.tsv", n_rois=10).shape == (10, 3)
    # The official CSVs: header + ROI_ index; and a headerless numeric matrix.
    values = np.arange(20, dtype=float).reshape(5, 4) / 7
    official = pd.DataFrame(values, index=[f"ROI_{i}" for i in range(1, 6)])
    official.columns = [f"Mode_{i}" for i in range(1, 5)]
    official.to_csv(tmp_path / "eig.csv")
    np.testing.assert_allclose(read_roi_table(tmp_path / "eig.csv"), values)
    np.savetxt(tmp_path / "grad.csv", values, delimiter=",")
    np.testing.assert_allclose(read_roi_table(tmp_path / "grad.csv"), values)
    np.save(tmp_path / "t.npy", values)
    np.testing.assert_allclose(read_roi_table(tmp_path / "t.npy", n_columns=2), values[:, :2])


def test_read_roi_table_errors(tmp_path: Path) -> None:
    h_path, _ = _geometry_tables(tmp_path)
    with pytest.raises(InputDataError, match="not found"):
        read_roi_table(tmp_path / "missing.tsv")
    with pytest.raises(InputDataError, match="6 columns; 8 were asked"):
        read_roi_table(h_path, n_columns=8)
    with pytest.raises(InputDataError, match="10 ROI rows; the model expects 400"):
        read_roi_table(h_path, n_rois=400)
    bad = tmp_path / "nan.tsv"
    bad.write_text("roi\tmode_1\nA\t0.5\nB\tnan\n")
    with pytest.raises(InputDataError, match="non-finite value at row 2"):
        read_roi_table(bad)
    bad.write_text("roi\tmode_1\nA\t0.5\nB\toops\n")
    with pytest.raises(InputDataError, match="non-numeric"):
        read_roi_table(bad)


def _tables(n_rois: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(n_rois, 5)) * 0.003, rng.normal(size=(n_rois, 3))


def test_roi_time_embedding_layout() -> None:
    harm, grad = _tables()
    pos = RoiTimePosEmbed(16, 6, 4, harmonics=harm, gradients=grad)
    table = pos()
    assert table.shape == (6, 4, 16)
    flat = table.reshape(24, 16)  # ROI-major: token roi * P + t
    time = sincos_1d(torch.arange(4), 8)
    for roi in range(6):
        for t in range(4):
            torch.testing.assert_close(flat[roi * 4 + t, :8], time[t])
            torch.testing.assert_close(flat[roi * 4 + t, 8:], flat[roi * 4, 8:])
    # The ROI part is the mean of the two projections of the RMS-scaled tables.
    h = torch.as_tensor(harm / np.sqrt(np.mean(harm**2)), dtype=torch.float32)
    g = torch.as_tensor(grad / np.sqrt(np.mean(grad**2)), dtype=torch.float32)
    expected = (pos.proj["harmonics"](h) + pos.proj["gradients"](g)) / 2
    torch.testing.assert_close(table[:, 0, 8:], expected)
    # Gradients reach both projections.
    table.sum().backward()
    assert pos.proj["harmonics"].weight.grad is not None


def test_ablations_and_sum_mode() -> None:
    harm, grad = _tables()
    no_h = RoiTimePosEmbed(16, 6, 4, gradients=grad, use_harmonics=False)
    assert no_h.sources == ("gradients",)
    assert "harmonics" not in dict(no_h.named_buffers())
    learned = RoiTimePosEmbed(16, 6, 4, use_harmonics=False, use_gradients=False)
    assert learned.roi_table is not None and learned().shape == (6, 4, 16)
    summed = RoiTimePosEmbed(16, 6, 4, harmonics=harm, gradients=grad, combine="sum")
    out = summed()
    torch.testing.assert_close(out[1, 2] - summed.roi_embedding()[1], sincos_1d([2], 16)[0])
    with pytest.raises(ValueError, match="no harmonics table"):
        RoiTimePosEmbed(16, 6, 4, gradients=grad)
    with pytest.raises(ValueError, match=r"shape \(5, 5\)"):
        RoiTimePosEmbed(16, 6, 4, harmonics=harm[:5], gradients=grad)


def test_placeholder_tables_load_from_state() -> None:
    harm, grad = _tables()
    trained = RoiTimePosEmbed(16, 6, 4, harmonics=harm, gradients=grad)
    rebuilt = RoiTimePosEmbed(16, 6, 4, placeholder_shapes=(5, 3))
    assert float(rebuilt.harmonics.abs().sum()) == 0.0
    rebuilt.load_state_dict(trained.state_dict())
    torch.testing.assert_close(rebuilt(), trained())
