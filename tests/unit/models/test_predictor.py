"""The LMAE -> RWMoE -> SSM predictor: overfitting, padding, reloading, initialisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainharmony.io import InputDataError
from brainharmony.models.lmae import build as build_lmae
from brainharmony.models.predictor import (
    Predictor,
    PredictorConfig,
    build,
    export_expert_weights,
    write_gate_table,
)
from brainharmony.models.registry import build_model

R = 10
TINY: dict = {
    "target": "age",
    "n_rois": R,
    "encoder": {"dim": 32, "depth": 1, "heads": 4},
    "spatial": {"experts": 3, "steps": 2, "top_k_edges": 4},
    "temporal": {"experts": 2, "steps": 1, "window_s": 12.0},
    "ssm": {"depth": 1, "d_state": 8, "expand": 1},
}
LMAE_TINY = {"n_rois": R, "dim": 32, "depth": 1, "heads": 4, "decoder_dim": 32}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_batch(b: int = 6, t: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    """Series whose ROI coupling depends on the target, at mixed TRs, some padded."""
    g = torch.Generator().manual_seed(seed)
    age = torch.linspace(20, 80, b)
    src = torch.randn(b, t, 2, generator=g)
    strength = ((age - 50) / 30)[:, None, None]
    x = torch.randn(b, t, R, generator=g) + strength * src[:, :, :1]
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 30:] = False
    mask[2, 12:14] = False  # censored inside the series
    return {
        "x": x,
        "mask": mask,
        "roi_mask": torch.ones(b, R, dtype=torch.bool),
        "tr": torch.tensor([0.8, 2.0, 1.47, 0.735, 2.0, 1.0][:b], dtype=torch.float64),
        "age": age,
        "dx": (torch.arange(b) % 3).float(),
    }


def fit(model: Predictor, batch: dict, steps: int, lr: float = 3e-3) -> tuple[float, dict]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    first = None
    for _ in range(steps):
        loss, logs = model.forward_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = logs["task_loss"] if first is None else first
    return first, logs


def test_one_batch_overfit_regression() -> None:
    torch.manual_seed(0)
    model = build({**TINY, "loss": "mse"})
    batch = make_batch()
    first, logs = fit(model, batch, 60, lr=5e-3)
    assert logs["task_loss"] < 0.02 * first
    assert logs["mae"] < 2.0  # years, targets spread over 20-80
    model.eval()
    with torch.no_grad():
        pred = model.predict(batch)
    assert pred.shape == (6,)
    assert (pred - batch["age"]).abs().mean() < 2.0
    # target_norm "batch": set from the first batch and kept.
    assert float(model.target_loc) == pytest.approx(50.0)
    assert bool(model.target_ready)


def test_one_batch_overfit_classification() -> None:
    torch.manual_seed(1)
    model = build({**TINY, "target": "dx", "task": "classification", "n_classes": 3})
    batch = make_batch()
    first, logs = fit(model, batch, 50, lr=5e-3)
    assert logs["task_loss"] < 0.05 * first
    assert logs["accuracy"] == 1.0
    model.eval()
    with torch.no_grad():
        prob = model.predict(batch)
    assert prob.shape == (6, 3)
    torch.testing.assert_close(prob.sum(-1), torch.ones(6))
    assert torch.equal(prob.argmax(-1), batch["dx"].long())


def test_padded_frames_never_change_outputs() -> None:
    torch.manual_seed(2)
    model = build(TINY).eval()
    batch = make_batch()
    with torch.no_grad():
        pred = model.predict(batch)
        feats = model.encode(batch)
        gates, _ = model.spatial_gates(batch)
        # 1. Other values in padded and censored frames.
        noisy = dict(batch)
        noisy["x"] = torch.where(batch["mask"][:, :, None], batch["x"], 50 * torch.randn(6, 40, R))
        torch.testing.assert_close(model.predict(noisy), pred, atol=1e-5, rtol=1e-5)
        # 2. More trailing padding.
        longer = dict(batch)
        longer["x"] = torch.cat([batch["x"], torch.randn(6, 23, R)], dim=1)
        longer["mask"] = torch.cat([batch["mask"], torch.zeros(6, 23, dtype=torch.bool)], dim=1)
        torch.testing.assert_close(model.predict(longer), pred, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode(longer), feats, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.spatial_gates(longer)[0], gates, atol=1e-5, rtol=1e-5)
        # 3. A sample alone gives what it gives in the batch.
        one = {k: v[1:2] for k, v in batch.items()}
        torch.testing.assert_close(model.predict(one), pred[1:2], atol=1e-5, rtol=1e-5)
        tokens, valid = model.encode_tokens(longer)
    assert tokens.shape == (6, 63, 32) and torch.equal(valid, longer["mask"])
    assert (tokens[~valid] == 0).all()


def test_predict_with_gates_is_predict_and_spatial_gates(tmp_path: Path) -> None:
    torch.manual_seed(3)
    for cfg in (TINY, {**TINY, "task": "classification", "n_classes": 3, "loss": "cross_entropy"}):
        model = build(cfg).eval()
        batches = [make_batch(), make_batch(seed=1)]
        with torch.no_grad():
            outs = [model.predict_with_gates(b) for b in batches]
            for b, (pred, gates, mask) in zip(batches, outs, strict=True):
                assert torch.equal(pred, model.predict(b))
                want_gates, want_mask = model.spatial_gates(b)
                assert torch.equal(gates, want_gates) and torch.equal(mask, want_mask)
        # the table written from those gates is export_expert_weights' table
        a = write_gate_table(model, [o[1] for o in outs], [o[2] for o in outs], tmp_path / "a.tsv")
        b = export_expert_weights(model, batches, tmp_path / "b.tsv")
        assert a.read_text() == b.read_text()


def test_absent_rois_never_change_outputs() -> None:
    torch.manual_seed(3)
    model = build(TINY).eval()
    batch = make_batch()
    batch["roi_mask"][0, 7] = False
    with torch.no_grad():
        pred = model.predict(batch)
        other = dict(batch)
        other["x"] = batch["x"].clone()
        other["x"][0, :, 7] = 1e3
        torch.testing.assert_close(model.predict(other), pred, atol=1e-5, rtol=1e-5)


def test_state_dict_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    torch.manual_seed(4)
    model = build(TINY)
    batch = make_batch()
    fit(model, batch, 3)  # also sets the target normalisation buffers
    model.eval()
    with torch.no_grad():
        want = model.predict(batch)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    torch.manual_seed(99)
    fresh = build(TINY).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh.predict(batch), want)
    fresh.load_state_dict(load_file(path), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.predict(batch), want)


def test_init_encoder_from_an_lmae_folder(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(5)
    lmae = build_lmae(LMAE_TINY)
    folder = tmp_path / "lmae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"kind": "lmae", "model": LMAE_TINY}))
    save_file(
        {k: v.contiguous() for k, v in lmae.state_dict().items()}, folder / "model.safetensors"
    )
    cfg = {k: v for k, v in TINY.items() if k not in ("encoder", "n_rois")}
    model = build({**cfg, "init_encoder": str(folder), "freeze_encoder": True})
    for key, value in lmae.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value)
    assert model.hparams.n_rois == R and model.hparams.encoder["dim"] == 32
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert not model.encoder.training and model.ssm.training
    loss, _ = model.forward_loss(make_batch())
    loss.backward()
    assert model.head.weight.grad is not None

    with pytest.raises(ValueError, match="dim: 64 here, 32 there"):
        build({**cfg, "init_encoder": str(folder), "encoder": {"dim": 64}})
    with pytest.raises(InputDataError, match="not found"):
        build({**cfg, "init_encoder": str(tmp_path / "nowhere")})


def test_group_graph_and_expert_weight_export(tmp_path: Path) -> None:
    torch.manual_seed(6)
    g = np.random.default_rng(0)
    x = g.standard_normal((50, R))
    np.save(tmp_path / "fc.npy", np.corrcoef(x.T))
    cfg = {
        **TINY,
        "spatial": {**TINY["spatial"], "graph": "group", "group_fc": str(tmp_path / "fc.npy")},
    }
    model = build(cfg)
    assert model.group_fc is not None and model.group_fc.shape == (R, R)
    batch = make_batch()
    batch["roi_mask"][:, 9] = False
    names = [f"roi{i}" for i in range(R)]
    out = export_expert_weights(
        model, [batch, make_batch(seed=1)], tmp_path / "w.tsv", roi_names=names
    )
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == ["roi", "expert", "weight"]
    assert table.shape == (R * 3, 3)
    sums = table.groupby("roi")["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    assert model.training  # restored

    np.save(tmp_path / "bad.npy", np.zeros((R, R + 1)))
    bad = {**cfg, "spatial": {**cfg["spatial"], "group_fc": str(tmp_path / "bad.npy")}}
    with pytest.raises(InputDataError, match="shape"):
        build(bad)


def test_targets_nan_ignored_and_labels_checked() -> None:
    torch.manual_seed(7)
    model = build(TINY)
    batch = make_batch()
    batch["age"] = batch["age"].clone()
    batch["age"][[0, 3]] = float("nan")
    loss, logs = model.forward_loss(batch)
    assert torch.isfinite(loss) and logs["n_targets"] == 4.0
    loss.backward()
    empty = dict(batch, mask=batch["mask"].clone())
    empty["mask"][1] = False  # a crop without a single valid frame: left out
    loss, logs = model.forward_loss(empty)
    assert torch.isfinite(loss) and logs["n_targets"] == 3.0
    batch["age"][:] = float("nan")
    loss, logs = model.forward_loss(batch)
    assert float(loss.detach()) == pytest.approx(0.01 * logs["aux_loss"])

    clf = build({**TINY, "target": "dx", "task": "classification", "n_classes": 2})
    with pytest.raises(ValueError, match=r"integers 0\.\.1"):
        clf.forward_loss(make_batch())  # dx holds 0, 1, 2
    with pytest.raises(ValueError, match="no target column 'age'"):
        build(TINY).forward_loss({k: v for k, v in make_batch().items() if k != "age"})


def test_config_validation_and_registry() -> None:
    with pytest.raises(ValueError, match="unknown model keys"):
        build({**TINY, "targett": "age"})
    with pytest.raises(ValueError, match="unknown spatial keys"):
        build({**TINY, "spatial": {"expert": 3}})
    with pytest.raises(ValueError, match="n_classes"):
        PredictorConfig(task="classification")
    with pytest.raises(ValueError, match="group_fc"):
        build({**TINY, "spatial": {"graph": "group"}})
    with pytest.raises(ValueError, match="temporal graph"):
        build({**TINY, "temporal": {"graph": "subject"}})
    model = build_model("predictor", TINY)
    assert isinstance(model, Predictor)
    nwd = model.no_weight_decay()
    assert "ssm.0.mixer.A_log" in nwd and "spatial.experts.b1" in nwd and "roi_embed" in nwd


@pytest.mark.parametrize("name", ["lmae_demo", "lmae_paper", "predictor_demo", "predictor_paper"])
def test_model_yamls_build(repo: Path, name: str) -> None:
    from brainharmony.train.config import load_config

    cfg = load_config(repo / "models" / f"{name}.yaml")
    model = build_model(cfg.kind, cfg.model)
    n = sum(p.numel() for p in model.parameters())
    if name.endswith("demo"):
        assert n < 1_000_000
        assert cfg.train.steps <= 300
    else:
        assert n > 1_000_000


def _write_shard(folder: Path, name: str, tr: float, frames: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n * frames, R)).astype(np.float32)
    shard = folder / f"{name}.npy"
    np.save(shard, data)
    index = pd.DataFrame(
        {
            "subject": [f"s{seed}{i}" for i in range(n)],
            "session": "n/a",
            "run": "n/a",
            "tr": tr,
            "frames": frames,
            "offset": np.arange(n) * frames,
            "age": rng.uniform(20, 80, n),
        }
    )
    index_path = folder / f"{name}.tsv"
    index.to_csv(index_path, sep="\t", index=False)
    return shard, index_path


def test_lmae_then_predictor_with_the_package_trainer(tmp_path: Path) -> None:
    """The chain the workflow runs: train an LMAE, then a predictor initialised from its
    folder, through brainharmony.train; the reloaded predictor predicts identically."""
    from brainharmony.train.checkpoint import load_trained
    from brainharmony.train.config import config_from_mapping
    from brainharmony.train.data import build_dataset
    from brainharmony.train.loop import train

    shards = [
        _write_shard(tmp_path, "a", 2.0, 30, 6, 1),
        _write_shard(tmp_path, "b", 0.8, 70, 6, 2),
    ]
    run = {"steps": 3, "batch_size": 4, "log_every": 1, "ckpt_every": 3, "seed": 0}
    lmae_cfg = config_from_mapping(
        {
            "name": "lmae_t",
            "kind": "lmae",
            "model": LMAE_TINY,
            "train": run,
            "data": {"kind": "series", "duration_s": 50.0},
        }
    )
    data = build_dataset(lmae_cfg.data, shards)
    train(
        lmae_cfg, data, tmp_path / "lmae", tmp_path / "s1", threads=1, device="cpu", progress=False
    )
    pred_model = {k: v for k, v in TINY.items() if k not in ("encoder", "n_rois")}
    pred_cfg = config_from_mapping(
        {
            "name": "pred_t",
            "kind": "predictor",
            "model": {**pred_model, "init_encoder": str(tmp_path / "lmae")},
            "train": run,
            "data": {"kind": "series", "duration_s": 50.0, "targets": ["age"]},
        }
    )
    data = build_dataset(pred_cfg.data, shards)
    result = train(
        pred_cfg, data, tmp_path / "pred", tmp_path / "s2", threads=1, device="cpu", progress=False
    )
    assert result.finished
    model = load_trained(tmp_path / "pred")
    assert isinstance(model, Predictor) and model.hparams.n_rois == R
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    with torch.no_grad():
        first = model.predict(batch)
        again = load_trained(tmp_path / "pred").predict(batch)
    assert torch.isfinite(first).all() and torch.equal(first, again)
