"""Brain-JEPA importer: official weights reproduce the official outputs; key inventory.

The fixtures (tests/fixtures/official/brain_jepa*) were recorded from the official code
(Eric-LRL/Brain-JEPA b1dfa93eb331) by scripts/official_fixtures_brain_jepa.py.
Tolerance: float32, absolute 1e-5 on outputs of magnitude up to ~3 (measured max
difference about 2e-6).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from brainharmony.io import InputDataError
from brainharmony.models.brain_jepa import build
from brainharmony.models.importers import ImportedModel
from brainharmony.models.importers.brain_jepa import DROPPED, convert, map_key
from brainharmony.models.jepa import gather_tokens

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "official"
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _checkpoint() -> dict[str, dict[str, np.ndarray]]:
    weights = np.load(FIX / "brain_jepa_weights.npz")
    ckpt: dict[str, dict[str, np.ndarray]] = {}
    for name in weights.files:
        part, key = name.split("/", 1)
        ckpt.setdefault(part, {})[key] = weights[name]
    return ckpt


@pytest.fixture
def extra(tmp_path: Path) -> dict[str, Path]:
    small = json.loads((FIX / "brain_jepa.json").read_text())["small"]
    cfg = tmp_path / "heads.json"
    cfg.write_text(json.dumps({"heads": small["heads"]}))
    return {"gradient": FIX / "brain_jepa_gradient.csv", "config": cfg}


def _imported(extra: dict[str, Path]) -> tuple[ImportedModel, torch.nn.Module]:
    imported = convert(_checkpoint(), extra=extra)
    model = build(imported.model_cfg)
    model.load_state_dict(imported.state_dict, strict=True)
    return imported, model.eval()


def test_fixture_records_the_official_commit() -> None:
    doc = json.loads((FIX / "brain_jepa.json").read_text())
    assert doc["official"]["commit"].startswith("b1dfa93eb331")
    assert sum(p.stat().st_size for p in FIX.glob("brain_jepa*")) < 1_000_000


def test_imported_weights_reproduce_the_official_outputs(extra: dict[str, Path]) -> None:
    io = np.load(FIX / "brain_jepa_io.npz")
    imported, model = _imported(extra)
    assert imported.kind == "brain_jepa"
    assert imported.model_cfg["tables_from_state"] and imported.model_cfg["depth"] == 2
    x = torch.from_numpy(io["x"])[:, 0].transpose(1, 2)  # official (B, 1, R, T) -> (B, T, R)
    with torch.no_grad():
        tokens, valid = model.encode_tokens(x)
        pooled = model.encode(x)
        pos = model.target_encoder.pos().reshape(1, -1, model.target_encoder.dim)
        # Context encoder and predictor at fixed context / target indices.
        ctx = torch.from_numpy(io["context_index"])
        tgt = torch.from_numpy(io["target_index"])
        emb, _ = model.encoder.embed({"x": x})
        ok_c, ok_t = torch.ones_like(ctx, dtype=torch.bool), torch.ones_like(tgt, dtype=torch.bool)
        z = model.encoder(gather_tokens(emb, ctx), ok_c)
        pred = model.predictor(z, ctx, ok_c, tgt, ok_t)
    assert bool(valid.all())
    for ours, name in ((tokens, "tokens"), (pooled, "pooled"), (pos, "pos_embed"),
                       (z, "context"), (pred, "prediction")):  # fmt: skip
        ref = torch.from_numpy(io[name])
        assert ours.shape == ref.shape, name
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0, msg=name)
    # The official tokens come from target_encoder, which differs from encoder here.
    with torch.no_grad():
        context_tokens = model.encoder(*model.encoder.embed({"x": x}))
    assert float((context_tokens - torch.from_numpy(io["tokens"])).abs().max()) > 1e-2


def test_every_full_size_official_key_maps_or_is_dropped() -> None:
    doc = json.loads((FIX / "brain_jepa.json").read_text())
    inventory = doc["full_inventory"]
    cfg = {"n_rois": 450, "n_patches": 10, "patch": 16, "tables_from_state": True}
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in build(cfg).state_dict().items()}
    covered = set()
    for official, part_names in (("encoder", ("encoder", "target_encoder")),
                                 ("predictor", ("predictor",))):  # fmt: skip
        for key, shape in inventory[official].items():
            for part in part_names:
                target = map_key(part, key)
                if target is None:
                    assert key in DROPPED
                    continue
                conv = key == "patch_embed.proj.weight"  # (D, 1, 1, p) -> Linear (D, p)
                want = (shape[0], shape[-1]) if conv else tuple(shape)
                assert ours[target] == want, (key, target)
                covered.add(target)
    # Everything else of ours is the gradient table, which comes from extra["gradient"].
    assert {k for k in ours if k not in covered} == {
        "encoder.pos.gradients",
        "target_encoder.pos.gradients",
        "predictor.pos.gradients",
    }
    assert ours["encoder.pos.gradients"] == (450, 30)


def test_module_prefix_optional_and_bare_encoder(extra: dict[str, Path]) -> None:
    io = np.load(FIX / "brain_jepa_io.npz")
    ckpt = _checkpoint()
    bare = {k.removeprefix("module."): v for k, v in ckpt["target_encoder"].items()}
    imported = convert(bare, extra=extra)
    assert any("no 'predictor'" in n for n in imported.notes)
    model = build(imported.model_cfg)
    model.load_state_dict(imported.state_dict, strict=True)
    x = torch.from_numpy(io["x"])[:, 0].transpose(1, 2)
    with torch.no_grad():
        pooled = model.eval().encode(x)
    torch.testing.assert_close(pooled, torch.from_numpy(io["pooled"]), atol=ATOL, rtol=0)


def test_a_non_official_width_needs_its_head_count(extra: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="width 32: the number of attention heads is not"):
        convert(_checkpoint(), extra={"gradient": extra["gradient"]})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("target_encoder") and c.pop("encoder"), "not a Brain-JEPA checkpoint"),
        (lambda c: c["target_encoder"].pop("module.blocks.1.attn.qkv.weight"), "missing 1 weight"),
        (lambda c: c["target_encoder"].pop("module.pos_embed_proj.emb_h"), "has no 'pos_embed_"),
        (
            lambda c: c["target_encoder"].__setitem__(
                "module.norm.weight", np.ones(31, np.float32)
            ),
            r"'target_encoder/norm.weight' has shape \(31,\); .* needs \(32,\)",
        ),
        (
            lambda c: c["predictor"].__setitem__("module.extra.weight", np.ones(2, np.float32)),
            "unknown key 'extra.weight' in 'predictor'",
        ),
        (
            lambda c: c["target_encoder"].__setitem__(
                "module.pos_embed_proj.emb_w", np.ones(2, np.float32)
            ),
            "add_w: origin",
        ),
    ],
)
def test_wrong_checkpoints_are_refused(extra: dict[str, Path], edit, message: str) -> None:
    ckpt = _checkpoint()
    edit(ckpt)
    with pytest.raises(ValueError, match=message):
        convert(ckpt, extra=extra)


def test_wrong_gradient_tables_are_refused(extra: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"extra\['gradient'\]"):
        convert(_checkpoint(), extra={"config": extra["config"]})
    wrong_rows = tmp_path / "rows.csv"
    np.savetxt(wrong_rows, np.ones((7, 6)), delimiter=",")
    with pytest.raises(ValueError, match="not a multiple of the gradient table's 7 ROIs"):
        convert(_checkpoint(), extra={**extra, "gradient": wrong_rows})
    wrong_cols = tmp_path / "cols.csv"
    np.savetxt(wrong_cols, np.ones((12, 5)), delimiter=",")
    with pytest.raises(InputDataError, match=r"cols\.csv.*5 columns.*takes 6"):
        convert(_checkpoint(), extra={**extra, "gradient": wrong_cols})
    with pytest.raises(InputDataError, match="not found"):
        convert(_checkpoint(), extra={**extra, "gradient": tmp_path / "absent.csv"})
