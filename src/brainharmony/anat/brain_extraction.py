"""Brain extraction from the image itself: deepbet's two TorchScript networks.

deepbet (Fisch et al. 2024, "deepbet: Fast brain extraction of T1-weighted MRI using
Convolutional Neural Networks", MIT licence, PyPI ``deepbet``) ships its weights inside
the wheel, so it runs offline. Its procedure, which :func:`deepbet_mask` runs through
deepbet's own ``BrainExtraction`` class:

1. a small network on the whole image resized to 128^3 finds the brain's bounding box;
2. the box, widened by 10 % per side, is resized to ``shape``^3 and segmented by the
   main network (a U-Net); the probability is resized back (nearest) onto the grid;
3. threshold 0.5, the largest connected component, voids filled.

The package is imported lazily (torch is heavy), with its model files checked first so
that a broken install names the missing file. Inference runs on the CPU with a fixed
thread count, which makes the mask reproducible to the bit on one machine.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: The deepbet release whose networks and procedure this module was checked against.
DEEPBET_VERSION = "1.0.2"
#: Side of the cube the main network segments (deepbet's default: 256). Smaller is
#: faster and coarser (docs/anat.md gives the measured Dice against 256).
DEFAULT_SHAPE = 256
#: Sides the main network accepts (its U-Net halves the grid five times; 144 fails).
SHAPE_MULTIPLE = 32


class BrainExtractionError(RuntimeError):
    """The network found no usable brain in the image (the message says why)."""


def deepbet_model_files() -> tuple[Path, Path]:
    """The two TorchScript files of the installed deepbet: ``(model, bbox_model)``.

    Raises
    ------
    BrainExtractionError
        deepbet is not installed, or its wheel's model files are missing.
    """
    try:
        from deepbet import utils as deepbet_utils
    except ImportError as err:  # pragma: no cover - depends on the install
        raise BrainExtractionError(
            f"deepbet is not installed ({err}); `make install` installs it "
            "(requirements/lock-nodeps.txt), or set anat.brain_extraction: template"
        ) from err
    folder = Path(deepbet_utils.DATA_PATH) / "models"
    files = (folder / "model.pt", folder / "bbox_model.pt")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise BrainExtractionError(f"deepbet's model files are missing: {', '.join(missing)}")
    return files


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run torch's CPU kernels with ``threads`` intra-op threads, then restore the count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def deepbet_mask(
    data: np.ndarray,
    zooms: np.ndarray,
    shape: int = DEFAULT_SHAPE,
    threads: int = 1,
    threshold: float = 0.5,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Brain mask of a T1w by deepbet.

    Parameters
    ----------
    data : ndarray of shape (nx, ny, nz)
        The T1w, array axes in RAS+ order (as :func:`.images.load_t1w` gives them:
        deepbet's networks were trained on canonically oriented volumes).
    zooms : ndarray of shape (3,)
        Voxel sizes in mm (for the reported volume).
    shape : int
        Side of the cube the main network segments (a multiple of 32: the U-Net
        halves the grid five times).
    threads : int
        torch CPU threads.
    threshold : float
        Probability threshold.

    Returns
    -------
    mask : ndarray of bool, shape (nx, ny, nz)
    report : dict
        Method, version, network input, volume, bounding box.

    Raises
    ------
    BrainExtractionError
        No brain found (empty bounding box or empty mask), or deepbet is unusable.
    """
    if shape < 64 or shape % SHAPE_MULTIPLE:
        raise ValueError(f"shape must be a multiple of {SHAPE_MULTIPLE} >= 64; got {shape!r}")
    model, bbox_model = deepbet_model_files()
    import deepbet
    import torch

    data = np.asarray(data, np.float32)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {data.shape}")
    tic = time.perf_counter()
    with torch_threads(threads), torch.no_grad():
        net = deepbet.BrainExtraction(
            no_gpu=True, model_path=str(model), bbox_model_path=str(bbox_model)
        )
        try:
            prob = net.run_model(np.nan_to_num(data).copy(), shape=(shape,) * 3)
            mask = net.postprocess(prob > threshold)
        except (AssertionError, ValueError, IndexError) as err:
            # deepbet asserts on an empty bounding box and takes the argmax of an empty
            # label count when the network finds nothing.
            raise BrainExtractionError(f"deepbet found no brain in the image ({err})") from err
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise BrainExtractionError("deepbet found no brain in the image (empty mask)")
    volume_ml = float(mask.sum() * np.prod(np.asarray(zooms, float)) / 1000.0)
    box = [slice_.indices(n)[:2] for slice_, n in zip(net.bbox, data.shape, strict=True)]
    report = {
        "Method": "deepbet (Fisch et al. 2024): bounding-box network, then U-Net on the box",
        "Version": getattr(deepbet, "__version__", DEEPBET_VERSION),
        "NetworkInputShape": [shape] * 3,
        "Threshold": threshold,
        "Threads": int(threads),
        "BoundingBoxVoxels": [[int(a), int(b)] for a, b in box],
        "VolumeML": round(volume_ml, 3),
    }
    # No timing in the report: sidecars are byte-identical from run to run.
    logger.info("deepbet: brain %.0f mL in %.1f s", volume_ml, time.perf_counter() - tic)
    return mask, report
