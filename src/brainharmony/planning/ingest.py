"""Planning of the ingest rule (``workflow/rules/ingest.smk``): the datasets and options."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


def phenotype_arg(spec: Mapping[str, str]) -> str:
    """``col:kind,...`` of a dataset's ``phenotypes`` block."""
    return ",".join(f"{col}:{kind}" for col, kind in spec.items())


def plan_from_config(config: Mapping[str, Any]) -> IngestPlan:
    """The ingest plan of a validated workflow config."""
    block = config["ingest"]
    return IngestPlan(
        datasets=config["datasets"],
        min_volumes=block["min_volumes"],
        tr_tolerance=block["tr_tolerance"],
        tr_conflict=block["tr_conflict"],
        tr_range=block["tr_range"],
    )
