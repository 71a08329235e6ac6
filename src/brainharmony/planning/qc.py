"""Planning of the group-QC rule (``workflow/rules/qc.smk``): its output paths."""

from __future__ import annotations

from dataclasses import dataclass

#: Per dataset: the group QC table, its sidecar and the folder of subject pages.
OUTPUTS: dict[str, str] = {
    "table": "results/qc/{dataset}/group_qc.tsv",
    "sidecar": "results/qc/{dataset}/group_qc.json",
    "pages": "results/qc/{dataset}/subjects",
}


@dataclass(frozen=True)
class QCPlan:
    """What the group-QC rule reads (it has no settings of its own)."""

    @property
    def table(self) -> str:
        return OUTPUTS["table"]

    @property
    def sidecar(self) -> str:
        return OUTPUTS["sidecar"]

    @property
    def pages(self) -> str:
        return OUTPUTS["pages"]
