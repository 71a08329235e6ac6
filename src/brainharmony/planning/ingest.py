"""Planning of the ingest rule (``workflow/rules/ingest.smk``): the datasets and options."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Parcel count of the workflow's atlas (Schaefer-400): a ``parcellated`` dataset must
#: claim it (``datasets.<name>.n_rois``).
N_ROIS = 400
#: A ``parcellated`` dataset's series in the func stage's format (rule ``parcel_series``;
#: wildcards ``dataset``, ``fdir``, ``fstem`` as in the func rules).
PARCEL_SERIES = (
    "results/ingest/{dataset}/series/{fdir}/func/"
    "{fstem}_atlas-Schaefer400_desc-released_timeseries.tsv"
)

#: The ingest checkpoint's outputs per dataset (usable runs, left-out files, sidecar).
OUTPUTS: dict[str, str] = {
    "scans": "results/ingest/{dataset}/scans.tsv",
    "excluded": "results/ingest/{dataset}/excluded.tsv",
    "sidecar": "results/ingest/{dataset}/scans.json",
}


@dataclass(frozen=True)
class IngestPlan:
    """The ``datasets:`` and ``ingest:`` config blocks (schema defaults filled in).

    The ``ingest:`` values are kept as the config gives them: the rule passes them to
    the shell unchanged.
    """

    datasets: Mapping[str, Mapping[str, Any]]
    min_volumes: Any
    tr_tolerance: Any
    tr_conflict: Any
    tr_range: Any

    @property
    def outputs(self) -> dict[str, str]:
        return dict(OUTPUTS)

    @property
    def parcellated(self) -> list[str]:
        """The datasets of kind ``parcellated`` (released parcel series, no images)."""
        return parcellated(self.datasets)

    @property
    def bids_datasets(self) -> list[str]:
        """The datasets of kind ``bids`` (every stage runs on them), sorted."""
        return sorted(d for d in self.datasets if d not in self.parcellated)

    @property
    def bids_pattern(self) -> str:
        """Wildcard constraint matching the ``bids`` datasets' names only."""
        return names_pattern(self.bids_datasets)

    @property
    def parcellated_pattern(self) -> str:
        """Wildcard constraint matching the ``parcellated`` datasets' names only."""
        return names_pattern(self.parcellated)

    @property
    def parcel_series(self) -> str:
        return PARCEL_SERIES

    def source_path(self, dataset: str) -> str:
        """The file that stands for the dataset's input: the run table, or the BIDS
        folder's ``dataset_description.json``."""
        ds = self.datasets[dataset]
        if dataset in self.parcellated:
            return str(ds["run_table"])
        return str(Path(ds["bids_dir"]) / "dataset_description.json")

    def source_option(self, dataset: str) -> str:
        """``--run-table PATH --n-rois N`` or ``--bids-dir PATH``, shell-quoted."""
        ds = self.datasets[dataset]
        if dataset in self.parcellated:
            return f"--run-table {shlex.quote(str(ds['run_table']))} --n-rois {int(ds['n_rois'])}"
        return f"--bids-dir {shlex.quote(str(ds['bids_dir']))}"

    @property
    def tasks(self) -> dict[str, str]:
        """The BIDS task label of each dataset."""
        return {name: ds["task"] for name, ds in self.datasets.items()}

    def bids_dir(self, dataset: str) -> str:
        return self.datasets[dataset]["bids_dir"]

    def options(self, dataset: str) -> str:
        """The dataset's ``brainharmony ingest`` options, shell-quoted."""
        ds = self.datasets[dataset]
        opts = [f"--task {shlex.quote(ds['task'])}"]
        if ds["site_column"]:
            opts.append(f"--site-column {shlex.quote(ds['site_column'])}")
        if ds["exclude_subjects"]:
            opts.append("--exclude-subjects " + " ".join(map(shlex.quote, ds["exclude_subjects"])))
        if ds["participant_label"]:
            opts.append(
                "--participant-label " + " ".join(map(shlex.quote, ds["participant_label"]))
            )
        phen = phenotype_arg(ds["phenotypes"])
        if phen:
            opts.append(f"--phenotypes {shlex.quote(phen)}")
        return " ".join(opts)


def parcellated(datasets: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Names of the ``parcellated`` datasets of a ``datasets:`` block, sorted."""
    return sorted(name for name, ds in datasets.items() if ds.get("kind") == "parcellated")


def names_pattern(names: list[str]) -> str:
    """A regular expression matching exactly ``names`` (none: one that matches nothing)."""
    import re

    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def check_datasets(datasets: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse what a ``parcellated`` dataset cannot be.

    Raises
    ------
    ValueError
        Another parcel count than the workflow's atlas, ``demo: true``, or a
        ``bids_dir`` beside the ``run_table`` (which of the two is meant?).
    """
    for name in parcellated(datasets):
        ds = datasets[name]
        if int(ds["n_rois"]) != N_ROIS:
            raise ValueError(
                f"datasets.{name}.n_rois is {ds['n_rois']}, but the workflow's atlas is "
                f"Schaefer-{N_ROIS}: its models, harmonics and gradients are per parcel, so "
                f"only {N_ROIS}-parcel Schaefer series can join (re-parcellate the source "
                "data, or leave this dataset out)"
            )
        if ds["demo"]:
            raise ValueError(
                f"datasets.{name}: demo: true makes a BIDS dataset; kind parcellated reads "
                "a run table (drop one of the two)"
            )
        if ds.get("bids_dir"):
            raise ValueError(
                f"datasets.{name}: kind parcellated reads run_table; bids_dir is for kind bids "
                "(drop it)"
            )


def phenotype_arg(spec: Mapping[str, str]) -> str:
    """``col:kind,...`` of a dataset's ``phenotypes`` block."""
    return ",".join(f"{col}:{kind}" for col, kind in spec.items())


def plan_from_config(config: Mapping[str, Any]) -> IngestPlan:
    """The ingest plan of a validated workflow config."""
    block = config["ingest"]
    check_datasets(config["datasets"])
    return IngestPlan(
        datasets=config["datasets"],
        min_volumes=block["min_volumes"],
        tr_tolerance=block["tr_tolerance"],
        tr_conflict=block["tr_conflict"],
        tr_range=block["tr_range"],
    )
