"""Planning of the evaluation rules (``workflow/rules/evaluate.smk``): settings, paths,
arguments.

The workflow's input functions call these; nothing here reads data except the ingest
checkpoint's ``scans.tsv`` (through the functional-stage planning).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from brainharmony.evaluate.settings import (
    SECTION_FIGURE_STEM,
    EvalSettings,
    TaskSpec,
    settings_from_mapping,
)
from brainharmony.planning.multitr import SCALING_STATS, denoised_series, series_shard
from brainharmony.planning.train import EMBEDDINGS as TRAIN_EMBEDDINGS
from brainharmony.planning.train import VARIANT_EMBEDDING, Variant, model_outputs

#: Pooled-embedding file of a probe model, per workflow dataset ``{d}`` (the embedding
#: rules' outputs, :data:`brainharmony.planning.train.EMBEDDINGS`).
EMBEDDINGS: dict[str, str] = {
    f"probe_{name}": TRAIN_EMBEDDINGS[name].replace("{dataset}", "{d}")
    for name in ("bh_f", "bh_f_roisim", "bh_s", "harmonizer")
}
#: Predictions TSV of an externally trained model, per evaluation ``{dataset}``/``{task}``.
EXTERNAL: dict[str, str] = {
    "predictor": "results/eval/{dataset}/{task}/predictor/predictions.tsv",
}
#: The predictor's ROI x expert map (``predictor-cv --expert-weights / --expert-figure``),
#: beside its predictions; the report embeds the figure.
PREDICTOR_EXPERTS: dict[str, str] = {
    "weights": "results/eval/{dataset}/{task}/predictor/expert_weights.tsv",
    "figure": "results/eval/{dataset}/{task}/predictor/expert_weights.png",
}

#: Fine-tuning entries the workflow runs: the trained model role whose folder is
#: fine-tuned, and the data it is fine-tuned on (``tokens``: the frozen S/F encoders'
#: token files of each pooled dataset; ``series``: each dataset's series shard at its
#: own TR, with the pretraining scaling statistics).
FINETUNE: dict[str, tuple[str, str]] = {
    "finetune_harmonizer": ("harmonizer", "tokens"),
    "finetune_bh_f": ("bh_f", "series"),
}

#: Models whose inputs need T1w images (BrainHarmonix-S features, or the S+F token files
#: of the Harmonizer and of the ROI-similarity readout): a ``parcellated`` dataset has
#: none, so they leave it out (and a task with only such datasets goes without them).
#: ``probe_bh_f`` stays: rule ``embed_f`` writes its features without T1w.
NEEDS_T1: frozenset[str] = frozenset(
    {"probe_bh_s", "probe_harmonizer", "finetune_harmonizer", "probe_bh_f_roisim"}
)

LABELS = "results/eval/{dataset}/{task}/labels.tsv"
SPLITS_META = "results/splits/{dataset}/{task}/seed-{seed}/splits.json"
SPLITS_FOLD = "results/splits/{dataset}/{task}/seed-{seed}/fold-{k}.tsv"
PREDICTIONS = "results/eval/{dataset}/{task}/predictions.tsv"
#: Outputs of the tables rule (the paper table: ``PAPER_TABLE`` + .csv, .md, .tex).
TABLES: dict[str, str] = {
    "predictions": "results/eval/predictions.tsv",
    "predictions_json": "results/eval/predictions.json",
    "metrics": "results/tables/metrics.csv",
    "per_fold": "results/tables/metrics_per_fold.csv",
    "tests": "results/tables/tests.csv",
    "sidecar": "results/tables/tables.json",
}
PAPER_TABLE = "results/tables/paper_table"
#: A table section's figure (``evaluate.sections.<id>.figure``), next to the tables:
#: ``PAPER_FIGURE`` + .png (the figure) and .csv (its points).
PAPER_FIGURE = "results/tables/" + SECTION_FIGURE_STEM
REPORT = "results/report/index.html"


#: A JSON string literal (as :func:`json.dumps` writes it).
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def settings_json(settings: EvalSettings) -> str:
    """The settings as one JSON string (the ``--settings`` argument of the commands).

    Snakemake fills a rule's params string with the job's wildcards, so a brace inside a
    value (an ``evaluate.external`` pattern's ``{dataset}``, a label) is written as the
    JSON escape ``\\u007b`` / ``\\u007d``, which every JSON reader turns back into the
    same character.
    """
    text = json.dumps(settings.to_dict(), sort_keys=True)
    return _JSON_STRING.sub(
        lambda m: m.group(0).replace("{", "\\u007b").replace("}", "\\u007d"), text
    )


NO_TASKS = (
    "evaluate.tasks is empty: evaluation needs at least one downstream task, e.g.\n"
    "  evaluate:\n"
    "    tasks:\n"
    "      <dataset>:\n"
    "        age: {target: age, type: regression}\n"
    "(targets are participants.tsv columns; docs/evaluation.md)"
)


def require_tasks(settings: EvalSettings, targets: Sequence[str]) -> list[str]:
    """``targets`` when the config defines tasks; else the error that says so.

    Evaluation is the one stage that cannot run on the schema defaults alone: which
    phenotype to predict is the user's choice. ``all`` leaves it out then (the
    Snakefile says so); ``evaluate_all`` stops with this message.
    """
    if not settings.tasks:
        raise ValueError(NO_TASKS)
    return list(targets)


def tasks(settings: EvalSettings) -> list[tuple[str, str]]:
    """``(evaluation dataset, task)`` pairs in config order."""
    return [(t.dataset, t.name) for t in settings.tasks]


def task_of(settings: EvalSettings, wildcards: Any) -> TaskSpec:
    return settings.task(wildcards.dataset, wildcards.task)


def scans(settings: EvalSettings, wildcards: Any, ingest_checkpoint: Any) -> list[str]:
    """The ingest ``scans.tsv`` of every dataset pooled into the task's dataset."""
    return [
        str(ingest_checkpoint.get(dataset=d).output.scans)
        for d in task_of(settings, wildcards).datasets
    ]


def series(
    settings: EvalSettings,
    wildcards: Any,
    ingest_checkpoint: Any,
    func_plan: Any,
    func_tasks: Mapping[str, str],
) -> list[str]:
    """Denoised parcel series of every run of the pooled datasets (the FC input)."""
    out: list[str] = []
    for d in task_of(settings, wildcards).datasets:
        out += denoised_series(d, ingest_checkpoint, func_plan, func_tasks)
    return out


def split_metas(settings: EvalSettings, wildcards: Any) -> list[str]:
    """``splits.json`` of every seed of the task."""
    return [
        SPLITS_META.format(dataset=wildcards.dataset, task=wildcards.task, seed=s)
        for s in settings.seeds
    ]


def split_dirs(paths: Sequence[str]) -> str:
    """Shell-quoted split folders from their ``splits.json`` paths."""
    return " ".join(shlex.quote(str(p).rsplit("/", 1)[0]) for p in paths)


def t1_datasets(spec: TaskSpec, parcellated: Collection[str]) -> list[str]:
    """The task's pooled datasets that have T1w images."""
    return [d for d in spec.datasets if d not in parcellated]


def models_for(
    settings: EvalSettings,
    wildcards: Any,
    parcellated: Collection[str] = (),
    needs_t1: Collection[str] = NEEDS_T1,
) -> list[str]:
    """The models evaluated on a task: ``evaluate.models`` less those that need T1w
    (``needs_t1``, default :data:`NEEDS_T1`) when every dataset pooled into the task is
    ``parcellated``."""
    spec = task_of(settings, wildcards)
    if t1_datasets(spec, parcellated):
        return list(settings.models)
    return [m for m in settings.models if m not in needs_t1]


def models_not_run(
    settings: EvalSettings,
    wildcards: Any,
    parcellated: Collection[str] = (),
    needs_t1: Collection[str] = NEEDS_T1,
) -> dict[str, str]:
    """The models of ``evaluate.models`` that :func:`models_for` leaves out of a task,
    with the reason (``brainharmony evaluate --not-run``; the tables' notes quote it)."""
    spec = task_of(settings, wildcards)
    run = set(models_for(settings, wildcards, parcellated, needs_t1))
    return {
        m: (
            f"needs T1w images, and every dataset of {spec.dataset}/{spec.name} "
            f"({', '.join(spec.datasets)}) is parcellated series without T1w"
        )
        for m in settings.models
        if m not in run
    }


def not_run_args(reasons: Mapping[str, str]) -> str:
    """``--not-run NAME=REASON`` arguments (quoted) of :func:`models_not_run`."""
    return " ".join(f"--not-run {shlex.quote(f'{m}={r}')}" for m, r in reasons.items())


def model_inputs(
    settings: EvalSettings,
    wildcards: Any,
    embeddings: Mapping[str, str] = EMBEDDINGS,
    external: Mapping[str, str] = EXTERNAL,
    native_ms: Callable[[str], int] | None = None,
    outputs: Callable[[str], Mapping[str, str]] = model_outputs,
    parcellated: Collection[str] = (),
    needs_t1: Collection[str] = NEEDS_T1,
) -> dict[str, list[str]]:
    """Named inputs of the models that need more than FC (for ``unpack``).

    A fine-tuning entry (:data:`FINETUNE`) gets its model folder's files under its
    name and its data under ``<name>__tokens`` or ``<name>__shards`` (series shard and
    index, pairwise) plus ``<name>__scaling``; ``native_ms(dataset)`` gives a
    dataset's own TR in ms (the shards' file names) and is needed for ``series``;
    ``outputs(role)`` gives a role's model files (``TrainPlan.outputs``: a
    ``train.pretrained`` folder or the training rule's outputs); ``embeddings`` and
    ``needs_t1`` are :attr:`EvalPlan.embeddings` / :attr:`EvalPlan.needs_t1` (the
    variants' features included).
    """
    spec = task_of(settings, wildcards)
    files: dict[str, list[str]] = {}
    with_t1 = t1_datasets(spec, parcellated)
    for model in models_for(settings, wildcards, parcellated, needs_t1):
        pooled = with_t1 if model in needs_t1 else spec.datasets
        if model in embeddings:
            files[model] = [embeddings[model].format(d=d) for d in pooled]
        elif model in external:
            files[model] = [external[model].format(dataset=spec.dataset, task=spec.name)]
        elif model in FINETUNE:
            role, data = FINETUNE[model]
            out = outputs(role)
            files[model] = [out["weights"], out["config"]]
            if data == "tokens":
                files[f"{model}__tokens"] = [
                    TRAIN_EMBEDDINGS["tokens"].format(dataset=d) for d in pooled
                ]
            else:
                if native_ms is None:
                    raise ValueError(f"{model}: the datasets' TRs are needed (native_ms)")
                shards: list[str] = []
                for d in spec.datasets:
                    ms = native_ms(d)
                    shards += [
                        series_shard("series").format(dataset=d, ms=ms),
                        series_shard("index").format(dataset=d, ms=ms),
                    ]
                files[f"{model}__shards"] = shards
                files[f"{model}__scaling"] = [SCALING_STATS]
        elif model.startswith("external_"):
            raise ValueError(
                f"evaluate.models: {model!r} has no predictions file: add "
                f"evaluate.external.{model.removeprefix('external_')}: <path with {{dataset}} "
                "and {task}>"
            )
        elif model.startswith("finetune_"):
            raise ValueError(
                f"evaluate.models: the workflow fine-tunes {sorted(FINETUNE)}; {model!r} "
                "runs with `brainharmony evaluate --finetune` outside it"
            )
    series_models = [m for m in settings.models if FINETUNE.get(m, ("", ""))[1] == "series"]
    if len(series_models) > 1:
        raise ValueError(f"evaluate.models: one series fine-tuning entry at most; {series_models}")
    return files


def model_args(
    settings: EvalSettings,
    named_inputs: Mapping[str, Sequence[str]],
    embeddings: Mapping[str, str] = EMBEDDINGS,
    external: Mapping[str, str] = EXTERNAL,
) -> str:
    """``--embedding NAME=FILE`` / ``--external NAME=FILE`` arguments for those inputs,
    and ``--finetune NAME=DIR`` with the fine-tuning data (``--ft-tokens``,
    ``--ft-shard``, ``--scaling``)."""
    args: list[str] = []
    tokens: list[str] = []
    for model in settings.models:
        files = named_inputs.get(model)
        if files is None:  # not an input of this model, or not planned yet (checkpoint)
            continue
        if model in FINETUNE:
            folder = str(files[0]).rsplit("/", 1)[0]
            args.append(f"--finetune {shlex.quote(f'{model}={folder}')}")
            tokens += [str(p) for p in named_inputs.get(f"{model}__tokens", [])]
            shards = [str(p) for p in named_inputs.get(f"{model}__shards", [])]
            args += [
                f"--ft-shard {shlex.quote(s)} {shlex.quote(i)}"
                for s, i in zip(shards[::2], shards[1::2], strict=True)
            ]
            args += [
                f"--scaling {shlex.quote(str(p))}"
                for p in named_inputs.get(f"{model}__scaling", [])
            ]
            continue
        flag = "--embedding" if model in embeddings else "--external" if model in external else None
        if flag is None:
            continue
        args += [f"{flag} {shlex.quote(f'{model}={p}')}" for p in files]
    if tokens:
        args.append("--ft-tokens " + " ".join(shlex.quote(t) for t in tokens))
    return " ".join(args)


def predictor_lmae_inputs(
    settings: EvalSettings,
    lmae_yaml: str,
    outputs: Callable[[str], Mapping[str, str]] = model_outputs,
) -> dict[str, str]:
    """The predictor's LMAE input (for ``unpack``): the LMAE of ``train_lmae`` (or of
    ``train.pretrained.lmae``, through ``outputs``), trained on every subject of
    pretrain.datasets (``shared``), or the LMAE YAML it pretrains per fold on the fold's
    training subjects (``per_fold``, the default)."""
    if settings.predictor_lmae == "shared":
        return {"lmae": outputs("lmae")["weights"]}
    return {"lmae_yaml": lmae_yaml}


def predictor_lmae_args(
    settings: EvalSettings,
    lmae_yaml: str,
    outputs: Callable[[str], Mapping[str, str]] = model_outputs,
) -> str:
    """``--init <LMAE folder>`` (shared) or ``--lmae-config <YAML>`` (per fold)."""
    if settings.predictor_lmae == "shared":
        folder = outputs("lmae")["weights"].rsplit("/", 1)[0]
        return f"--init {shlex.quote(folder)}"
    return f"--lmae-config {shlex.quote(lmae_yaml)}"


def split_files(settings: EvalSettings) -> list[str]:
    """``splits.json`` of every task and seed (target ``splits_all``: the split export
    that code outside the workflow predicts on; each job writes the fold files beside)."""
    return [
        SPLITS_META.format(dataset=d, task=t, seed=s)
        for d, t in tasks(settings)
        for s in settings.seeds
    ]


def predictions(settings: EvalSettings) -> list[str]:
    """Every task's ``predictions.tsv`` (the inputs of ``brainharmony tables``)."""
    return [PREDICTIONS.format(dataset=d, task=t) for d, t in tasks(settings)]


def variant_embeddings(variants: Mapping[str, Variant]) -> dict[str, str]:
    """``probe_<name>`` -> the variant's features per workflow dataset ``{d}``."""
    return {
        f"probe_{name}": VARIANT_EMBEDDING.replace("{dataset}", "{d}").replace("{variant}", name)
        for name in variants
    }


def variant_labels(variants: Mapping[str, Variant]) -> dict[str, str]:
    """``probe_<name>`` -> ``"<label> (LP)"``: the variants' row labels."""
    return {f"probe_{name}": f"{v.label} (LP)" for name, v in variants.items()}


def check_models(settings: EvalSettings, embeddings: Mapping[str, str]) -> None:
    """Refuse, when the workflow is planned, a ``probe_<x>`` that nothing in the
    workflow embeds (neither a main encoder's features nor a ``train.variants`` entry).

    Raises
    ------
    ValueError
        Naming the model and the names that would work.
    """
    for model in settings.models:
        if model.startswith("probe_") and model not in embeddings:
            raise ValueError(
                f"evaluate.models: {model!r} has no features in this workflow: add a "
                f"train.variants entry {model.removeprefix('probe_')!r}, or use one of "
                f"{sorted(embeddings)}"
            )


def external_files(settings: EvalSettings) -> dict[str, str]:
    """The predictions files of every model read from a file: the workflow's own
    (:data:`EXTERNAL`, the predictor) and ``external_<name>`` -> the
    ``evaluate.external.<name>`` pattern (``{dataset}``, ``{task}``)."""
    return {**EXTERNAL, **{f"external_{n}": p for n, p in settings.external.items()}}


def check_external(settings: EvalSettings) -> None:
    """Refuse, when the workflow is planned, an ``external_<x>`` in ``evaluate.models``
    without an ``evaluate.external.<x>`` file, and an ``evaluate.external`` entry whose
    ``external_<x>`` is not in ``evaluate.models`` (a row nobody asked for, or a typo:
    refused rather than ignored). The patterns' placeholders are checked by
    :func:`~brainharmony.evaluate.settings.settings_from_mapping`.

    Raises
    ------
    ValueError
        Naming the key and the entry that would match.
    """
    for model in settings.models:
        name = model.removeprefix("external_")
        if model.startswith("external_") and name not in settings.external:
            given = sorted(settings.external)
            raise ValueError(
                f"evaluate.models: {model!r} needs its predictions file under "
                f"evaluate.external.{name} (a path pattern with {{dataset}} and {{task}}); "
                f"evaluate.external has {given or 'no entries'}"
            )
    for name in settings.external:
        if f"external_{name}" not in settings.models:
            raise ValueError(
                f"evaluate.external.{name}: model 'external_{name}' is not in "
                f"evaluate.models {list(settings.models)}: add it there to get its row, or "
                "remove the entry"
            )


@dataclass(frozen=True)
class EvalPlan:
    """What the evaluation rules read: the settings (``.settings``), their JSON (the
    commands' ``--settings``), the path patterns, and the features of the probes
    (``.embeddings``: the main encoders' and the ``train.variants``')."""

    settings: EvalSettings
    embeddings: Mapping[str, str] = field(default_factory=lambda: dict(EMBEDDINGS))
    #: Models whose inputs need T1w (:data:`NEEDS_T1` and the Harmonizer variants' probes).
    needs_t1: frozenset[str] = NEEDS_T1
    #: Predictions file per model read from a file (:func:`external_files`: the
    #: predictor's and the ``evaluate.external`` entries').
    external: Mapping[str, str] = field(default_factory=lambda: dict(EXTERNAL))

    @property
    def settings_json(self) -> str:
        return settings_json(self.settings)

    @property
    def labels(self) -> str:
        return LABELS

    @property
    def splits_fold(self) -> str:
        return SPLITS_FOLD

    @property
    def splits_meta(self) -> str:
        return SPLITS_META

    @property
    def predictions_pattern(self) -> str:
        return PREDICTIONS

    @property
    def predictor_experts(self) -> Mapping[str, str]:
        return PREDICTOR_EXPERTS

    @property
    def tables(self) -> dict[str, str]:
        return dict(TABLES)

    @property
    def paper_table(self) -> str:
        return PAPER_TABLE

    @property
    def figures(self) -> list[str]:
        """The figures (.png) and their points (.csv) of the table sections that draw
        one (outputs of the tables rule)."""
        return [
            PAPER_FIGURE.format(section=key) + ext
            for key, section in self.settings.sections.items()
            if section.figure is not None
            for ext in (".png", ".csv")
        ]

    @property
    def report(self) -> str:
        return REPORT

    @property
    def predictions(self) -> list[str]:
        """Every task's ``predictions.tsv``."""
        return predictions(self.settings)

    @property
    def split_files(self) -> list[str]:
        """Every task's and seed's ``splits.json`` (:func:`split_files`)."""
        return split_files(self.settings)


def plan_from_config(
    config: Mapping[str, Any], variants: Mapping[str, Variant] | None = None
) -> EvalPlan:
    """The evaluation plan of a validated workflow config.

    ``variants`` (``TrainPlan.variants``) add their probes' features and row labels
    (``evaluate.labels`` wins over a variant's label).

    Raises
    ------
    ValueError
        A ``probe_<x>`` in ``evaluate.models`` that nothing embeds (:func:`check_models`);
        an ``external_<x>`` without its ``evaluate.external`` file, or an entry there
        whose model is not in ``evaluate.models`` (:func:`check_external`).
    """
    variants = variants or {}
    settings = settings_from_mapping(config)
    settings = replace(settings, labels={**variant_labels(variants), **settings.labels})
    embeddings = {**EMBEDDINGS, **variant_embeddings(variants)}
    check_models(settings, embeddings)
    check_external(settings)
    needs_t1 = NEEDS_T1 | {f"probe_{n}" for n, v in variants.items() if v.role == "harmonizer"}
    return EvalPlan(
        settings,
        embeddings=embeddings,
        needs_t1=frozenset(needs_t1),
        external=external_files(settings),
    )
