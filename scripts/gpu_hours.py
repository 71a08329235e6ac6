#!/usr/bin/env python
"""Estimate the GPU-hours of the model YAMLs a preset trains, and write them into the presets.

An ESTIMATE from a FLOP count, not a measurement (docs/training.md, "GPU-hours"):

* per transformer layer of width ``d``, MLP ratio ``r`` and ``n`` tokens, one forward
  pass costs ``2 (4 + 2r) d^2 n`` FLOPs in its matrix products (2 FLOPs per multiply-add
  of its ``(4 + 2r) d^2`` weights: QKV, projection, MLP) plus ``4 n^2 d`` in attention
  (``Q K^T`` and ``A V``); a training pass (forward + backward) costs 3 times that
  (the 6 N T rule with the attention term); a forward-only pass (an EMA target encoder)
  once that; linear layers outside the blocks (patch embedding, prediction heads) are
  ``2 (3 in training) x in x out x n``;
* samples = ``train.steps x global batch`` (``train.global_batch``, else
  ``batch_size x grad_accum``);
* GPU-hours = FLOPs / (peak x MFU) / 3600, with the peak of an H100 SXM in dense bf16
  (989 TFLOP/s) and an assumed model-FLOP utilisation of 40 %.

Tokens per sample come from the YAML (``img_size / patch``, ``n_rois x n_patches``,
``f_grid``, ``s_grid``, ``n_hubs``); series models count one token per frame at the
finest pretraining TR (UK Biobank, 0.735 s), an upper bound; ``img_size``/``s_grid``
``auto`` count the 1 mm box (160 x 192 x 160, 10 x 12 x 10 tokens). BrainHarmonix-F is counted
with every token in the context (an upper bound: its context is a subset). The
predictor's SSM and mixture-of-experts layers are left out (its encoder only), and it is
one training run (``predictor-cv`` trains one per seed and fold).

Usage::

    python scripts/gpu_hours.py                 # table of the paper YAMLs
    python scripts/gpu_hours.py --write         # rewrite the block in config/presets/*.yaml
    python scripts/gpu_hours.py --check         # exit 1 when a preset's block is stale
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
#: NVIDIA H100 SXM, dense bf16 tensor-core peak (FLOP/s).
PEAK_FLOPS = 989.4e12
#: Assumed model-FLOP utilisation.
MFU = 0.40
#: Finest pretraining TR (UK Biobank), for frames per series window.
FINEST_TR_S = 0.735
#: ``img_size: auto`` / ``s_grid: auto``: the schema's default box (160 x 192 x 160 at
#: 1 mm) and its 16^3-patch grid.
AUTO_IMG_SIZE = (160, 192, 160)
AUTO_S_GRID = (10, 12, 10)
BEGIN = "# >>> GPU-hours estimate (scripts/gpu_hours.py; formula in docs/training.md) >>>"
END = "# <<< GPU-hours estimate <<<"
ROLES = ("bh_s", "bh_f", "harmonizer", "lmae", "predictor")


def layer_flops(d: int, n: int, mlp_ratio: float = 4.0, *, train: bool = True) -> float:
    """FLOPs of one pre-norm ViT block over ``n`` tokens of width ``d`` (one sample)."""
    forward = 2.0 * (4.0 + 2.0 * mlp_ratio) * d * d * n + 4.0 * n * n * d
    return 3.0 * forward if train else forward


def stack_flops(d: int, depth: int, n: int, mlp_ratio: float = 4.0, *, train=True) -> float:
    """FLOPs of ``depth`` blocks."""
    return depth * layer_flops(d, n, mlp_ratio, train=train)


def linear_flops(d_in: int, d_out: int, n: int, *, train: bool = True) -> float:
    """FLOPs of a linear map applied to ``n`` tokens."""
    return (6.0 if train else 2.0) * d_in * d_out * n


def frames(duration_s: float) -> int:
    """Frames of a series window at the finest pretraining TR."""
    return math.ceil(float(duration_s) / FINEST_TR_S)


def flops_per_sample(kind: str, model: Mapping[str, Any], data: Mapping[str, Any]) -> float:
    """Training FLOPs of one sample of a model YAML (module docstring)."""
    m = model
    r = float(m.get("mlp_ratio", 4.0))
    if kind == "bh_s":
        patch = int(m["patch"])
        size = AUTO_IMG_SIZE if m["img_size"] == "auto" else m["img_size"]
        n = math.prod(int(s) // patch for s in size)
        visible = max(1, round(n * (1.0 - float(m.get("mask_ratio", 0.75)))))
        patch_dim = patch**3 * int(m.get("in_chans", 1))
        return (
            linear_flops(patch_dim, m["dim"], visible)
            + stack_flops(m["dim"], m["depth"], visible, r)
            + linear_flops(m["dim"], m["decoder_dim"], visible)
            + stack_flops(m["decoder_dim"], m["decoder_depth"], n, r)
            + linear_flops(m["decoder_dim"], patch_dim, n - visible)
        )
    if kind == "bh_f":
        n = int(m["n_rois"]) * int(m["n_patches"])
        return (
            stack_flops(m["dim"], m["depth"], n, r)  # context encoder (all tokens: a bound)
            + stack_flops(m["dim"], m["depth"], n, r, train=False)  # EMA target encoder
            + stack_flops(m["pred_dim"], m["pred_depth"], n, r)  # predictor
        )
    if kind == "harmonizer":
        f = math.prod(int(v) for v in m["f_grid"])
        s = math.prod(int(v) for v in (AUTO_S_GRID if m["s_grid"] == "auto" else m["s_grid"]))
        hubs = int(m["n_hubs"])
        return (
            linear_flops(m["f_dim"], m["dim"], f)
            + linear_flops(m["s_dim"], m["dim"], s)
            + stack_flops(m["dim"], m["depth"], 1 + f + s + hubs, r)
            + stack_flops(m["dec_dim"], m["dec_depth"], hubs + f, r)
            + stack_flops(m["dec_dim"], m["dec_depth"], hubs + s, r)
        )
    if kind == "lmae":
        n = frames(data["duration_s"])
        rois = int(m["n_rois"])
        return (
            linear_flops(2 * rois, m["dim"], n)
            + stack_flops(m["dim"], m["depth"], n, r)
            + stack_flops(m["decoder_dim"], m["decoder_depth"], n, r)
            + linear_flops(m["decoder_dim"], rois, n)
        )
    if kind == "predictor":
        enc = m["encoder"]
        n = frames(data["duration_s"])
        er = float(enc.get("mlp_ratio", 4.0))
        return linear_flops(2 * int(m["n_rois"]), enc["dim"], n) + stack_flops(
            enc["dim"], enc["depth"], n, er
        )
    raise ValueError(f"no FLOP model for kind {kind!r}")


def samples(train: Mapping[str, Any]) -> int:
    """Samples over the run: steps x global batch."""
    batch = train.get("global_batch")
    if batch is None:
        batch = int(train.get("batch_size", 8)) * int(train.get("grad_accum", 1))
    return int(train["steps"]) * int(batch)


def gpu_hours(total_flops: float, peak: float = PEAK_FLOPS, mfu: float = MFU) -> float:
    """GPU-hours at ``mfu`` of ``peak``."""
    return total_flops / (peak * mfu) / 3600.0


def estimate(yaml_path: Path) -> dict[str, Any]:
    """Samples, FLOPs and GPU-hours of one model YAML."""
    doc = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    per = flops_per_sample(doc["kind"], doc.get("model") or {}, doc.get("data") or {})
    n = samples(doc.get("train") or {})
    return {"samples": n, "flops": per * n, "gpu_hours": gpu_hours(per * n)}


def block(models: Mapping[str, str], gpus: int, root: Path = REPO) -> list[str]:
    """The comment lines written into a preset."""
    lines = [
        BEGIN,
        "# ESTIMATE, not a measurement: training FLOPs (per-layer count) / (H100 SXM dense",
        f"# bf16 {PEAK_FLOPS / 1e12:.0f} TFLOP/s x {MFU:.0%} MFU, assumed). "
        f"Wall time ~ GPU-h / train.gpus ({gpus} here).",
    ]
    for role in ROLES:
        if role not in models:
            continue
        path = Path(models[role])
        est = estimate(path if path.is_absolute() else root / path)
        lines.append(
            f"#   {role:<11}{path.name:<24}{est['samples']:>13,} samples "
            f"{est['flops']:9.2e} FLOP {est['gpu_hours']:>9.3g} GPU-h"
        )
    lines.append(END)
    return lines


def render(text: str, root: Path = REPO) -> str:
    """A preset's text with its estimate block (re)written before ``train:``."""
    config = yaml.safe_load(text) or {}
    train = config.get("train") or {}
    models = {r: f"models/{r}_demo.yaml" for r in ROLES} | dict(train.get("models") or {})
    new = block(models, int(train.get("gpus", 0)), root)
    lines = text.splitlines()
    if BEGIN in lines:
        start, stop = lines.index(BEGIN), lines.index(END)
        lines[start : stop + 1] = new
    else:
        at = next(i for i, line in enumerate(lines) if line.startswith("train:"))
        lines[at:at] = new
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite config/presets/*.yaml")
    mode.add_argument("--check", action="store_true", help="exit 1 if a preset is stale")
    args = parser.parse_args(argv)
    presets = sorted((REPO / "config" / "presets").glob("*.yaml"))
    if not (args.write or args.check):
        models = {r: f"models/{r}_paper.yaml" for r in ROLES}
        print("\n".join(line.removeprefix("# ") for line in block(models, 1)[1:-1]))
        return 0
    stale = []
    for path in presets:
        text = path.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            stale.append(path)
            if args.write:
                path.write_text(new, encoding="utf-8")
    for path in stale:
        print(f"{'rewrote' if args.write else 'stale'}: {path.relative_to(REPO)}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
