"""``brainharmony harmonics``: Laplace-Beltrami eigenmodes of a cortical surface, per parcel.

The eigenmodes and their parcel means are :mod:`brainharmony.geometry.harmonics`; this
command writes the table, its sidecar, the vertex modes and the QC figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from brainharmony.geometry.harmonics import compute_harmonics, plot_harmonics_qc, write_table
from brainharmony.geometry.surfaces import HEMISPHERES
from brainharmony.io import InputDataError, provenance, sidecar_path, write_json, write_npy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony harmonics``."""
    parser.add_argument("--out-table", required=True, type=Path, help="ROI x K table (.tsv/.csv)")
    parser.add_argument("--n-modes", type=int, default=200, help="modes per hemisphere (200)")
    parser.add_argument("--template", choices=("fslr32k", "fsaverage5"), default="fslr32k")
    parser.add_argument(
        "--atlas", default="schaefer400", help="template atlas shipped offline (schaefer400)"
    )
    parser.add_argument(
        "--labels", nargs=2, type=Path, metavar=("LH", "RH"), help="per-hemisphere label files"
    )
    parser.add_argument(
        "--surfaces", nargs=2, type=Path, metavar=("LH", "RH"), help="per-hemisphere surfaces"
    )
    parser.add_argument("--cortex", choices=("auto", "mask", "labels"), default="auto")
    parser.add_argument("--solver", choices=("auto", "cholmod", "splu"), default="auto")
    parser.add_argument("--lump", action="store_true", help="lumped mass matrix")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads for the solver (1)")
    parser.add_argument(
        "--qc-modes", type=int, nargs="+", default=[1, 2, 3, 4], help="modes in the QC figure"
    )
    parser.add_argument(
        "--out-modes",
        nargs=2,
        type=Path,
        metavar=("LH", "RH"),
        help="vertex x K modes per hemisphere (.npy, float32, NaN off cortex)",
    )
    parser.add_argument("--qc-figure", type=Path, help="PNG of the first modes")


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony harmonics``."""
    table, hemis = compute_harmonics(
        n_modes=args.n_modes,
        template=args.template,
        atlas=args.atlas,
        label_files=args.labels,
        surface_files=args.surfaces,
        cortex=args.cortex,
        solver=args.solver,
        lump=args.lump,
        threads=args.threads,
    )
    write_table(table, args.out_table)
    if args.out_modes is not None:
        for path, h in zip(args.out_modes, hemis, strict=True):
            write_npy(path, h.vertex_modes(np.float32))
    if args.qc_figure is not None:
        plot_harmonics_qc(hemis, args.qc_figure, modes=args.qc_modes)
    params = {
        "n_modes": args.n_modes,
        "template": args.template,
        "atlas": None if args.labels else args.atlas,
        "cortex": args.cortex,
        "solver": hemis[0].modes.solver,
        "mass": "lumped" if args.lump else "consistent",
    }
    inputs = [str(p) for p in (args.labels or [])] + [str(p) for p in (args.surfaces or [])]
    sidecar = {
        "Description": "Laplace-Beltrami eigenmodes of the cortex (medial wall excluded), "
        "averaged within parcels with vertex-area weights; rows LH then RH.",
        "Conventions": "mass-normalised (Phi^T M Phi = I); sign: largest-magnitude vertex "
        "value positive; mode_1 = 1/sqrt(cortex area)",
        "Hemispheres": {
            hemi: {
                "surface": h.surface.name,
                "n_vertices": int(h.surface.vertices.shape[0]),
                "n_cortex_vertices": int(h.cortex_index.size),
                "cortex_area": float(h.modes.vertex_area.sum()),
                "n_parcels": int(h.parcels.size),
                "eigenvalues": h.modes.eigenvalues.tolist(),
            }
            for hemi, h in zip(HEMISPHERES, hemis, strict=True)
        },
        **provenance(step="harmonics", inputs=inputs, parameters=params),
    }

    write_json(sidecar_path(args.out_table), sidecar)
    if table.isna().any().any():  # pragma: no cover - parcel_means raises first
        raise InputDataError(args.out_table, "harmonics table has missing values")
    return 0
