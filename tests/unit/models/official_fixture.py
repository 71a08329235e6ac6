"""Reader of the official BrainHarmonix fixture (tests/fixtures/official/, made by
scripts/official_fixtures.py from hzlab/Brain-Harmony; see its JSON for the commit)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "official"

#: float32 tolerance of our outputs against the official ones (computed in float64):
#: max abs difference over every valid output value; the outputs are O(1) (|max| ~ 3),
#: and the measured differences are ~1e-6.
TOLERANCE = 2e-5


@cache
def arrays() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "brainharmonix.npz") as z:
        return {k: z[k] for k in z.files}


@cache
def document() -> dict[str, Any]:
    return json.loads((FIXTURE / "brainharmonix.json").read_text())


def state(model: str) -> dict[str, torch.Tensor]:
    """The small official model's state dict (float32 tensors)."""
    prefix = f"{model}/state/"
    return {
        k[len(prefix) :]: torch.from_numpy(v.astype(np.float32))
        for k, v in arrays().items()
        if k.startswith(prefix)
    }


def write_tables(folder: Path) -> dict[str, Path]:
    """The small F model's two position tables, in the official CSV layouts."""
    h, g = arrays()["bh_f/extra/harmonics"], arrays()["bh_f/extra/gradients"]
    geo = folder / "eigenmodes.csv"
    rows = [",".join([""] + [f"Mode_{i + 1}" for i in range(h.shape[1])])]
    rows += [",".join([f"ROI_{r + 1}"] + [repr(float(v)) for v in row]) for r, row in enumerate(h)]
    geo.write_text("\n".join(rows) + "\n")
    grad = folder / "gradients.csv"
    grad.write_text("\n".join(",".join(repr(float(v)) for v in row) for row in g) + "\n")
    return {"harmonics": geo, "gradients": grad}


#: Overrides the small models need (heads are not stored in a state dict; our 3-D sin-cos
#: decoder positions need a width of at least 6).
OVERRIDES = {
    "bh_f": {"heads": 2},
    "bh_s": {"heads": 2},
    "harmonizer": {"heads": 2, "dec_heads": 1, "dec_dim": 8},
}


def f_case(name: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, np.ndarray]]:
    """Our batch for one F case, the official validity and the official outputs."""
    a, info = arrays(), document()["bh_f"]["cases"][name]
    series = torch.from_numpy(a[f"bh_f/in/{name}/series"])
    lengths = torch.from_numpy(a[f"bh_f/in/{name}/lengths"])
    batch = {
        "x": series,
        "tr": torch.full((series.shape[0],), float(info["tr"])),
        "mask": torch.arange(series.shape[1])[None] < lengths[:, None],
    }
    valid = torch.from_numpy(a[f"bh_f/in/{name}/attn_mask"]).bool()
    outs = {k: a[f"bh_f/out/{name}/{k}"] for k in ("encoder_ema", "encoder")}
    return batch, valid, outs


def s_batch() -> tuple[dict[str, torch.Tensor], np.ndarray]:
    a = arrays()
    return {"x": torch.from_numpy(a["bh_s/in/volume"])}, a["bh_s/out/tokens"]


def harmonizer_batch() -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Our batch (inputs = u @ v, as the official run) and the official hub outputs."""
    a = arrays()
    x = (
        torch.from_numpy(a["harmonizer/in/u"]).double()
        @ torch.from_numpy(a["harmonizer/in/v"]).double()
    )
    x = x.float()[None]
    valid = torch.from_numpy(a["harmonizer/in/attn_mask"]).bool()
    batch = {"f_tokens": x[:, :7200], "f_valid": valid, "s_tokens": x[:, 7200:]}
    return batch, a["harmonizer/out/latent"][:, 1:]
