"""Planning of the training rules (``workflow/rules/train.smk``): settings, paths, options.

The ``train:`` config block names one model YAML per model role; the rules pass the
workflow's files (shards, scaling statistics, geometry tables, splits) to
``brainharmony train`` and ``brainharmony embed``. ``train.pretrained`` names model
folders (``model.safetensors`` + ``config.json``, e.g. written by ``brainharmony
import-weights``) used instead of training a role: the rules that read a role's model
take :meth:`TrainPlan.outputs` (the given folder, or ``results/models/<role>``), so the
role's training rule is never requested. Nothing here imports torch.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from brainharmony.config import load_yaml
from brainharmony.planning.geometry import GeometryPlan
from brainharmony.planning.multitr import MultiTRPlan, pretrain_shards, require_t1_pretrain

#: Model roles and their default YAMLs (demo sizes).
ROLES = ("bh_s", "bh_f", "harmonizer", "lmae", "predictor")
#: Roles trained by one job over ``train.gpus`` processes (torchrun); the others
#: (``predictor-cv``) run one process.
DDP_ROLES = ("bh_s", "bh_f", "harmonizer", "lmae")
MODEL_FILES = ("model.safetensors", "config.json", "metrics.jsonl", "curves.png")
#: Roles that ``train.pretrained`` may replace by a model folder (the folder's
#: ``config.json`` must have this kind).
PRETRAINED_ROLES = ("bh_s", "bh_f", "harmonizer", "lmae")
#: Per-dataset outputs of the embedding rules: the token index of the frozen encoders,
#: and the pooled features of each encoder (the evaluation's probe inputs).
EMBEDDINGS: dict[str, str] = {
    "tokens": "results/embeddings/tokens/{dataset}/index.tsv",
    **{
        name: f"results/embeddings/{name}/{{dataset}}.npz"
        for name in ("bh_f", "bh_s", "harmonizer", "bh_f_roisim")
    },
}


@dataclass(frozen=True)
class TrainPlan:
    """The ``train:`` config block with defaults."""

    models: Mapping[str, str] = field(default_factory=dict)
    steps: int | None = None
    ckpt_every: int | None = None
    gpus: int = 0
    device: str = "auto"
    threads: int = 1
    pretrained: Mapping[str, str] = field(default_factory=dict)
    #: ``train.variants``: extra models trained next to the main ones (:class:`Variant`).
    variants: Mapping[str, Variant] = field(default_factory=dict)
    basedir: str = "."

    def yaml(self, role: str) -> str:
        """The model YAML of a role: as given when it exists from the working folder,
        else relative to the workflow's folder (where ``models/`` ships)."""
        return resolve_yaml(self.models[role], self.basedir)

    def variant_names(self, role: str | None = None) -> list[str]:
        """The variants (of one role), in config order."""
        return [n for n, v in self.variants.items() if role is None or v.role == role]

    def variant_pattern(self, role: str | None = None) -> str:
        """Wildcard constraint of the variant rules (``variant``)."""
        return variant_pattern(self.variant_names(role))

    def variant_outputs(self, name: str = "{variant}") -> dict[str, str]:
        """The model files of a variant's training job (``results/models/<name>/``)."""
        return model_outputs(name)

    @property
    def variant_embedding(self) -> str:
        """Pooled features of a variant (wildcards ``variant``, ``dataset``)."""
        return VARIANT_EMBEDDING

    def variant_targets(self, datasets: Sequence[str], t1_datasets: Sequence[str]) -> list[str]:
        """Every variant's model files and its features on each dataset (those with
        T1w only for a Harmonizer variant): the ``train_all`` part of the variants."""
        out: list[str] = []
        for name, variant in self.variants.items():
            out += list(self.variant_outputs(name).values())
            pooled = datasets if variant.role == "bh_f" else t1_datasets
            out += [VARIANT_EMBEDDING.format(variant=name, dataset=d) for d in pooled]
        return out

    def processes(self, role: str) -> int:
        """Training processes of a role's job (world size)."""
        return max(self.gpus, 1) if role in DDP_ROLES else 1

    def grad_accum(self, role: str) -> int:
        """Accumulation steps of a role's YAML at :meth:`processes` (see
        :func:`check_global_batch`)."""
        return check_global_batch(self.yaml(role), self.processes(role))

    @property
    def options(self) -> str:
        """The options every ``brainharmony train``/``predictor-cv`` job gets."""
        return common_options(self)

    def model_outputs(self, role: str) -> dict[str, str]:
        return model_outputs(role)

    def outputs(self, role: str) -> dict[str, str]:
        """The model files a role's consumers read: its ``train.pretrained`` folder's
        (``weights``, ``config``), else its training rule's outputs."""
        if role in self.pretrained:
            folder = self.pretrained[role].rstrip("/")
            return {"weights": f"{folder}/model.safetensors", "config": f"{folder}/config.json"}
        return model_outputs(role)

    def weights(self, role: str) -> str:
        """``outputs(role)["weights"]``."""
        return self.outputs(role)["weights"]

    @property
    def trained(self) -> list[str]:
        """The roles the workflow trains (those without ``train.pretrained``)."""
        return [role for role in PRETRAINED_ROLES if role not in self.pretrained]

    @property
    def embeddings(self) -> dict[str, str]:
        """Output patterns of the embedding rules (wildcard ``dataset``)."""
        return dict(EMBEDDINGS)


def plan_from_config(config: Mapping[str, Any], basedir: str = ".") -> TrainPlan:
    """The training settings of a validated workflow config.

    ``basedir`` is the workflow's folder, against which relative model YAML paths that
    do not exist from the working folder are resolved.
    """
    block = config["train"]
    models = {role: f"models/{role}_demo.yaml" for role in ROLES}
    models.update({k: str(v) for k, v in block["models"].items()})
    unknown = sorted(set(models) - set(ROLES))
    if unknown:
        raise ValueError(f"train.models has unknown role(s) {unknown}; roles: {list(ROLES)}")
    steps = block["steps"]
    ckpt_every = block["ckpt_every"]
    pretrained = {role: check_pretrained(role, str(d)) for role, d in block["pretrained"].items()}
    plan = TrainPlan(
        models=models,
        steps=None if steps is None else int(steps),
        ckpt_every=None if ckpt_every is None else int(ckpt_every),
        gpus=int(block["gpus"]),
        device=str(block["device"]),
        threads=int(block["threads"]),
        pretrained=pretrained,
        variants=variants_from_config(block["variants"], models),
        basedir=str(basedir),
    )
    from pathlib import Path

    for role in ROLES:  # a global batch that train.gpus cannot make stops the planning
        if Path(plan.yaml(role)).is_file():
            plan.grad_accum(role)
    for name, variant in plan.variants.items():  # the YAML exists and has the role's kind
        check_global_batch(check_variant_yaml(plan, name), plan.processes(variant.role))
    return plan


def check_pretrained(role: str, folder: str) -> str:
    """A ``train.pretrained`` folder, checked when the workflow is planned.

    It must hold ``model.safetensors`` and a ``config.json`` whose ``kind`` is the role's.

    Raises
    ------
    ValueError
        Missing folder or file, unreadable config.json, or a model of another kind.
    """
    import json
    from pathlib import Path

    if role not in PRETRAINED_ROLES:
        raise ValueError(
            f"train.pretrained.{role}: not a role with a model folder; "
            f"roles: {list(PRETRAINED_ROLES)}"
        )
    path = Path(folder)
    key = f"train.pretrained.{role}"
    if not path.is_dir():
        raise ValueError(f"{key}: model folder {folder!r} does not exist")
    for name in ("model.safetensors", "config.json"):
        if not (path / name).is_file():
            raise ValueError(
                f"{key}: {folder!r} has no {name} (a model folder from `brainharmony train` "
                "or `brainharmony import-weights` holds model.safetensors and config.json)"
            )
    try:
        kind = json.loads((path / "config.json").read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{key}: {folder}/config.json cannot be read: {err}") from None
    if kind != role:
        raise ValueError(f"{key}: {folder!r} holds a {kind!r} model; the role needs {role!r}")
    return folder


def model_dir(role: str) -> str:
    return f"results/models/{role}"


def model_outputs(role: str, folder: str | None = None) -> dict[str, str]:
    """Named outputs of one trained model folder."""
    base = folder or model_dir(role)
    return {
        "weights": f"{base}/model.safetensors",
        "config": f"{base}/config.json",
        "metrics": f"{base}/metrics.jsonl",
        "curves": f"{base}/curves.png",
    }


def state_dir(folder: str) -> str:
    """Resumable checkpoint folder of a model folder (never a declared output)."""
    rel = folder.removeprefix("results/models/")
    return f"work/train/{rel}"


def launcher(bh: str, gpus: int) -> str:
    """The command that runs ``brainharmony`` for training: DDP through torchrun when
    more than one GPU is requested, else the plain CLI."""
    if gpus > 1:
        return bh.replace(
            "-m brainharmony",
            f"-m torch.distributed.run --standalone --nnodes=1 --nproc-per-node={gpus} "
            "-m brainharmony",
        )
    return bh


def common_options(plan: TrainPlan) -> str:
    opts = ["--no-progress"]
    if plan.steps is not None:
        opts.append(f"--steps {plan.steps}")
    if plan.ckpt_every is not None:
        opts.append(f"--set train.ckpt_every={plan.ckpt_every}")
    if plan.device != "auto":
        opts.append(f"--device {plan.device}")
    return " ".join(opts)


def shard_pairs(shards: Sequence[str], indexes: Sequence[str]) -> str:
    """``--shard S --index I`` pairs."""
    if len(shards) != len(indexes):
        raise ValueError(f"{len(shards)} shards for {len(indexes)} indexes")
    return " ".join(
        f"--shard {shlex.quote(s)} --index {shlex.quote(i)}"
        for s, i in zip(shards, indexes, strict=True)
    )


def sets(assignments: Iterable[str]) -> str:
    """``--set k=v`` options."""
    return " ".join(f"--set {shlex.quote(a)}" for a in assignments)


def folder_of(path: str) -> str:
    """The folder of a declared file (model folders, token folders)."""
    from pathlib import Path

    return str(Path(path).parent)


def geometry_sets(geometry: GeometryPlan) -> str:
    """``--set model.harmonics=... --set model.gradients=...`` of BrainHarmonix-F."""
    return sets(
        [
            f"model.harmonics={geometry.harmonics_table}",
            f"model.gradients={geometry.group_gradients}",
        ]
    )


def pretrain_series(multitr: MultiTRPlan, ingest_checkpoint: Any) -> dict[str, list[str]]:
    """Named inputs: the pretraining datasets' multi-TR shards and their indexes."""
    shards, indexes = pretrain_shards(multitr, ingest_checkpoint)
    return {"shards": shards, "indexes": indexes}


def pretrain_pairs(multitr: MultiTRPlan, ingest_checkpoint: Any) -> str:
    """``--shard/--index`` options of the pretraining datasets' multi-TR shards."""
    files = pretrain_series(multitr, ingest_checkpoint)
    return shard_pairs(files["shards"], files["indexes"])


def check_global_batch(yaml_path: str, processes: int) -> int:
    """Gradient-accumulation steps of a model YAML trained by ``processes`` processes.

    ``train.global_batch / (train.batch_size * processes)`` when the YAML declares a
    global batch (the same rule as ``brainharmony.train.config.resolve_grad_accum``, read
    here without torch), else its ``train.grad_accum`` (default 1).

    Raises
    ------
    ValueError
        The global batch is not a multiple of ``batch_size * processes``, naming the YAML,
        ``train.gpus`` and the process counts that would work.
    """
    train = (load_yaml(yaml_path) or {}).get("train") or {}
    global_batch = train.get("global_batch")
    if global_batch is None:
        return int(train.get("grad_accum", 1))
    batch = int(train.get("batch_size", 8))
    per_step = batch * processes
    if int(global_batch) % per_step:
        fits = [
            n for n in range(1, int(global_batch) // batch + 1) if global_batch % (batch * n) == 0
        ]
        raise ValueError(
            f"{yaml_path}: train.global_batch {global_batch} is not a multiple of "
            f"train.batch_size {batch} x {processes} process(es) (train.gpus) = {per_step}; "
            f"with this batch_size it works with {', '.join(map(str, fits))} GPU(s): change "
            "train.gpus, or the YAML's batch_size"
        )
    return int(global_batch) // per_step


def check_volume_shape(yaml_path: str, model_box_mm: Sequence[int], resolution_mm: float) -> str:
    """Refuse, at planning time, a BrainHarmonix-S YAML whose ``img_size`` is not the
    anatomy stage's model-ready box (``anat.model_box_mm / anat.resolution_mm``).

    Returns the YAML path (so that a rule's input function can call it).

    Raises
    ------
    ValueError
        Naming the YAML, its ``img_size`` and the box the anatomy stage writes.
    """
    from pathlib import Path

    path = Path(yaml_path)
    if not path.is_file():
        raise ValueError(f"train.models.bh_s: {path} not found")
    raw = load_yaml(path) or {}
    size = (raw.get("model") or {}).get("img_size") or []
    if size == "auto":  # the volumes' own grid, resolved by `brainharmony train`
        return str(path)
    size = list(size)
    box = [round(float(m) / float(resolution_mm)) for m in model_box_mm]
    if size and size != box:
        raise ValueError(
            f"{path}: model.img_size {size} differs from the anatomy stage's model-ready box "
            f"{box} (anat.model_box_mm {list(model_box_mm)} at {resolution_mm} mm); use the "
            "matching YAML (bh_s_paper: 1 mm), `img_size: auto` (bh_s_demo: any resolution) "
            "or change anat.resolution_mm"
        )
    return str(path)


def volume_grid(bh_s_yaml: str, model_box_mm: Sequence[int], resolution_mm: float) -> list[int]:
    """BrainHarmonix-S's token grid (``img_size / patch``) for the anatomy stage's box.

    ``img_size: auto`` is the box at ``resolution_mm`` (what ``brainharmony train``
    resolves it to from the volume shards).
    """
    model = (load_yaml(bh_s_yaml) or {}).get("model") or {}
    size = model.get("img_size", "auto")
    if size == "auto":
        size = [round(float(m) / float(resolution_mm)) for m in model_box_mm]
    patch = int(model.get("patch", 16))
    return [int(s) // patch for s in size]


def harmonizer_sets(plan: TrainPlan, model_box_mm: Sequence[int], resolution_mm: float) -> str:
    """``--set model.s_grid=[...]`` when the Harmonizer YAML says ``s_grid: auto``.

    The Harmonizer's S position grid must be BrainHarmonix-S's token grid, which
    follows ``anat.resolution_mm`` when that YAML's ``img_size`` is ``auto``; an
    explicit grid is passed through unchanged (and checked by the model at load).
    """
    model = (load_yaml(plan.yaml("harmonizer")) or {}).get("model") or {}
    if model.get("s_grid") != "auto":
        return ""
    grid = volume_grid(plan.yaml("bh_s"), model_box_mm, resolution_mm)
    return sets([f"model.s_grid={grid}"])


# --------------------------------------------------------------------------------------
# Variants: extra models trained next to the main ones (ablations, Brain-JEPA)
# --------------------------------------------------------------------------------------
#: Roles a variant may take, and the model kinds its YAML may have for each.
VARIANT_KINDS: dict[str, tuple[str, ...]] = {
    "bh_f": ("bh_f", "brain_jepa", "brainlm"),
    "harmonizer": ("harmonizer",),
}
#: The geometry tables a ``bh_f``-role kind reads (its ``model.<table>`` keys): BrainLM's
#: position is its parcels' coordinates (``model.coords``, the atlas's centroids by
#: default), so it needs neither table.
VARIANT_TABLES: dict[str, tuple[str, ...]] = {
    "bh_f": ("harmonics", "gradients"),
    "brain_jepa": ("gradients",),
    "brainlm": (),
}
#: Which of the pretraining datasets' series shards a ``bh_f`` variant trains on: every
#: multi-TR shard (``all``, as the main BrainHarmonix-F) or each dataset's own TR only
#: (``native``: no multi-TR augmentation).
VARIANT_MULTITR = ("all", "native")
#: Names a variant cannot take: the roles (their model folders) and the other folders
#: under ``results/embeddings/``.
RESERVED_NAMES = frozenset({*ROLES, *EMBEDDINGS})
_VARIANT_NAME = re.compile(r"[a-z][a-z0-9_]*")
_VARIANT_KEYS = frozenset({"role", "model", "set", "multitr", "label"})
#: The pattern of the variant rules' wildcard when there is no such variant (matches
#: nothing, so those rules never run).
NO_VARIANT = "(?!x)x"
#: Model folder and pooled features of a variant (wildcards ``variant``, ``dataset``).
VARIANT_EMBEDDING = "results/embeddings/{variant}/{dataset}.npz"


@dataclass(frozen=True)
class Variant:
    """One ``train.variants`` entry: a model trained next to the main ones.

    Attributes
    ----------
    name : str
        Its folder names (``results/models/<name>/``, ``results/embeddings/<name>/``)
        and its harness rows (``probe_<name>``).
    role : {"bh_f", "harmonizer"}
        How it is trained and embedded: a ``bh_f`` variant (kind ``bh_f``,
        ``brain_jepa`` or ``brainlm``) on the pretraining datasets' series shards, embedded by
        ``brainharmony embed f``; a ``harmonizer`` variant on the main encoders' token
        files, embedded by ``brainharmony embed harmonizer``.
    model : str
        Its model YAML (default: the role's ``train.models`` YAML).
    overrides : tuple of str
        ``SECTION.KEY=VALUE`` assignments passed to ``brainharmony train --set``.
    multitr : {"all", "native"}
        ``bh_f`` role: train on every multi-TR shard or on the native-TR shards only.
    label : str
        Row label of its harness entries, without the "(LP)"/"(FT)" tag.
    """

    name: str
    role: str
    model: str
    overrides: tuple[str, ...] = ()
    multitr: str = "all"
    label: str = ""


def variants_from_config(block: Mapping[str, Any], models: Mapping[str, str]) -> dict[str, Variant]:
    """The ``train.variants`` block, checked.

    Raises
    ------
    ValueError
        A name that is not lower-case alphanumeric or collides with a role or an
        embedding folder, an unknown key or role, a ``set`` item without ``=``, or
        ``multitr`` on a role that has none; the message names the entry.
    """
    out: dict[str, Variant] = {}
    for name, spec in (block or {}).items():
        key = f"train.variants.{name}"
        if not _VARIANT_NAME.fullmatch(str(name)):
            raise ValueError(f"{key}: a variant name is lower case letters, digits and _")
        if name in RESERVED_NAMES:
            raise ValueError(
                f"{key}: {name!r} is taken (a model role or an embedding folder: "
                f"{sorted(RESERVED_NAMES)}); choose another name"
            )
        if not isinstance(spec, Mapping):
            raise ValueError(f"{key}: expected a mapping with role, model, set, multitr, label")
        unknown = sorted(set(spec) - _VARIANT_KEYS)
        if unknown:
            raise ValueError(f"{key}: unknown key(s) {unknown}; allowed: {sorted(_VARIANT_KEYS)}")
        role = spec.get("role")
        if role not in VARIANT_KINDS:
            raise ValueError(f"{key}.role: one of {list(VARIANT_KINDS)}; got {role!r}")
        overrides = tuple(str(s) for s in spec.get("set") or ())
        bad = [s for s in overrides if "=" not in s or not s.partition("=")[0].strip()]
        if bad:
            raise ValueError(f"{key}.set: expected SECTION.KEY=VALUE items; got {bad}")
        multitr = str(spec.get("multitr", "all"))
        if multitr not in VARIANT_MULTITR:
            raise ValueError(f"{key}.multitr: one of {list(VARIANT_MULTITR)}; got {multitr!r}")
        if role != "bh_f" and "multitr" in spec:
            raise ValueError(f"{key}.multitr: only a bh_f variant trains on series shards")
        out[str(name)] = Variant(
            name=str(name),
            role=str(role),
            model=str(spec.get("model") or models[role]),
            overrides=overrides,
            multitr=multitr,
            label=str(spec.get("label") or name),
        )
    return out


def check_variant_yaml(plan: TrainPlan, name: str) -> str:
    """A variant's YAML path (resolved as :meth:`TrainPlan.yaml`), checked: it exists
    and its ``kind`` suits the variant's role.

    Raises
    ------
    ValueError
        Naming the variant, the YAML and the problem.
    """
    from pathlib import Path

    variant = plan.variants[name]
    path = Path(resolve_yaml(variant.model, plan.basedir))
    key = f"train.variants.{name}.model"
    if not path.is_file():
        raise ValueError(f"{key}: {variant.model} not found")
    kind = (load_yaml(path) or {}).get("kind")
    if kind not in VARIANT_KINDS[variant.role]:
        raise ValueError(
            f"{key}: {path} is a {kind!r} model; a {variant.role} variant needs one of "
            f"{list(VARIANT_KINDS[variant.role])}"
        )
    return str(path)


def variant_kind(plan: TrainPlan, name: str) -> str:
    """The model kind of a variant's YAML (checked by :func:`check_variant_yaml`)."""
    return str((load_yaml(check_variant_yaml(plan, name)) or {}).get("kind"))


def resolve_yaml(given: str, basedir: str) -> str:
    """A model YAML as given when it exists from the working folder, else relative to
    the workflow's folder (where ``models/`` ships)."""
    from pathlib import Path

    path = Path(given)
    if path.is_absolute() or path.exists():
        return str(path)
    return str(Path(basedir) / path)


def variant_pattern(names: Iterable[str]) -> str:
    """The wildcard constraint of the variant rules: exactly these names (or nothing)."""
    names = sorted(names)
    if not names:
        return NO_VARIANT
    return "(" + "|".join(re.escape(n) for n in names) + ")"


def variant_pretrain_series(
    plan: TrainPlan, name: str, multitr: MultiTRPlan, ingest_checkpoint: Any
) -> dict[str, list[str]]:
    """Named inputs ``shards``, ``indexes`` of a ``bh_f`` variant: every multi-TR shard
    of the pretraining datasets, or (``multitr: native``) their native-TR shards only."""
    if plan.variants[name].multitr == "native":
        multitr = replace(multitr, factors=(1,))
    return pretrain_series(multitr, ingest_checkpoint)


def variant_train_inputs(
    plan: TrainPlan,
    name: str,
    multitr: MultiTRPlan,
    geometry: GeometryPlan,
    ingest_checkpoint: Any,
    token_index: str,
) -> dict[str, Any]:
    """Named data inputs of a variant's training job (for ``unpack``): series shards,
    scaling statistics and the geometry tables its kind reads (:data:`VARIANT_TABLES`);
    or the Harmonizer's token indexes of the pretraining datasets with T1w, from
    ``token_index``. (Its YAML, :func:`check_variant_yaml`, is declared apart: it does not
    wait for the ingest checkpoint.)"""
    variant = plan.variants[name]
    files: dict[str, Any] = {}
    if variant.role == "bh_f":
        files.update(variant_pretrain_series(plan, name, multitr, ingest_checkpoint))
        files["scaling"] = multitr.scaling_stats
        tables = {"harmonics": geometry.harmonics_table, "gradients": geometry.group_gradients}
        files.update({t: tables[t] for t in VARIANT_TABLES[variant_kind(plan, name)]})
    else:
        datasets = require_t1_pretrain(multitr, f"The Harmonizer variant {name!r}")
        files["tokens"] = [token_index.format(dataset=d) for d in datasets]
    return files


def variant_train_args(
    plan: TrainPlan,
    name: str,
    inputs: Mapping[str, Any],
    geometry: GeometryPlan,
    model_box_mm: Sequence[int],
    resolution_mm: float,
) -> str:
    """The data and ``--set`` options of a variant's ``brainharmony train`` job.

    ``bh_f`` role: ``--shard/--index`` pairs, ``--scaling`` and the geometry tables of
    its kind (:data:`VARIANT_TABLES`: ``model.gradients`` only for kind ``brain_jepa``,
    none for ``brainlm``); harmonizer
    role: ``--index`` per token index and the S grid (``s_grid: auto``). The variant's
    own ``set`` items come last, so they win.
    """
    variant = plan.variants[name]
    yaml_path = check_variant_yaml(plan, name)
    raw = load_yaml(yaml_path) or {}
    if variant.role == "bh_f":
        tables = {"harmonics": geometry.harmonics_table, "gradients": geometry.group_gradients}
        assignments = [f"model.{t}={tables[t]}" for t in VARIANT_TABLES[str(raw.get("kind"))]]
        args = [
            shard_pairs(list(inputs["shards"]), list(inputs["indexes"])),
            f"--scaling {shlex.quote(str(inputs['scaling']))}",
            sets(assignments),
        ]
    else:
        args = [" ".join(f"--index {shlex.quote(str(i))}" for i in inputs["tokens"])]
        if (raw.get("model") or {}).get("s_grid") == "auto":
            grid = volume_grid(plan.yaml("bh_s"), model_box_mm, resolution_mm)
            args.append(sets([f"model.s_grid={grid}"]))
    args.append(sets(variant.overrides))
    return " ".join(a for a in args if a)


def variant_embed_inputs(
    plan: TrainPlan,
    name: str,
    dataset: str,
    native_series: Mapping[str, str],
    scaling: str,
    token_index: str,
    parcellated: Collection[str] = (),
) -> dict[str, str]:
    """Named data inputs of a variant's embedding job on one dataset: the dataset's
    native-TR series shard and index with the scaling statistics (``bh_f``), or the main
    encoders' token index (harmonizer). Its model is the input ``weights``
    (``TrainPlan.variant_outputs(name)["weights"]``, declared apart: it does not wait
    for the ingest checkpoint).

    Raises
    ------
    ValueError
        A Harmonizer variant asked for a dataset without T1w (no token files).
    """
    variant = plan.variants[name]
    files: dict[str, str] = {}
    if variant.role == "bh_f":
        files.update(series=native_series["series"], index=native_series["index"])
        files["scaling"] = scaling
    else:
        if dataset in parcellated:
            raise ValueError(
                f"train.variants.{name}: a Harmonizer variant needs the token files of "
                f"BrainHarmonix-S, and dataset {dataset!r} has no T1w (kind parcellated)"
            )
        files["tokens"] = token_index.format(dataset=dataset)
    return files


def variant_embed_args(plan: TrainPlan, name: str, inputs: Mapping[str, str], out: str) -> str:
    """The ``brainharmony embed`` subcommand and options of a variant's embedding job
    (``inputs``: :func:`variant_embed_inputs`)."""
    variant = plan.variants[name]
    q = {k: shlex.quote(str(v)) for k, v in inputs.items()}
    model = shlex.quote(folder_of(plan.variant_outputs(name)["weights"]))
    if variant.role == "bh_f":
        return (
            f"f --f-model {model} --series-shard {q['series']} --series-index {q['index']} "
            f"--scaling {q['scaling']} --out-f {shlex.quote(out)}"
        )
    return f"harmonizer --model {model} --tokens-index {q['tokens']} --out {shlex.quote(out)}"
