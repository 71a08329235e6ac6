"""Planning of the multi-TR rules (``workflow/rules/multitr.smk``): settings, paths and
the checkpoint-dependent input lists (paths in, paths out).

The workflow's input functions (``workflow/rules/common.smk``) call these once the
ingest checkpoint of a dataset exists; nothing here reads imaging data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from brainharmony.planning import anat as ap
from brainharmony.planning import func as fp
from brainharmony.planning.ingest import PARCEL_SERIES

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
    #: Datasets of kind ``parcellated`` (no T1w: no volume shard).
    parcellated: tuple[str, ...] = ()

    @property
    def t1_pretrain(self) -> tuple[str, ...]:
        """The pretraining datasets that have T1w images (not ``parcellated``)."""
        return tuple(d for d in self.pretrain if d not in self.parcellated)

    @property
    def series_shard(self) -> str:
        return series_shard("series")

    @property
    def series_index(self) -> str:
        return series_shard("index")

    @property
    def volume_shard(self) -> str:
        return VOLUME_SHARD

    @property
    def volume_index(self) -> str:
        return VOLUME_INDEX

    @property
    def scaling_stats(self) -> str:
        return SCALING_STATS

    @property
    def volume_shards(self) -> list[str]:
        """The pretraining datasets' T1 volume shards (:func:`require_t1_pretrain`)."""
        return [
            VOLUME_SHARD.format(dataset=d) for d in require_t1_pretrain(self, "BrainHarmonix-S")
        ]

    @property
    def volume_indexes(self) -> list[str]:
        """The pretraining datasets' T1 volume shard indexes."""
        return [
            VOLUME_INDEX.format(dataset=d) for d in require_t1_pretrain(self, "BrainHarmonix-S")
        ]


def require_t1_pretrain(plan: MultiTRPlan, what: str) -> tuple[str, ...]:
    """The pretraining datasets with T1w; the error that says so when there are none.

    Raises
    ------
    ValueError
        Every pretraining dataset is ``parcellated``: ``what`` (BrainHarmonix-S, the
        Harmonizer) cannot be trained.
    """
    if not plan.t1_pretrain:
        raise ValueError(
            f"{what} needs T1w images, but every pretraining dataset "
            f"({', '.join(plan.pretrain)}) is of kind parcellated (released parcel series, "
            "no images): add a BIDS dataset to pretrain.datasets, or request only targets "
            "without it (multitr_all, evaluate with FC / BrainHarmonix-F / predictor models)"
        )
    return plan.t1_pretrain


def multitr_from_config(config: Mapping[str, Any]) -> MultiTRPlan:
    """The multi-TR settings of a validated workflow config."""
    block = config["multitr"]
    pre = config["pretrain"]["datasets"]
    datasets = list(config["datasets"])
    chosen = tuple(pre) if pre else tuple(datasets)
    unknown = [d for d in chosen if d not in datasets]
    if unknown:
        raise ValueError(f"pretrain.datasets names unknown datasets {unknown}; known: {datasets}")
    max_tr = block["max_tr"]
    return MultiTRPlan(
        factors=tuple(int(f) for f in block["factors"]),
        max_tr=None if max_tr is None else float(max_tr),
        method=str(block["method"]),
        seed=int(block["seed"]),
        scaling_mode=str(block["scaling"]),
        pretrain=chosen,
        parcellated=tuple(
            sorted(n for n, ds in config["datasets"].items() if ds.get("kind") == "parcellated")
        ),
    )


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
    """The functional stage's denoised series of every run of ``dataset`` (of a
    ``parcellated`` dataset: its released series in the same format, rule
    ``parcel_series``)."""
    if dataset in func_plan.parcellated:
        pattern = PARCEL_SERIES
    else:
        pattern = fp.denoise_outputs(func_plan)["timeseries"]
    scans = ingest_checkpoint.get(dataset=dataset).output.scans
    return [
        pattern.format(dataset=dataset, fdir=r.fdir, fstem=r.fstem)
        for r in fp.runs(scans, tasks[dataset])
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
    for ds in plan.t1_pretrain if kind == "volumes" else plan.pretrain:
        if kind == "volumes":
            shards.append(VOLUME_SHARD.format(dataset=ds))
            indexes.append(VOLUME_INDEX.format(dataset=ds))
            continue
        for ms in target_ms(ds, ingest_checkpoint, plan):
            shards.append(series_shard("series").format(dataset=ds, ms=ms))
            indexes.append(series_shard("index").format(dataset=ds, ms=ms))
    return shards, indexes
