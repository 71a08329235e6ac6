"""``brainharmony import-weights`` end to end: official checkpoint file -> model folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brainharmony import cli
from brainharmony.pipelines.embed import load_frozen
from brainharmony.train.checkpoint import load_trained
from tests.unit.models import official_fixture as fx


class Gadget:  # a class a hostile pickle could name
    pass


def _save(path, obj):
    torch.save(obj, path)
    return str(path)


def _run(argv, capsys):
    code = cli.main(["import-weights", *argv])
    return code, capsys.readouterr()


def test_help_lists_the_four_sources(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["import-weights", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for source in ("bh-f", "bh-s", "harmonizer", "brain-jepa"):
        assert source in text
    assert "harmonics=" in text and "gradients=" in text


def test_bh_s_file_to_folder_to_load_trained(tmp_path, capsys):
    args = argparse.Namespace(lr=1.5e-4, model="mae_vit_base_patch16", epochs=400)
    ckpt = _save(tmp_path / "model.pth", {"model": fx.state("bh_s"), "epoch": 399, "args": args})
    out = tmp_path / "bh_s"
    code, io = _run(["bh-s", ckpt, str(out), "--set", "heads=2"], capsys)
    assert code == 0, io.err
    assert "cls_token=true" in io.out
    model = load_trained(out)
    batch, official = fx.s_batch()
    with torch.no_grad():
        tokens, _ = model.encode_tokens(batch)
    assert np.abs(tokens.numpy() - official).max() < fx.TOLERANCE
    doc = json.loads((out / "config.json").read_text())
    assert doc["kind"] == "bh_s" and doc["trained_steps"] == 0
    assert doc["provenance"]["Step"] == "import-weights"
    assert doc["provenance"]["Parameters"]["source"] == "bh-s"


def test_bh_f_folder_loads_in_embed(tmp_path, capsys):
    ckpt = _save(tmp_path / "model.pth", fx.state("bh_f"))
    tables = fx.write_tables(tmp_path)
    out = tmp_path / "bh_f"
    argv = ["bh-f", ckpt, str(out), "--set", "heads=2"]
    argv += [f"--extra=harmonics={tables['harmonics']}", f"--extra=gradients={tables['gradients']}"]
    code, io = _run(argv, capsys)
    assert code == 0, io.err
    model, kind = load_frozen(out)
    assert kind == "bh_f"
    batch, valid, outs = fx.f_case("tr1470")
    with torch.no_grad():
        tokens, _ = model.encode_tokens(batch)
    assert np.abs(tokens.numpy() - outs["encoder_ema"])[valid.numpy()].max() < fx.TOLERANCE


def test_harmonizer_folder(tmp_path, capsys):
    ckpt = _save(tmp_path / "model.pth", {"model": fx.state("harmonizer"), "epoch": 299})
    out = tmp_path / "h"
    code, io = _run(
        [
            "harmonizer",
            ckpt,
            str(out),
            "--set",
            "heads=2",
            "--set",
            "dec_heads=1",
            "--set",
            "dec_dim=8",
        ],
        capsys,
    )
    assert code == 0, io.err
    batch, official = fx.harmonizer_batch()
    with torch.no_grad():
        hubs, _ = load_trained(out).encode_tokens(batch)
    assert np.abs(hubs.numpy() - official).max() < fx.TOLERANCE


def test_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "notes.pth"
    bad.write_text("this is not a checkpoint\n")
    code, io = _run(["bh-s", str(bad), str(tmp_path / "o")], capsys)
    assert code == 2
    assert str(bad) in io.err and "cannot be read as a PyTorch checkpoint" in io.err
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_truncated_checkpoint(tmp_path, capsys):
    full = tmp_path / "full.pth"
    torch.save({"model": fx.state("bh_s")}, full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[:5000])
    code, io = _run(["bh-s", str(cut), str(tmp_path / "o")], capsys)
    assert code == 2 and str(cut) in io.err


def test_hostile_pickle_is_refused(tmp_path, capsys):
    ckpt = _save(tmp_path / "evil.pth", {"model": fx.state("bh_s"), "payload": Gadget()})
    code, io = _run(["bh-s", ckpt, str(tmp_path / "o")], capsys)
    assert code == 2
    assert "refused" in io.err and "Gadget" in io.err and "evil.pth" in io.err


def test_wrong_source_for_the_file(tmp_path, capsys):
    ckpt = _save(tmp_path / "harmonix-s.pth", {"model": fx.state("bh_s")})
    tables = fx.write_tables(tmp_path)
    code, io = _run(
        [
            "bh-f",
            ckpt,
            str(tmp_path / "o"),
            f"--extra=harmonics={tables['harmonics']}",
            f"--extra=gradients={tables['gradients']}",
        ],
        capsys,
    )
    assert code == 2
    assert "harmonix-s.pth" in io.err and "not a bh-f checkpoint" in io.err and "'bh-s'" in io.err


def test_missing_extra_file(tmp_path, capsys):
    ckpt = _save(tmp_path / "model.pth", fx.state("bh_f"))
    code, io = _run(
        ["bh-f", ckpt, str(tmp_path / "o"), "--extra", "harmonics=/nonexistent.csv"], capsys
    )
    assert code == 2 and "/nonexistent.csv" in io.err


def test_brain_jepa_file_to_folder_to_load_trained(tmp_path, capsys):
    """The official Brain-JEPA fixture through the command: the folder rebuilds alone and
    its ``encode`` gives the official pooled feature."""
    fix = Path(__file__).resolve().parents[2] / "fixtures" / "official"
    weights = np.load(fix / "brain_jepa_weights.npz")
    ckpt: dict = {"epoch": 299}
    for name in weights.files:
        part, key = name.split("/", 1)
        ckpt.setdefault(part, {})[key] = torch.from_numpy(weights[name])
    path = _save(tmp_path / "jepa-ep300.pth.tar", ckpt)
    small = json.loads((fix / "brain_jepa.json").read_text())["small"]
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"heads": small["heads"]}))
    out = tmp_path / "brain_jepa"
    gradient = f"gradient={fix / 'brain_jepa_gradient.csv'}"
    code, io = _run(
        ["brain-jepa", path, str(out), "--extra", gradient, "--extra", f"config={heads}"], capsys
    )
    assert code == 0, io.err
    model = load_trained(out).eval()
    official = np.load(fix / "brain_jepa_io.npz")
    x = torch.from_numpy(official["x"])[:, 0].transpose(1, 2)  # (B, 1, R, T) -> (B, T, R)
    with torch.no_grad():
        pooled = model.encode(x)
    assert np.abs(pooled.numpy() - official["pooled"]).max() < 1e-5
    doc = json.loads((out / "config.json").read_text())
    assert doc["kind"] == "brain_jepa"
    assert doc["provenance"]["Parameters"]["source"] == "brain-jepa"
    # Without the gradient table the command refuses, naming what is missing.
    code, io = _run(["brain-jepa", path, str(tmp_path / "x")], capsys)
    assert code != 0 and "gradient" in io.err
