"""The ``brainharmony`` command line: one sub-command per pipeline step.

Each sub-command is one module of :mod:`brainharmony.pipelines` (the BIDS-App ``run``:
:mod:`brainharmony.pipelines.bids_app`) exposing ``add_arguments(parser)`` and
``run(args) -> int``: argument parsing, the calls into the library, messages and exit
status. The library modules under it (train, evaluate, models, the stages, core) take
typed parameters and know nothing of argparse. This file only lists the commands and
imports the chosen one, so importing the CLI stays cheap; for the same reason a command
module may import the library inside ``run()`` (so that ``brainharmony <command> --help``
stays fast), the one place besides heavy optional dependencies (torch outside
``models/``, nipype, flash_attn, mamba_ssm) where a local import is allowed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from brainharmony._version import __version__
from brainharmony.io import STORAGE_ERRNOS, InputDataError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("brainharmony.pipelines.demo", "generate demo BIDS datasets with planted truth"),
    "ingest": (
        "brainharmony.pipelines.ingest",
        "index a BIDS dataset into scans.tsv / excluded.tsv",
    ),
    "parcel-series": (
        "brainharmony.pipelines.parcel_series",
        "one released parcel series (dataset kind parcellated) in the func stage's format",
    ),
    "run": (
        "brainharmony.pipelines.bids_app",
        "BIDS-App entry point: BIDS_DIR OUTPUT_DIR participant|group [-- snakemake options]",
    ),
    "validate-config": (
        "brainharmony.pipelines.validate_config",
        "validate a workflow config file",
    ),
    "anat": (
        "brainharmony.pipelines.anat",
        "T1w to template space: brain mask, transforms, model-ready box",
    ),
    "templates": (
        "brainharmony.pipelines.templates",
        "write the anatomy template resource files (read by anat --template-dir)",
    ),
    "func": (
        "brainharmony.pipelines.func",
        "BOLD run to denoised Schaefer-400 series (native, fMRIPrep, derivatives)",
    ),
    "harmonics": (
        "brainharmony.pipelines.harmonics",
        "Laplace-Beltrami eigenmodes of a cortical surface, averaged per parcel",
    ),
    "gradients": ("brainharmony.pipelines.gradients", "diffusion-map gradients of a group FC"),
    "resample": ("brainharmony.pipelines.resample", "resample an ROI series to another TR"),
    "multitr": (
        "brainharmony.pipelines.multitr",
        "resample a dataset's series to one target TR and pack them",
    ),
    "scaling-stats": (
        "brainharmony.pipelines.scaling",
        "per-ROI robust-scaling statistics (median, IQR) over a training set",
    ),
    "splits": ("brainharmony.pipelines.splits", "seeded subject-level cross-validation splits"),
    "pack": ("brainharmony.pipelines.pack", "pack ROI series or T1 volumes into training shards"),
    "eval-labels": (
        "brainharmony.pipelines.eval_labels",
        "per-subject label table of one evaluation task (input of splits and evaluate)",
    ),
    "evaluate": (
        "brainharmony.pipelines.evaluate",
        "cross-validated predictions of every harness model for one task",
    ),
    "tables": (
        "brainharmony.pipelines.tables",
        "merge predictions; metrics, paired tests and paper-layout tables",
    ),
    "group-qc": (
        "brainharmony.pipelines.group_qc",
        "group QC table of one dataset (every run and exclusion) and one page per subject",
    ),
    "report": ("brainharmony.pipelines.report", "the self-contained HTML report"),
    "train": (
        "brainharmony.pipelines.train",
        "train a model from its YAML on packed shards (resumable; DDP under torchrun)",
    ),
    "predictor-cv": (
        "brainharmony.pipelines.predictor_cv",
        "LMAE-RWMoE-SSM predictor trained per fold; val/test predictions for the harness",
    ),
    "embed": (
        "brainharmony.pipelines.embed",
        "frozen encoders -> per-subject token files and pooled features (F, S, Harmonizer)",
    ),
    "import-weights": (
        "brainharmony.pipelines.import_weights",
        "released checkpoints (bh-f, bh-s, harmonizer, brain-jepa) -> a model folder",
    ),
}


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line (first non-option argument)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser. Only the chosen sub-command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="brainharmony",
        description="Raw BIDS MRI to brain foundation models and their evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _chosen_command(sys.argv[1:] if argv is None else argv)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(sp)
        sp.set_defaults(_module=module)
    return parser


#: Sub-commands that pass the arguments after ``--`` on to another program.
PASSTHROUGH = ("run",)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if _chosen_command(argv) in PASSTHROUGH and "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except InputDataError as err:
        print(f"brainharmony {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        # Every writer is atomic: the file being written was removed, older outputs stand.
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"brainharmony {args.command}: error: {where}{os.strerror(err.errno)} while "
            "writing; nothing partial was kept. Free space (or raise the quota) and rerun.",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
