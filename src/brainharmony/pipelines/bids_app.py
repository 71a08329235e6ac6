"""``brainharmony run``: the BIDS-Apps entry point over the Snakemake workflow.

::

    brainharmony run BIDS_DIR OUTPUT_DIR participant [--participant-label 01 02]
                     [--config my.yaml] [--profile slurm] [--cores N] [-- SNAKEMAKE OPTIONS]
    brainharmony run BIDS_DIR OUTPUT_DIR group [...]

It follows the BIDS-Apps convention (Gorgolewski et al. 2017; the command lines of
hippunfold and snakebids): the raw dataset, the output folder and the analysis level
are positional. ``participant`` runs the per-subject stages (ingest, anatomy,
function and their QC), ``group`` everything else (geometry, multi-TR packing,
training and, when the config defines tasks, evaluation and the report).

What it does is what a Snakemake user would type: it writes the run's config to
``OUTPUT_DIR/config/brainharmony.yaml`` (the user's ``--config``, if any, with this
dataset and the participant selection) and runs ``snakemake`` on the repository's
Snakefile with ``--directory OUTPUT_DIR``, so ``results/``, ``logs/`` and Snakemake's
own state all live under the output folder. Snakemake stays the primary interface;
the written config can be rerun with ``snakemake --configfile`` directly.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from brainharmony.io import InputDataError, atomic_path

__all__ = ["add_arguments", "build_config", "run", "snakemake_command"]

logger = logging.getLogger(__name__)

#: Stage targets per analysis level (workflow/rules/targets.smk).
LEVELS: dict[str, tuple[str, ...]] = {
    "participant": ("ingest_all", "anat_all", "func_all", "qc_all"),
    "group": ("all",),
}
CONFIG_NAME = Path("config") / "brainharmony.yaml"


def repository_root() -> Path:
    """The folder holding the workflow (Snakefile, workflow/, models/, slurm/).

    The package runs from a clone (``pip install -e .``, as ``make install`` does);
    the workflow files are not part of a wheel.
    """
    root = Path(__file__).resolve().parents[3]
    if not (root / "Snakefile").is_file() or not (root / "workflow").is_dir():
        raise InputDataError(
            root,
            "the workflow files (Snakefile, workflow/) are not beside the package; "
            "`brainharmony run` needs the package installed from a clone (make install)",
        )
    return root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony run`` (options after ``--`` go to Snakemake)."""
    parser.add_argument("bids_dir", type=Path, help="the raw BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="where results/ and logs/ are written")
    parser.add_argument(
        "analysis_level",
        choices=tuple(LEVELS),
        help="participant: ingest, anatomy, function, QC per subject; "
        "group: geometry, multi-TR, training, evaluation",
    )
    parser.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="subjects to process (with or without sub-); default: every subject",
    )
    parser.add_argument(
        "--exclude-participant-label",
        "--exclude_participant_label",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="subjects to leave out (snakebids' option; the config's exclude_subjects)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="a workflow config (scientific settings; workflow/schemas/config.schema.yaml); "
        "its datasets are replaced by BIDS_DIR",
    )
    parser.add_argument(
        "--dataset-name",
        help="the dataset's name in the outputs (default: the config's dataset with this "
        "bids_dir, else the folder name, letters and digits only)",
    )
    parser.add_argument(
        "--profile",
        help="Snakemake profile, e.g. slurm (the repository's) or a folder of your own",
    )
    parser.add_argument(
        "--cores", default="all", help="local cores (default: all; ignored by cluster profiles)"
    )
    parser.add_argument(
        "-n", "--dry-run", action="store_true", help="plan only (snakemake --dry-run)"
    )


def _dataset_name(bids_dir: Path, given: str | None) -> str:
    if given is not None:
        if not re.fullmatch(r"[A-Za-z0-9]+", given):
            raise InputDataError(None, f"--dataset-name {given!r}: letters and digits only")
        return given
    name = re.sub(r"[^A-Za-z0-9]", "", bids_dir.name)
    return name or "bids"


def build_config(
    bids_dir: Path,
    *,
    base: dict[str, Any] | None = None,
    participant_label: list[str] | None = None,
    exclude_label: list[str] | None = None,
    dataset_name: str | None = None,
) -> dict[str, Any]:
    """The run's config: ``base`` with ``datasets`` reduced to this BIDS folder.

    A dataset of ``base`` whose ``bids_dir`` is this folder keeps its name and settings
    (so ``pretrain``/``evaluate`` entries that name it still apply); otherwise a new
    entry is made. ``participant_label`` and ``exclude_label`` replace the dataset's
    include and exclude lists.
    """
    bids_dir = bids_dir.resolve()
    config = dict(base or {})
    datasets = dict(config.get("datasets") or {})
    chosen: tuple[str, dict[str, Any]] | None = None
    for name, entry in datasets.items():
        given = Path(str((entry or {}).get("bids_dir", "")))
        if given.is_absolute() and given.resolve() == bids_dir:
            chosen = (str(name), dict(entry))
            break
    if chosen is None and dataset_name is None and len(datasets) == 1:
        # One dataset in the user's config with another (e.g. relative) path: take its
        # settings for this folder.
        name, entry = next(iter(datasets.items()))
        chosen = (str(name), dict(entry or {}))
    if chosen is None:
        chosen = (_dataset_name(bids_dir, dataset_name), {})
    elif dataset_name is not None:
        chosen = (_dataset_name(bids_dir, dataset_name), chosen[1])
    name, entry = chosen
    entry["bids_dir"] = str(bids_dir)
    entry.pop("demo", None)
    if participant_label:
        entry["participant_label"] = [str(p).removeprefix("sub-") for p in participant_label]
    if exclude_label:
        entry["exclude_subjects"] = [str(p).removeprefix("sub-") for p in exclude_label]
    dropped = sorted(set(datasets) - {name})
    if dropped:
        logger.warning("config datasets %s are not %s; left out of this run", dropped, bids_dir)
    config["datasets"] = {name: entry}
    config.pop("demo", None)
    pretrain = config.get("pretrain") or {}
    if pretrain.get("datasets"):
        config["pretrain"] = {**pretrain, "datasets": [name]}
    return config


def snakemake_command(
    config_path: Path,
    output_dir: Path,
    level: str,
    *,
    profile: str | None = None,
    cores: str = "all",
    dry_run: bool = False,
    extra: list[str] | None = None,
) -> list[str]:
    """The ``snakemake`` command line of one analysis level."""
    root = repository_root()
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(root / "Snakefile"),
        "--directory",
        str(output_dir),
        "--configfile",
        str(config_path),
    ]
    if profile:
        cmd += ["--profile", profile]
    else:
        cmd += ["--cores", str(cores)]
    if dry_run:
        cmd.append("--dry-run")
    cmd += list(extra or [])
    cmd += list(LEVELS[level])
    return cmd


def _profile(given: str | None) -> str | None:
    """A profile folder relative to where the user stands is made absolute; a bare name
    that is not a folder here is left to Snakemake, which runs from the repository root
    (so ``slurm`` is the shipped profile)."""
    if given is None:
        return None
    path = Path(given).expanduser()
    return str(path.resolve()) if path.is_dir() else given


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony run``; returns Snakemake's exit status."""
    from brainharmony.config import ConfigError, load_yaml, validate_config

    bids_dir = args.bids_dir.expanduser()
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputDataError(
            bids_dir, "not a BIDS dataset (no dataset_description.json in this folder)"
        )
    output_dir = args.output_dir.expanduser().resolve()
    if output_dir == bids_dir.resolve() or bids_dir.resolve() in output_dir.parents:
        # Inside the raw dataset is allowed by BIDS only under derivatives/.
        if "derivatives" not in output_dir.relative_to(bids_dir.resolve()).parts:
            raise InputDataError(
                output_dir,
                "the output folder may not be inside the raw dataset "
                "(except under its derivatives/)",
            )
    base = None
    if args.config is not None:
        base = load_yaml(args.config.expanduser())
        if base is not None and not isinstance(base, dict):
            raise InputDataError(args.config, "a config file must be a mapping")
    config = build_config(
        bids_dir,
        base=base,
        participant_label=args.participant_label,
        exclude_label=args.exclude_participant_label,
        dataset_name=args.dataset_name,
    )
    try:
        validate_config(
            yaml.safe_load(yaml.safe_dump(config)),
            repository_root() / "workflow" / "schemas" / "config.schema.yaml",
        )
    except ConfigError as err:
        source = args.config if args.config is not None else "the run's config"
        raise InputDataError(None, f"{source}: {err}") from None
    config_path = output_dir / CONFIG_NAME
    config_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(config_path) as tmp:
        Path(tmp).write_text(
            "# Written by `brainharmony run`; rerun with\n"
            f"#   snakemake -s {repository_root() / 'Snakefile'} --directory {output_dir} "
            f"--configfile {config_path}\n" + yaml.safe_dump(config, sort_keys=False),
            encoding="utf-8",
        )
    cmd = snakemake_command(
        config_path,
        output_dir,
        args.analysis_level,
        profile=_profile(args.profile),
        cores=args.cores,
        dry_run=args.dry_run,
        extra=list(getattr(args, "passthrough", None) or []),
    )
    logger.info("running: %s", shlex.join(cmd))
    print(shlex.join(cmd), file=sys.stderr)
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(cmd, cwd=repository_root(), env=env, check=False).returncode
