"""Embedding extraction round trip on tiny F, S and Harmonizer model folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from brainharmony.cli import main
from brainharmony.io import InputDataError, write_npy, write_tsv
from brainharmony.models.harmonizer_data import FusedDataset, read_token_file, read_token_index
from brainharmony.pipelines.embed import (
    embed_f,
    load_frozen,
    pair_sessions,
    read_features,
    roi_similarity,
    token_file_name,
)

N_ROIS = 12


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save_model(folder: Path, raw: dict[str, Any], seed: int) -> torch.nn.Module:
    """A model folder as the trainer writes it (config.json + model.safetensors)."""
    from brainharmony.models.registry import build_model
    from brainharmony.train.checkpoint import save_weights, write_model_config
    from brainharmony.train.config import config_from_mapping

    cfg = config_from_mapping(raw)
    torch.manual_seed(seed)
    model = build_model(cfg.kind, cfg.model)
    save_weights(folder / "model.safetensors", model)
    write_model_config(folder / "config.json", cfg, trained_steps=0)
    return model


def _tables(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    out = []
    for name, width in (("harmonics", 6), ("gradients", 3)):
        frame = pd.DataFrame(rng.normal(size=(N_ROIS, width)))
        frame.insert(0, "roi", [f"R{i}" for i in range(N_ROIS)])
        path = tmp_path / f"{name}.tsv"
        frame.to_csv(path, sep="\t", index=False)
        out.append(path)
    return out[0], out[1]


F_MODEL = {
    "n_rois": N_ROIS,
    "n_patches": 3,
    "dim": 16,
    "depth": 1,
    "heads": 2,
    "pred_dim": 16,
    "pred_depth": 1,
    "pred_heads": 2,
    "k_base": 8,
    "tau": 8.0,  # k = 4 at TR 2 s: 12 frames fill the grid
    "n_harmonics": 6,
    "n_gradients": 3,
}
S_MODEL = {
    "img_size": [8, 8, 8],
    "patch": 4,
    "dim": 8,
    "depth": 1,
    "heads": 2,
    "decoder_dim": 8,
    "decoder_depth": 1,
    "decoder_heads": 2,
}


def _data(tmp_path: Path) -> dict[str, Path]:
    """Series (TR 2 s) and volume shards in the packing layout, with pairing cases."""
    rng = np.random.default_rng(1)
    series = [  # subject, session, run, frames
        ("01", "1", "1", 12),
        ("01", "1", "2", 9),  # shorter run: the token file uses run 1
        ("01", "2", "1", 10),  # session 2 has no T1: falls back to session 1's
        ("02", "1", "1", 6),  # 6 frames: 1 full patch + 2 of 4 frames
        ("03", "1", "1", 12),  # no T1 at all: F features only
    ]
    frames = np.array([s[3] for s in series])
    offsets = np.concatenate([[0], np.cumsum(frames)[:-1]])
    write_npy(tmp_path / "series.npy", rng.normal(size=(frames.sum(), N_ROIS)).astype(np.float32))
    write_tsv(
        tmp_path / "series.tsv",
        pd.DataFrame(
            {
                "subject": [s[0] for s in series],
                "session": [s[1] for s in series],
                "run": [s[2] for s in series],
                "tr": 2.0,
                "frames": frames,
                "offset": offsets,
                "age": [30.0, 30.0, 31.0, 50.0, 70.0],
            }
        ),
    )
    write_npy(tmp_path / "vols.npy", rng.normal(size=(2, 8, 8, 8)).astype(np.float16))
    write_tsv(
        tmp_path / "vols.tsv",
        pd.DataFrame({"subject": ["01", "02"], "session": ["1", "1"], "offset": [0, 1]}),
    )
    return {k: tmp_path / f"{v}" for k, v in
            (("s_shard", "series.npy"), ("s_index", "series.tsv"),
             ("v_shard", "vols.npy"), ("v_index", "vols.tsv"))}  # fmt: skip


def test_pair_sessions_rules() -> None:
    series = pd.DataFrame(
        {
            "subject": ["a", "a", "a", "b"],
            "session": ["1", "1", "2", "n/a"],
            "run": ["2", "10", "1", "n/a"],
            "frames": [50, 50, 40, 30],
        }
    )
    vols = pd.DataFrame({"subject": ["a", "a"], "session": ["3", "2"]})
    pairs = pair_sessions(series, vols)
    assert pairs["series_row"].tolist() == [0, 2, 3]  # tie on frames: run 2 before run 10
    assert pairs["volume_row"].tolist() == [1, 1, -1]  # a/1 -> a's first session (2)
    assert pairs["s_session"].tolist() == ["2", "2", "n/a"]
    assert token_file_name("a", "n/a") == "sub-a_tokens.npz"
    assert token_file_name("a", "2") == "sub-a_ses-2_tokens.npz"


def test_embed_round_trip(tmp_path: Path) -> None:
    h, g = _tables(tmp_path)
    f_raw = {"name": "f", "kind": "bh_f", "model": {**F_MODEL, "harmonics": str(h),
             "gradients": str(g)}}  # fmt: skip
    f_model = _save_model(tmp_path / "f", f_raw, seed=0)
    s_model = _save_model(tmp_path / "s", {"name": "s", "kind": "bh_s", "model": S_MODEL}, 1)
    h.unlink()  # the tables travel inside the weights
    paths = _data(tmp_path)
    out = tmp_path / "emb"
    argv = [
        "embed", "encoders", "--f-model", str(tmp_path / "f"), "--s-model", str(tmp_path / "s"),
        "--series-shard", str(paths["s_shard"]), "--series-index", str(paths["s_index"]),
        "--volume-shard", str(paths["v_shard"]), "--volume-index", str(paths["v_index"]),
        "--tokens-dir", str(out / "tokens"), "--out-f", str(out / "bh_f" / "demo.npz"),
        "--out-s", str(out / "bh_s" / "demo.npz"), "--batch-size", "2", "--dtype", "float32",
        "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0

    index = read_token_index(out / "tokens" / "index.tsv")
    assert index["subject"].tolist() == ["01", "01", "02"]
    assert index["session"].tolist() == ["1", "2", "1"]
    assert index["f_run"].tolist() == ["1", "1", "1"]
    assert index["s_session"].tolist() == ["1", "1", "1"]
    assert index["age"].tolist() == [30.0, 31.0, 50.0]
    assert index["f_valid_tokens"].tolist() == [36, 24, 12]  # 3, 2 (10 of 12) and 1 patch

    # Token files hold exactly what the frozen encoders give for those items.
    f_loaded, _ = load_frozen(tmp_path / "f")
    first = read_token_file(out / "tokens" / "sub-01_ses-1_tokens.npz")
    x = torch.from_numpy(np.load(paths["s_shard"])[:12][None].copy())
    batch = {
        "x": x,
        "mask": torch.ones(1, 12, dtype=torch.bool),
        "roi_mask": torch.ones(1, N_ROIS, dtype=torch.bool),
        "tr": torch.tensor([2.0], dtype=torch.float64),
    }
    with torch.no_grad():
        tokens, valid = f_model.eval().encode_tokens(batch)
    assert valid.all()
    np.testing.assert_allclose(first["f_tokens"], tokens[0].numpy(), rtol=1e-5, atol=1e-6)
    assert first["f_valid"].all() and first["s_tokens"].shape == (8, 8)
    vol = torch.from_numpy(np.load(paths["v_shard"])[:1, None].astype(np.float32))
    with torch.no_grad():
        s_tokens, _ = s_model.eval().encode_tokens({"x": vol})
    np.testing.assert_allclose(first["s_tokens"], s_tokens[0].numpy(), rtol=1e-5, atol=1e-5)
    short = read_token_file(out / "tokens" / "sub-02_ses-1_tokens.npz")
    assert short["f_valid"].reshape(N_ROIS, 3).all(0).tolist() == [True, False, False]
    assert (short["f_tokens"][~short["f_valid"]] == 0).all()

    # Pooled F: per session, the mean over runs of encode(); every series subject is there.
    pooled = read_features(out / "bh_f" / "demo.npz")
    assert pooled["subject"].tolist() == ["01", "01", "02", "03"]
    assert pooled["session"].tolist() == ["1", "2", "1", "1"]
    assert pooled["features"].shape == (4, 16) and pooled["features"].dtype == np.float32
    data = np.load(paths["s_shard"])
    runs = []
    for start, n in ((0, 12), (12, 9)):
        item = {
            "x": torch.from_numpy(np.pad(data[start : start + n], ((0, 12 - n), (0, 0))))[None],
            "mask": (torch.arange(12) < n)[None],
            "roi_mask": torch.ones(1, N_ROIS, dtype=torch.bool),
            "tr": torch.tensor([2.0], dtype=torch.float64),
        }
        with torch.no_grad():
            runs.append(f_loaded.encode(item)[0].numpy())
    np.testing.assert_allclose(pooled["features"][0], np.mean(runs, axis=0), rtol=1e-5, atol=1e-6)
    s_pooled = read_features(out / "bh_s" / "demo.npz")
    assert s_pooled["subject"].tolist() == ["01", "02"] and s_pooled["features"].shape == (2, 8)
    assert (out / "bh_f" / "demo.json").is_file()

    # The ROI-similarity readout of the same token files, row for row.
    argv = ["embed", "roi-similarity", "--tokens-index", str(out / "tokens" / "index.tsv"),
            "--out", str(out / "bh_f_roisim" / "demo.npz")]  # fmt: skip
    assert main(argv) == 0
    sim = read_features(out / "bh_f_roisim" / "demo.npz")
    assert sim["subject"].tolist() == ["01", "01", "02"]
    assert sim["features"].shape == (3, N_ROIS * (N_ROIS - 1) // 2)
    np.testing.assert_allclose(
        sim["features"][0], roi_similarity(first["f_tokens"], first["f_valid"], N_ROIS)
    )

    # Stage 1/2: a Harmonizer over these tokens, then its pooled features.
    h_raw = {
        "name": "h",
        "kind": "harmonizer",
        "model": {"f_dim": 16, "s_dim": 8, "f_grid": [N_ROIS, 3], "s_grid": [2, 2, 2],
                  "dim": 16, "depth": 1, "heads": 2, "dec_dim": 16, "dec_depth": 1,
                  "dec_heads": 2, "n_hubs": 3},
    }  # fmt: skip
    harm = _save_model(tmp_path / "h", h_raw, seed=2)
    dataset = FusedDataset(out / "tokens" / "index.tsv", targets=["age"])
    fused = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    loss, _ = harm.forward_loss(fused)
    assert torch.isfinite(loss)
    argv = [
        "embed", "harmonizer", "--model", str(tmp_path / "h"),
        "--tokens-index", str(out / "tokens" / "index.tsv"),
        "--out", str(out / "harmonizer" / "demo.npz"), "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    feats = read_features(out / "harmonizer" / "demo.npz")
    assert feats["subject"].tolist() == ["01", "01", "02"]
    with torch.no_grad():
        expected = harm.eval().encode(fused).numpy()
    np.testing.assert_allclose(feats["features"], expected, rtol=1e-5, atol=1e-5)


def test_embed_rejects_wrong_kind(tmp_path: Path) -> None:
    _save_model(tmp_path / "s", {"name": "s", "kind": "bh_s", "model": S_MODEL}, 1)
    paths = _data(tmp_path)
    argv = [
        "embed", "encoders", "--f-model", str(tmp_path / "s"), "--s-model", str(tmp_path / "s"),
        "--series-shard", str(paths["s_shard"]), "--series-index", str(paths["s_index"]),
        "--volume-shard", str(paths["v_shard"]), "--volume-index", str(paths["v_index"]),
        "--tokens-dir", str(tmp_path / "t"), "--out-f", str(tmp_path / "f.npz"),
        "--out-s", str(tmp_path / "s.npz"), "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 2  # InputDataError: "is a 'bh_s' model; expected 'bh_f'"
    with pytest.raises(InputDataError, match="expected 'bh_f'"):
        from brainharmony.pipelines.embed import embed_encoders

        embed_encoders(
            f_model=tmp_path / "s",
            s_model=tmp_path / "s",
            series_shard=paths["s_shard"],
            series_index=paths["s_index"],
            volume_shard=paths["v_shard"],
            volume_index=paths["v_index"],
            tokens_dir=tmp_path / "t",
            out_f=tmp_path / "f.npz",
            out_s=tmp_path / "s.npz",
        )


def test_roi_similarity_is_fisher_z_of_roi_vector_correlations() -> None:
    rng = np.random.default_rng(0)
    n_rois, patches, dim = 6, 4, 5
    tokens = rng.standard_normal((n_rois * patches, dim))
    valid = np.ones(n_rois * patches, dtype=bool)
    grid = tokens.reshape(n_rois, patches, dim)
    grid[4] = 2.0 * grid[1] + 3.0  # ROI 4 is an affine copy of ROI 1: correlation 1
    feats = roi_similarity(tokens, valid, n_rois)
    upper = np.triu_indices(n_rois, k=1)
    corr = np.corrcoef(grid.reshape(n_rois, -1))
    expected = np.arctanh(np.clip(corr, -1 + 1e-7, 1 - 1e-7))[upper]
    np.testing.assert_allclose(feats, expected, rtol=1e-5)
    assert feats[list(zip(*upper, strict=True)).index((1, 4))] > 7  # arctanh(1 - 1e-7)

    # Padded time patches (invalid for every ROI) do not count, whatever they hold.
    valid_grid = valid.reshape(n_rois, patches).copy()
    valid_grid[:, 3] = False
    padded = tokens.copy().reshape(n_rois, patches, dim)
    padded[:, 3] = rng.standard_normal((n_rois, dim)) * 100
    got = roi_similarity(padded.reshape(-1, dim), valid_grid.ravel(), n_rois)
    corr3 = np.corrcoef(grid[:, :3].reshape(n_rois, -1))
    np.testing.assert_allclose(
        got, np.arctanh(np.clip(corr3, -1 + 1e-7, 1 - 1e-7))[upper], rtol=1e-5
    )
    # A ROI without any valid token: 0 for all its pairs; the others unchanged.
    valid_grid[2] = False
    got = roi_similarity(padded.reshape(-1, dim), valid_grid.ravel(), n_rois)
    pairs = list(zip(*upper, strict=True))
    with_2 = [i for i, (a, b) in enumerate(pairs) if 2 in (a, b)]
    assert (got[with_2] == 0).all()
    others = [i for i in range(len(pairs)) if i not in with_2]
    np.testing.assert_allclose(got[others], np.arctanh(np.clip(corr3, -1, 1 - 1e-7))[upper][others],
                               rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="ROIs x patches"):
        roi_similarity(tokens[:-1], valid[:-1], n_rois)


def test_roi_similarity_command_needs_the_token_grid(tmp_path: Path, capsys) -> None:
    from brainharmony.models.harmonizer_data import write_token_file

    folder = tmp_path / "tokens"
    rng = np.random.default_rng(1)
    write_token_file(
        folder / "sub-01_tokens.npz",
        f_tokens=rng.standard_normal((8, 3)),
        f_valid=np.ones(8, bool),
        s_tokens=rng.standard_normal((2, 3)),
    )
    (folder / "index.tsv").write_text("subject\tsession\tpath\n01\tn/a\tsub-01_tokens.npz\n")
    out = tmp_path / "sim.npz"
    argv = ["embed", "roi-similarity", "--tokens-index", str(folder / "index.tsv"),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "index.json" in err and "FGrid" in err and not out.exists()
    (folder / "index.json").write_text('{"FGrid": [4, 2]}')
    assert main(argv) == 0
    assert read_features(out)["features"].shape == (1, 6)


def test_embed_f_equals_the_f_features_of_embed_encoders(tmp_path: Path) -> None:
    """A dataset without T1w (kind parcellated): ``embed f`` writes the same pooled F
    features as ``embed encoders`` does with volumes, and no token files."""
    h, g = _tables(tmp_path)
    f_raw = {"name": "f", "kind": "bh_f", "model": {**F_MODEL, "harmonics": str(h),
             "gradients": str(g)}}  # fmt: skip
    _save_model(tmp_path / "f", f_raw, seed=0)
    _save_model(tmp_path / "s", {"name": "s", "kind": "bh_s", "model": S_MODEL}, 1)
    paths = _data(tmp_path)
    out = tmp_path / "emb"
    common = [
        "--f-model",
        str(tmp_path / "f"),
        "--series-shard",
        str(paths["s_shard"]),
        "--series-index",
        str(paths["s_index"]),
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    argv = ["embed", "encoders", *common, "--s-model", str(tmp_path / "s"),
            "--volume-shard", str(paths["v_shard"]), "--volume-index", str(paths["v_index"]),
            "--tokens-dir", str(out / "tokens"), "--out-f", str(out / "both.npz"),
            "--out-s", str(out / "s.npz")]  # fmt: skip
    assert main(argv) == 0
    assert main(["embed", "f", *common, "--out-f", str(out / "f_only" / "f.npz")]) == 0
    both, alone = read_features(out / "both.npz"), read_features(out / "f_only" / "f.npz")
    assert alone["subject"].tolist() == both["subject"].tolist() == ["01", "01", "02", "03"]
    assert alone["session"].tolist() == both["session"].tolist()
    np.testing.assert_allclose(alone["features"], both["features"], rtol=1e-6, atol=1e-7)
    assert sorted(p.name for p in (out / "f_only").iterdir()) == ["f.json", "f.npz"]
    with pytest.raises(InputDataError, match="is a 'bh_s' model; expected 'bh_f'"):
        embed_f(f_model=tmp_path / "s", series_shard=paths["s_shard"],
                series_index=paths["s_index"], out_f=out / "x.npz")  # fmt: skip


def test_embed_f_takes_a_brain_jepa_folder(tmp_path: Path) -> None:
    """``embed f`` on a Brain-JEPA folder (the ``brain_jepa`` variant): each series from
    its first ``n_patches * patch`` frames, features = ``encode`` (mean of the target
    encoder's tokens); the gradient table comes from the weights (the file may be gone)."""
    _, g = _tables(tmp_path)
    raw = {"name": "j", "kind": "brain_jepa", "model": {"n_rois": N_ROIS, "n_patches": 3,
           "patch": 4, "dim": 16, "depth": 1, "heads": 2, "pred_dim": 16, "pred_depth": 1,
           "pred_heads": 2, "gradients": str(g), "n_gradients": 3}}  # fmt: skip
    model = _save_model(tmp_path / "j", raw, seed=3).eval()
    g.unlink()
    paths = _data(tmp_path)
    out = tmp_path / "j.npz"
    argv = ["embed", "f", "--f-model", str(tmp_path / "j"), "--series-shard",
            str(paths["s_shard"]), "--series-index", str(paths["s_index"]), "--out-f",
            str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    got = read_features(out)
    assert got["subject"].tolist() == ["01", "01", "02", "03"]
    assert got["features"].shape == (4, 16)
    series = np.load(paths["s_shard"])
    index = pd.read_csv(paths["s_index"], sep="\t", dtype={"subject": str})
    row = index.index[index["subject"] == "03"][0]  # 12 frames: exactly the model's window
    x = series[int(index.loc[row, "offset"]) : int(index.loc[row, "offset"]) + 12]
    with torch.no_grad():
        want = model.encode(torch.from_numpy(x.astype(np.float32))[None]).numpy()[0]
    np.testing.assert_allclose(got["features"][3], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["features"][2], got["features"][3])


def test_embed_f_takes_a_brainlm_folder(tmp_path: Path) -> None:
    """``embed f`` on a BrainLM folder (the ``brainlm`` variant): each series from its
    first ``n_patches * patch`` frames, unmasked, features = ``encode`` (the CLS token);
    the parcel coordinates come from the weights (the table may be gone)."""
    xyz = tmp_path / "xyz.tsv"
    rng = np.random.default_rng(1)
    pd.DataFrame(rng.uniform(-60, 60, (N_ROIS, 3)), columns=["x", "y", "z"]).to_csv(
        xyz, sep="\t", index=False
    )
    raw = {"name": "lm", "kind": "brainlm", "model": {"n_rois": N_ROIS, "n_patches": 3,
           "patch": 4, "dim": 16, "depth": 1, "heads": 2, "dec_dim": 8, "dec_depth": 1,
           "dec_heads": 2, "coords": str(xyz), "coords_scale_mm": 100.0}}  # fmt: skip
    model = _save_model(tmp_path / "lm", raw, seed=4).eval()
    xyz.unlink()
    paths = _data(tmp_path)
    out = tmp_path / "lm.npz"
    argv = ["embed", "f", "--f-model", str(tmp_path / "lm"), "--series-shard",
            str(paths["s_shard"]), "--series-index", str(paths["s_index"]), "--out-f",
            str(out), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    got = read_features(out)
    assert got["subject"].tolist() == ["01", "01", "02", "03"]
    assert got["features"].shape == (4, 16)
    assert "BrainLM" in (tmp_path / "lm.json").read_text()
    series = np.load(paths["s_shard"])
    index = pd.read_csv(paths["s_index"], sep="\t", dtype={"subject": str})
    row = index.index[index["subject"] == "03"][0]  # 12 frames: exactly the model's window
    x = series[int(index.loc[row, "offset"]) : int(index.loc[row, "offset"]) + 12]
    with torch.no_grad():
        want = model.encode(torch.from_numpy(x.astype(np.float32))[None]).numpy()[0]
    np.testing.assert_allclose(got["features"][3], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["features"][2], got["features"][3])
