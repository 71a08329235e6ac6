"""Planning-time helpers of the geometry and multi-TR rules (paths in, paths out).

The rules (``workflow/rules/geometry.smk``, ``multitr.smk``) call these through
lambdas once the ingest checkpoint of a dataset exists; nothing here reads imaging
data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ATLAS = "Schaefer400"
ROOT = "results/multitr"


@dataclass(frozen=True)
class MultiTRPlan:
    """The ``multitr:`` and ``pretrain:`` config blocks with defaults."""

    factors: tuple[int, ...] = (1, 2, 3, 4)
    max_tr: float | None = 3.0
    method: str = "polyphase"
    seed: int = 0
    scaling_mode: str = "all_frames"
    pretrain: tuple[str, ...] = ()


@dataclass(frozen=True)
class GeometryPlan:
    """The ``geometry:`` config block with defaults."""

    surface: str = "fslr32k"
    n_modes: int = 200
    n_gradients: int = 30
    kernel: str = "normalized_angle"
    sparsity: float = 0.9


def multitr_from_config(config: Mapping[str, Any]) -> MultiTRPlan:
    """The multi-TR settings of a (validated) workflow config."""
    block = dict(config.get("multitr") or {})
    pre = (config.get("pretrain") or {}).get("datasets")
    datasets = list(config.get("datasets") or {})
    chosen = tuple(pre) if pre else tuple(datasets)
    unknown = [d for d in chosen if d not in datasets]
    if unknown:
        raise ValueError(f"pretrain.datasets names unknown datasets {unknown}; known: {datasets}")
    max_tr = block.get("max_tr", 3.0)
    return MultiTRPlan(
        factors=tuple(int(f) for f in block.get("factors", (1, 2, 3, 4))),
        max_tr=None if max_tr is None else float(max_tr),
        method=str(block.get("method", "polyphase")),
        seed=int(block.get("seed", 0)),
        scaling_mode=str(block.get("scaling", "all_frames")),
        pretrain=chosen,
    )


def geometry_from_config(config: Mapping[str, Any]) -> GeometryPlan:
    """The geometry settings of a (validated) workflow config."""
    block = dict(config.get("geometry") or {})
    return GeometryPlan(
        surface=str(block.get("surface", "fslr32k")),
        n_modes=int(block.get("n_modes", 200)),
        n_gradients=int(block.get("n_gradients", 30)),
        kernel=str(block.get("kernel", "normalized_angle")),
        sparsity=float(block.get("sparsity", 0.9)),
    )


# --------------------------------------------------------------------------------------
# File names
# --------------------------------------------------------------------------------------
def harmonics_table(plan: GeometryPlan) -> str:
    return f"results/geometry/atlas-{ATLAS}_surf-{plan.surface}_k-{plan.n_modes}_harmonics.tsv"


def harmonics_figure(plan: GeometryPlan) -> str:
    return (
        f"results/geometry/figures/atlas-{ATLAS}_surf-{plan.surface}_k-{plan.n_modes}_harmonics.png"
    )


def group_gradients(plan: GeometryPlan) -> str:
    """Gradients of the pretraining set's group FC (the reference)."""
    return f"results/geometry/atlas-{ATLAS}_g-{plan.n_gradients}_gradients.tsv"


def dataset_gradients(plan: GeometryPlan) -> str:
    """Per-dataset gradients, Procrustes-aligned to the group reference."""
    stem = f"{{dataset}}_atlas-{ATLAS}_g-{plan.n_gradients}_gradients.tsv"
    return f"results/geometry/{{dataset}}/{stem}"


def series_shard(kind: str = "series") -> str:
    """Packed shard (``kind`` series) / index of one dataset at one TR."""
    return {
        "series": f"{ROOT}/{{dataset}}/{{dataset}}_tr-{{ms}}_series.npy",
        "index": f"{ROOT}/{{dataset}}/{{dataset}}_tr-{{ms}}_index.tsv",
    }[kind]


VOLUME_SHARD = f"{ROOT}/{{dataset}}/{{dataset}}_T1w_volumes.npy"
VOLUME_INDEX = f"{ROOT}/{{dataset}}/{{dataset}}_T1w_index.tsv"
SCALING_STATS = f"{ROOT}/atlas-{ATLAS}_desc-robust_scaling.json"


# --------------------------------------------------------------------------------------
# Checkpoint-dependent lists
# --------------------------------------------------------------------------------------
def denoised_series(
    dataset: str, ingest_checkpoint: Any, func_plan: Any, tasks: Mapping[str, str]
) -> list[str]:
    """The functional stage's denoised series of every run of ``dataset``."""
    from brainharmony.func import planning as fp

    pattern = fp.denoise_outputs(func_plan)["timeseries"]
    scans = ingest_checkpoint.get(dataset=dataset).output.scans
    return [
        pattern.format(dataset=dataset, fdir=r.fdir, fstem=r.fstem)
        for r in fp.runs(scans, tasks.get(dataset, "rest"))
    ]


def scans_of(dataset: str, ingest_checkpoint: Any) -> str:
    return str(ingest_checkpoint.get(dataset=dataset).output.scans)


def target_ms(dataset: str, ingest_checkpoint: Any, plan: MultiTRPlan) -> list[int]:
    """Target TRs (ms) of one dataset, from its scans.tsv."""
    from brainharmony.timeseries.multitr import targets_of_scans

    return list(targets_of_scans(scans_of(dataset, ingest_checkpoint), plan.factors, plan.max_tr))


def multitr_targets(
    datasets: Iterable[str], ingest_checkpoint: Any, plan: MultiTRPlan
) -> list[str]:
    """Every shard and index of every dataset (the ``multitr_all`` target)."""
    out: list[str] = []
    for ds in datasets:
        for ms in target_ms(ds, ingest_checkpoint, plan):
            out += [series_shard("series").format(dataset=ds, ms=ms)]
            out += [series_shard("index").format(dataset=ds, ms=ms)]
    return out


def model_volumes(
    dataset: str, ingest_checkpoint: Any, anat_settings: Any, kind: str = "model"
) -> list[str]:
    """The anatomy stage's model-ready T1 volumes of ``dataset`` (or their sidecars).

    Parameters
    ----------
    dataset : str
    ingest_checkpoint : snakemake checkpoint
    anat_settings : AnatSettings
    kind : {"model", "model_json"}
        The volumes, or their JSON sidecars (which say whether the anatomy stage
        excluded a T1w; packing leaves those out).
    """
    from brainharmony.anat import planning as ap

    if kind not in ("model", "model_json"):
        raise ValueError(f"kind must be 'model' or 'model_json'; got {kind!r}")
    scans = ingest_checkpoint.get(dataset=dataset).output.scans
    out = []
    for sub, ses, _ in ap.t1w_rows(scans):
        pattern = ap.rule_outputs(anat_settings, session=ses is not None)[kind]
        out.append(pattern.format(dataset=dataset, subject=sub, session=ses or ""))
    return out


def pretrain_series(
    plan: MultiTRPlan, ingest_checkpoint: Any, func_plan: Any, tasks: Mapping[str, str]
) -> list[str]:
    """Denoised series of every pretraining dataset (scaling statistics, group FC)."""
    out: list[str] = []
    for ds in plan.pretrain:
        out += denoised_series(ds, ingest_checkpoint, func_plan, tasks)
    return out


def quoted(paths: Sequence[str]) -> str:
    """Shell-quoted, space-separated paths for a ``shell:`` command."""
    import shlex

    return " ".join(shlex.quote(str(p)) for p in paths)


def native_ms(dataset: str, ingest_checkpoint: Any) -> int:
    """The source TR (ms) of a dataset whose runs share one TR.

    Raises
    ------
    ValueError
        The dataset mixes TRs (split it into one dataset per TR, e.g. per site).
    """
    from brainharmony.ingest import read_scans
    from brainharmony.timeseries.multitr import tr_ms

    trs = sorted({tr_ms(float(t)) for t in read_scans(scans_of(dataset, ingest_checkpoint))["tr"]})
    if len(trs) != 1:
        raise ValueError(
            f"dataset {dataset!r} has runs at several TRs ({trs} ms); the embedding step "
            "needs one TR per dataset: split it into one dataset per TR (e.g. per site)"
        )
    return trs[0]


def pretrain_shards(
    plan: MultiTRPlan, ingest_checkpoint: Any, kind: str = "series"
) -> tuple[list[str], list[str]]:
    """(shards, indexes) of the pretraining datasets: every TR (series) or the T1 volumes."""
    shards: list[str] = []
    indexes: list[str] = []
    for ds in plan.pretrain:
        if kind == "volumes":
            shards.append(VOLUME_SHARD.format(dataset=ds))
            indexes.append(VOLUME_INDEX.format(dataset=ds))
            continue
        for ms in target_ms(ds, ingest_checkpoint, plan):
            shards.append(series_shard("series").format(dataset=ds, ms=ms))
            indexes.append(series_shard("index").format(dataset=ds, ms=ms))
    return shards, indexes
