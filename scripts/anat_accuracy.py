#!/usr/bin/env python
"""Measure the anatomy stage's accuracy and time per T1w; regenerate docs/anat.md's table.

Inputs: the real whole-head scans of the tests (``tests/realdata.py``: pydeface's average
head, FSL's MNI152 head with a planted pose) and every T1w of the tiny demo preset
(generated here with the tests' seed). Each runs through ``run_anat`` in a fresh process
(one thread, as the workflow's jobs do) for every brain-extraction route that runs here
(``deepbet``, ``template``) at each resolution asked for.

Per T1w: wall time of the process, correlation and Dice with nilearn's MNI152 template
and brain mask (computed by nilearn on the outputs, as the tests do), whether the QC gate
excluded it, and where a truth exists (the posed head, the demo) the mean distance
between where the fitted and the true transforms send the template's brain voxels.

Usage (from the repository root)::

    .venv/bin/python scripts/anat_accuracy.py --resolutions 1 2 --update docs/anat.md

FSL and FreeSurfer do not exist on this machine, so their back ends are not measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BEGIN = "<!-- anat_accuracy: begin (regenerate: scripts/anat_accuracy.py --update) -->"
END = "<!-- anat_accuracy: end -->"

RUN = """
import json, sys
from brainharmony.anat.pipeline import run_anat
from brainharmony.anat.settings import AnatSettings
t1w, out, label, res, route = sys.argv[1:6]
paths = run_anat(t1w, out, label, settings=AnatSettings(resolution_mm=int(res),
                 brain_extraction=route))
print(json.dumps({k: str(v) for k, v in vars(paths).items() if v is not None}))
"""


def _error_mm(xfm: Path, pose: np.ndarray) -> float:
    """Mean distance (mm) between the fitted and true template -> T1w maps of brain voxels."""
    import nibabel as nib
    import SimpleITK as sitk

    from brainharmony.anat.images import FLIP
    from brainharmony.anat.templates import load_template

    tpl = load_template("MNI152NLin2009aAsym", 2)
    pts = nib.affines.apply_affine(tpl.affine, np.argwhere(np.asarray(tpl.mask.dataobj) > 0))
    pts = pts[::7]
    tx = sitk.ReadTransform(str(xfm))
    fitted = np.array([tx.TransformPoint(tuple(FLIP @ p)) for p in pts]) @ FLIP
    return float(np.linalg.norm(fitted - nib.affines.apply_affine(pose, pts), axis=1).mean())


def inputs(work: Path) -> list[tuple[str, Path, np.ndarray | None]]:
    """(name, T1w path, true pose or None) of every input."""
    import nibabel as nib

    from brainharmony.demo import generate_demo
    from tests.realdata import fetch
    from tests.unit.anat.test_real_t1w import pose_matrix, posed_lia
    from tests.unit.conftest import TINY_SEED

    out: list[tuple[str, Path, np.ndarray | None]] = [
        ("pydeface average head (real)", fetch("pydeface_head"), None)
    ]
    posed = work / "nlin6_posed_T1w.nii.gz"
    nib.save(posed_lia(nib.load(fetch("nlin6_head")), pose_matrix()), posed)
    out.append(("FSL MNI152 head, posed (real)", posed, pose_matrix()))
    demo = work / "demo"
    generate_demo(demo, preset="tiny", seed=TINY_SEED)
    for truth in sorted(demo.glob("demo*-truth/sub-*/**/*_desc-anat_truth.json")):
        stem = truth.name.replace("_desc-anat_truth.json", "")
        dataset = truth.relative_to(demo).parts[0].removesuffix("-truth")
        t1w = next((demo / dataset).rglob(f"{stem}_T1w.nii.gz"))
        pose = np.asarray(json.loads(truth.read_text())["head_pose_mni_to_scanner"], float)
        out.append((f"{dataset} {stem} (demo)", t1w, pose))
    return out


def measure(resolutions: list[int], routes: list[str]) -> list[dict]:
    from brainharmony.anat.derivatives import anat_paths
    from tests.unit.anat.test_real_t1w import nilearn_metrics

    rows = []
    with tempfile.TemporaryDirectory(prefix="bh-anat-acc-") as tmp:
        work = Path(tmp)
        for name, t1w, pose in inputs(work):
            for res in resolutions:
                for route in routes:
                    out = work / f"out-{res}-{route}"
                    label = f"x{len(rows)}"
                    tic = time.perf_counter()
                    subprocess.run(
                        [sys.executable, "-c", RUN, str(t1w), str(out), label, str(res), route],
                        check=True,
                        capture_output=True,
                    )
                    seconds = time.perf_counter() - tic
                    paths = anat_paths(out, label, None)
                    corr, overlap = nilearn_metrics(paths)
                    doc = json.loads(paths.preproc.with_suffix("").with_suffix(".json").read_text())
                    rows.append(
                        {
                            "input": name,
                            "resolution_mm": res,
                            "route": route,
                            "seconds": round(seconds, 1),
                            "corr": round(corr, 3),
                            "dice": round(overlap, 3),
                            "error_mm": None
                            if pose is None
                            else round(_error_mm(paths.xfm_to_template, pose), 2),
                            "excluded": doc.get("ExclusionReason", ""),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| input | mm | brain extraction | time (s) | corr | Dice | error (mm) | QC gate |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['input']} | {r['resolution_mm']} | {r['route']} | {r['seconds']} | {r['corr']} "
        f"| {r['dice']} | {'n/a' if r['error_mm'] is None else r['error_mm']} | "
        f"{'excluded: ' + r['excluded'] if r['excluded'] else 'kept'} |\n"
        for r in rows
    )
    return head + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[1])
    parser.add_argument("--routes", nargs="+", default=["deepbet", "template"])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--update", type=Path, help="replace the table between the markers")
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y-%m-%d")
    rows = measure(args.resolutions, args.routes)
    text = (
        f"Measured {stamp} with `scripts/anat_accuracy.py --resolutions "
        f"{' '.join(map(str, args.resolutions))}` (one thread per T1w, wall time of the "
        "whole `run_anat` process including imports):\n\n" + table(rows)
    )
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.update:
        doc = args.update.read_text()
        start, stop = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        args.update.write_text(doc[:start] + "\n" + text + doc[stop:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
