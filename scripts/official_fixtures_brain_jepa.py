"""Record reference numbers from the official Brain-JEPA code (run outside the repository).

Usage (in a scratch environment with torch and numpy, never this package's venv)::

    python scripts/official_fixtures_brain_jepa.py --official-repo /path/to/Brain-JEPA \\
        --out tests/fixtures/official

``--official-repo`` is a work tree of Eric-LRL/Brain-JEPA (commit b1dfa93eb331). Its
modules are imported at run time; nothing of them is copied here. The official model
module imports ``flash_attn`` at import time: where flash-attn cannot be installed, a
stand-in module must be importable (the models here use ``attn_mode='normal'``, which
never calls it).

Writes, under ``--out``:

* ``brain_jepa_weights.npz``: a small official encoder, target encoder and predictor
  (depth 2, width 32, 4 heads, 12 ROIs x 10 patches of 4 frames, 6 gradient columns)
  with seeded random weights, stored as the official ``src/train.py`` saves them
  (``<part>/module.<key>``: the modules are DDP-wrapped when saved).
* ``brain_jepa_gradient.csv``: the small gradient table (no header, as the official CSV).
* ``brain_jepa_io.npz``: inputs ``x`` (B, 1, R, T) in the official layout, the target
  encoder's tokens and their mean (the downstream ``global_pool`` feature before its new
  ``fc_norm``), the encoder's position table, and the context-encoder / predictor
  outputs for fixed context and target indices.
* ``brain_jepa.json``: the official commit, versions, the small configuration, and the
  key/shape inventory of the full-size model (ViT-B, 450 x 160, patch 16, predictor 6 x
  384) built by the official ``src.helper.init_model``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

SMALL = {
    "n_rois": 12,
    "n_patches": 10,  # the official GradTs_2dPE repeats the ROI part 10 times: fixed
    "patch": 4,
    "dim": 32,
    "depth": 2,
    "heads": 4,
    "n_gradients": 6,
    "pred_dim": 16,
    "pred_depth": 1,
    "batch": 2,
}
SEED = 20241207


def _randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Replace every learnable tensor by seeded noise of a sensible scale."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("emb_h"):
                continue  # the fixed sin-cos table (a frozen parameter)
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() >= 2:
                p.copy_(noise / np.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)


def _inventory(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-repo", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/official"))
    args = parser.parse_args(argv)
    repo = args.official_repo.resolve()
    sys.path.insert(0, str(repo))
    import src.helper as helper  # official
    import src.models.vision_transformer as vit  # official

    commit = (
        subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "b1dfa93eb331 (work tree without git metadata)"
    )

    s = SMALL
    gen = torch.Generator().manual_seed(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    gradient = torch.randn(s["n_rois"], s["n_gradients"], generator=gen, dtype=torch.float64)
    csv = args.out / "brain_jepa_gradient.csv"
    np.savetxt(csv, gradient.numpy(), fmt="%.17g", delimiter=",")
    # As the official loaders do: CSV -> float32 tensor with a leading batch axis.
    grad = torch.tensor(np.loadtxt(csv, delimiter=","), dtype=torch.float32)[None]

    ln = partial(nn.LayerNorm, eps=1e-6)
    encoder = vit.VisionTransformer(
        img_size=(s["n_rois"], s["n_patches"] * s["patch"]),
        patch_size=s["patch"],
        in_chans=1,
        embed_dim=s["dim"],
        depth=s["depth"],
        num_heads=s["heads"],
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=ln,
        gradient_pos_embed=grad,
        attn_mode="normal",
        add_w="mapping",
    )
    predictor = vit.vit_predictor(
        num_patches=encoder.patch_embed.num_patches,
        num_patches_2d=encoder.patch_embed.num_patches_2d,
        embed_dim=s["dim"],
        predictor_embed_dim=s["pred_dim"],
        depth=s["pred_depth"],
        num_heads=s["heads"],
        gradient_pos_embed=grad,
        attn_mode="normal",
        add_w="mapping",
    )
    target = copy.deepcopy(encoder)
    for module in (encoder, predictor, target):
        _randomise(module, gen)
        module.eval()

    b, r, p, k = s["batch"], s["n_rois"], s["n_patches"], s["patch"]
    x = torch.randn(b, 1, r, p * k, generator=gen)
    n = r * p
    ctx = torch.stack([torch.randperm(n, generator=gen)[:70].sort().values for _ in range(b)])
    tgt = torch.stack([torch.randperm(n, generator=gen)[:25].sort().values for _ in range(b)])
    with torch.no_grad():
        tokens = target(x)
        pos = target.pos_embed_proj(target.gradient_pos_embed)
        z = encoder(x, masks=[ctx])
        pred = predictor(z, [ctx], [tgt])

    weights = {}
    for part, module in (
        ("encoder", encoder),
        ("predictor", predictor),
        ("target_encoder", target),
    ):
        for key, value in module.state_dict().items():
            weights[f"{part}/module.{key}"] = value.numpy()
    np.savez_compressed(args.out / "brain_jepa_weights.npz", **weights)
    np.savez_compressed(
        args.out / "brain_jepa_io.npz",
        x=x.numpy(),
        tokens=tokens.numpy(),
        pooled=tokens.mean(dim=1).numpy(),
        pos_embed=pos.numpy(),
        context_index=ctx.numpy(),
        target_index=tgt.numpy(),
        context=z.numpy(),
        prediction=pred.numpy(),
    )

    # Full size, built by the official helper exactly as src/train.py builds it.
    full_grad = torch.tensor(
        np.loadtxt(repo / "data" / "gradient_mapping_450.csv", delimiter=","), dtype=torch.float32
    )[None]
    big_enc, big_pred = helper.init_model(
        device=torch.device("cpu"),
        patch_size=16,
        model_name="vit_base",
        crop_size=(450, 160),
        pred_depth=6,
        pred_emb_dim=384,
        gradient_pos_embed=full_grad,
        attn_mode="normal",
        add_w="mapping",
    )
    doc = {
        "official": {"repo": "Eric-LRL/Brain-JEPA", "commit": commit},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "seed": SEED,
        "small": s,
        "small_note": (
            "VisionTransformer(img_size=(n_rois, n_patches*patch), in_chans=1, "
            "attn_mode='normal', add_w='mapping') and vit_predictor with the encoder's "
            "heads; weights replaced by seeded noise; target_encoder differs from encoder. "
            "tokens/pooled come from target_encoder (what downstream_tasks loads); "
            "context/prediction from encoder(x, masks=[context_index]) and "
            "predictor(z, [context_index], [target_index])."
        ),
        "checkpoint_layout": (
            "src/train.py saves {'encoder', 'predictor', 'target_encoder', 'opt', 'scaler', "
            "'epoch', ...}; the three modules are DistributedDataParallel-wrapped, so keys "
            "start with 'module.'. downstream_tasks/main_finetune.py loads 'target_encoder'. "
            "The gradient table is not in the state dicts (a plain attribute)."
        ),
        "full_inventory": {
            "config": {
                "model_name": "vit_base",
                "crop_size": [450, 160],
                "patch_size": 16,
                "pred_depth": 6,
                "pred_emb_dim": 384,
                "add_w": "mapping",
            },
            "encoder": _inventory(big_enc.state_dict()),
            "predictor": _inventory(big_pred.state_dict()),
        },
    }
    (args.out / "brain_jepa.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}/brain_jepa*")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
