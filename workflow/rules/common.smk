# Shared definitions: config validation, the plan, wildcard constraints, input functions.
# Rule files read only PLAN.<stage> (brainharmony.planning: settings, path templates,
# options), rules.<x>.output and the names defined here (tests/workflow/
# test_rule_namespace.py); the input and params functions below (get_*) are the
# workflow's only wildcard- and checkpoint-dependent code, each a thin call into
# the planning package.
import shlex
import sys
from pathlib import Path

from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod

from brainharmony import planning
from brainharmony.config import load_yaml, validate_config
from brainharmony.hpc import check_slurm_status_queries

# Snakemake's YAML reader keeps the last of two duplicate keys and expands aliases
# without bound: each config file is read again strictly (brainharmony.config.load_yaml:
# a duplicate key or an alias bomb stops here, naming the file, line and key).
for _configfile in workflow.configfiles:
    load_yaml(_configfile)
validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")

# One plan, one attribute per stage (PLAN.ingest, .anat, .func, .qc, .geometry,
# .multitr, .train, .evaluate). Building it refuses unusable settings now, before any job runs
# (e.g. a non-native anat backend whose executables are missing).
PLAN = planning.from_config(config, workflow.basedir)


wildcard_constraints:
    dataset=r"[a-zA-Z0-9]+",
    subject=r"[a-zA-Z0-9]+",
    session=r"[a-zA-Z0-9]+",
    run=r"[a-zA-Z0-9]+",
    task=r"[a-zA-Z0-9]+",
    seed=r"\d+",


# Before the first sbatch: can SLURM report job states? Without job accounting the
# plugin's default status command (sacct) fails silently and the run would wait forever;
# this switches it to squeue or stops with the profile line to add (docs/hpc.md,
# "Clusters without job accounting"). Snakemake runs onstart only in the main process of
# a real run (not with -n, not inside jobs: they get --no-hooks); local runs pass through.
onstart:
    check_slurm_status_queries(workflow, logger)


DATASETS = sorted(config["datasets"])
# Datasets with images (kind bids): the anatomy, functional and QC stages run on them;
# the others (kind parcellated) start from released parcel series (docs/ingest.md).
BIDS_DATASETS = PLAN.ingest.bids_datasets
DEMO_ROOT = config["demo"]["root"]
DEMO_DATASETS = sorted(name for name, ds in config["datasets"].items() if ds["demo"])
ENVS = Path(workflow.basedir) / "envs"


def _package_command():
    """How rules call the package CLI.

    With `--sdm conda` the job runs inside the rule's conda env, which provides the
    dependencies; the package itself comes from this checkout's src/. Otherwise the
    interpreter running Snakemake (the project's venv) has the package installed.
    """
    settings = workflow.deployment_settings
    if settings is not None and DeploymentMethod.CONDA in settings.deployment_method:
        src = shlex.quote(str(Path(workflow.basedir) / "src"))
        return f"PYTHONPATH={src}${{PYTHONPATH:+:$PYTHONPATH}} python -m brainharmony"
    return f"{shlex.quote(sys.executable)} -m brainharmony"


BH = _package_command()


def dataset_description(wildcards):
    """The file that stands for a dataset in the DAG: a raw BIDS folder's
    dataset_description.json, or a parcellated dataset's run table.

    Demo datasets are produced by rule `demo`; a user's dataset must exist at planning
    time, and a missing one is reported now, not mid-run.
    """
    ds = config["datasets"][wildcards.dataset]
    path = Path(PLAN.ingest.source_path(wildcards.dataset))
    if not ds["demo"] and not path.exists():
        what = (
            "run_table must name the run table of its parcel series"
            if wildcards.dataset in PLAN.ingest.parcellated
            else "bids_dir must point at a raw BIDS folder"
        )
        raise ValueError(f"dataset '{wildcards.dataset}': {path} not found; {what}")
    return str(path)


# The training jobs' command: DDP through torchrun with more than one GPU (train.gpus).
TRAIN_BH = planning.train.launcher(BH, PLAN.train.gpus)
# BrainHarmonix-F's geometry tables (--set model.harmonics=... model.gradients=...).
TRAIN_GEOMETRY_SETS = planning.train.geometry_sets(PLAN.geometry)


# --------------------------------------------------------------------------------------
# Input and params functions (wildcards in; Snakemake calls them when it plans a job,
# after the ingest checkpoint of the job's dataset has run where they need it)
# --------------------------------------------------------------------------------------
def get_bids_dir(wildcards):
    return PLAN.ingest.bids_dir(wildcards.dataset)


def get_ingest_source(wildcards):
    """``--bids-dir DIR`` or ``--run-table FILE --n-rois N`` (shell-quoted)."""
    return PLAN.ingest.source_option(wildcards.dataset)


def get_parcel_source(wildcards):
    """A parcellated dataset's run: its released series file (scans.tsv `bold`)."""
    return _func_row(wildcards).bold


def get_parcel_tr(wildcards):
    return repr(_func_row(wildcards).tr)


def get_ingest_options(wildcards):
    return PLAN.ingest.options(wildcards.dataset)


def get_scans(wildcards):
    """The ingest checkpoint's scans.tsv of the job's dataset."""
    return planning.multitr.scans_of(wildcards.dataset, checkpoints.ingest)


def get_anat_dir(wildcards):
    return PLAN.anat.out_dir.format(dataset=wildcards.dataset)


def get_func_dir(wildcards):
    return PLAN.func.out_dir.format(dataset=wildcards.dataset)


def get_func_task(wildcards):
    return PLAN.ingest.tasks[wildcards.dataset]


def get_template_dir(wildcards, input):
    return str(Path(input.templates[0]).parent)


# anat -----------------------------------------------------------------------------------
def get_anat_t1w(wildcards):
    return planning.anat.t1w_for(
        get_scans(wildcards), wildcards.dataset, wildcards.subject, wildcards.get("session")
    )


def get_anat_session_option(wildcards):
    return f"--session {shlex.quote(wildcards.session)}"


def get_anat_targets(wildcards):
    """Every anat output of every dataset (anat_all)."""
    return planning.anat.targets(BIDS_DATASETS, checkpoints.ingest, PLAN.anat.settings)


def get_dataset_anat_targets(wildcards):
    """Every anat output of the job's dataset."""
    return planning.anat.targets([wildcards.dataset], checkpoints.ingest, PLAN.anat.settings)


# func -----------------------------------------------------------------------------------
def _func_row(wildcards):
    return planning.func.row(checkpoints.ingest, wildcards, PLAN.ingest.tasks)


def get_func_native_inputs(wildcards):
    """The run's BOLD and T1w, and the anatomy stage's outputs of that T1w."""
    row = _func_row(wildcards)
    return {
        "bold": row.bold,
        "t1w": row.t1w,
        **planning.func.anat_inputs(PLAN.func, wildcards.dataset, row),
    }


def get_func_run_options(wildcards):
    return planning.func.run_options(_func_row(wildcards), PLAN.ingest.tr_range)


def get_func_sidecar_option(wildcards):
    return planning.func.sidecar_option(_func_row(wildcards))


def get_fmriprep_root(wildcards):
    return planning.func.fmriprep_root(PLAN.func, wildcards.dataset, config["datasets"])


def get_fmriprep_work_dir(wildcards):
    return planning.func.fmriprep_work_dir(PLAN.func, wildcards.dataset, wildcards.subject)


def get_func_source_inputs(wildcards):
    """fMRIPrep backends: the participant's flag file, or the run's fMRIPrep files."""
    return planning.func.source_inputs(
        PLAN.func, checkpoints.ingest, wildcards, PLAN.ingest.tasks, config["datasets"]
    )


def get_func_source_options(wildcards):
    return planning.func.source_options(PLAN.func, wildcards.dataset, config["datasets"])


def get_func_targets(wildcards):
    """Every func output of every dataset (func_all)."""
    return planning.func.targets(DATASETS, checkpoints.ingest, PLAN.func, PLAN.ingest.tasks)


def get_dataset_func_targets(wildcards):
    """Every func output of the job's dataset."""
    return planning.func.targets(
        [wildcards.dataset], checkpoints.ingest, PLAN.func, PLAN.ingest.tasks
    )


# geometry, multi-TR ---------------------------------------------------------------------
def get_dataset_series(wildcards):
    """The denoised series of every run of the job's dataset."""
    return planning.multitr.denoised_series(
        wildcards.dataset, checkpoints.ingest, PLAN.func, PLAN.ingest.tasks
    )


def get_pretrain_series(wildcards):
    """The denoised series of every run of the pretraining datasets."""
    return planning.multitr.pretrain_series(
        PLAN.multitr, checkpoints.ingest, PLAN.func, PLAN.ingest.tasks
    )


def get_model_volumes(wildcards):
    return planning.multitr.model_volumes(wildcards.dataset, checkpoints.ingest, PLAN.anat.settings)


def get_model_volume_sidecars(wildcards):
    return planning.multitr.model_volumes(
        wildcards.dataset, checkpoints.ingest, PLAN.anat.settings, "model_json"
    )


def get_multitr_targets(wildcards):
    """Every series shard and index of every dataset (multitr_all)."""
    return planning.multitr.multitr_targets(DATASETS, checkpoints.ingest, PLAN.multitr)


# train ----------------------------------------------------------------------------------
def get_pretrain_shards(wildcards):
    """Named inputs `shards`, `indexes`: the pretraining datasets' multi-TR shards."""
    return planning.train.pretrain_series(PLAN.multitr, checkpoints.ingest)


def get_pretrain_pairs(wildcards):
    return planning.train.pretrain_pairs(PLAN.multitr, checkpoints.ingest)


def get_shard_pairs(wildcards, input):
    """--shard/--index pairs of the job's inputs `shards` and `indexes`."""
    return planning.train.shard_pairs(input.shards, input.indexes)


def get_bh_s_volumes(wildcards):
    """Named inputs `shards`, `indexes`: the T1 volume shards of the pretraining datasets
    that have T1w; an error naming the problem when none has (all parcellated)."""
    return {"shards": PLAN.multitr.volume_shards, "indexes": PLAN.multitr.volume_indexes}


def get_harmonizer_tokens(wildcards):
    """The token indexes of the pretraining datasets with T1w (the Harmonizer's data)."""
    datasets = planning.multitr.require_t1_pretrain(PLAN.multitr, "The Harmonizer")
    return [rules.embed_encoders.output.tokens.format(dataset=d) for d in datasets]


def get_bh_s_yaml(wildcards):
    """BrainHarmonix-S's YAML; one that does not fit the anatomy stage's box is refused."""
    anat = PLAN.anat.settings
    return planning.train.check_volume_shape(
        PLAN.train.yaml("bh_s"), anat.model_box_mm, anat.resolution_mm
    )


def get_state_dir(wildcards, output):
    """The resumable checkpoint folder of the job's model folder."""
    return planning.train.state_dir(planning.train.folder_of(output.weights))


def _native(wildcards, pattern):
    ms = planning.multitr.native_ms(wildcards.dataset, checkpoints.ingest)
    return pattern.format(dataset=wildcards.dataset, ms=ms)


def get_native_series_shard(wildcards):
    """The dataset's series shard at its own TR."""
    return _native(wildcards, PLAN.multitr.series_shard)


def get_native_series_index(wildcards):
    """The index of that shard."""
    return _native(wildcards, PLAN.multitr.series_index)


def get_token_index_options(wildcards, input):
    return " ".join(f"--index {shlex.quote(i)}" for i in input.tokens)


def get_harmonizer_grid(wildcards):
    """--set model.s_grid=[...] when the Harmonizer YAML says `s_grid: auto`."""
    anat = PLAN.anat.settings
    return planning.train.harmonizer_sets(PLAN.train, anat.model_box_mm, anat.resolution_mm)


# train: variants (train.variants; wildcard `variant`) ------------------------------------
def get_variant_train_inputs(wildcards):
    """Named inputs of a variant's training job: its YAML and its data (the pretraining
    series shards, all TRs or the native ones, with the scaling statistics and geometry
    tables; or the main encoders' token indexes)."""
    return planning.train.variant_train_inputs(
        PLAN.train,
        wildcards.variant,
        PLAN.multitr,
        PLAN.geometry,
        checkpoints.ingest,
        rules.embed_encoders.output.tokens,
    )


def get_variant_yaml(wildcards):
    """The variant's model YAML, checked (it exists; its kind suits the role)."""
    return planning.train.check_variant_yaml(PLAN.train, wildcards.variant)


def get_variant_train_args(wildcards):
    """Its data options and --set overrides (brainharmony.planning.train)."""
    anat = PLAN.anat.settings
    return planning.train.variant_train_args(
        PLAN.train,
        wildcards.variant,
        get_variant_train_inputs(wildcards),
        PLAN.geometry,
        anat.model_box_mm,
        anat.resolution_mm,
    )


def get_variant_embed_inputs(wildcards):
    """Named inputs of a variant's embedding job on one dataset."""
    name = wildcards.variant
    native = {}
    if PLAN.train.variants[name].role == "bh_f":
        native = {
            "series": get_native_series_shard(wildcards),
            "index": get_native_series_index(wildcards),
        }
    return planning.train.variant_embed_inputs(
        PLAN.train,
        name,
        wildcards.dataset,
        native,
        PLAN.multitr.scaling_stats,
        rules.embed_encoders.output.tokens,
        PLAN.ingest.parcellated,
    )


def get_variant_embed_args(wildcards, output):
    return planning.train.variant_embed_args(
        PLAN.train, wildcards.variant, get_variant_embed_inputs(wildcards), output[0]
    )


# evaluate -------------------------------------------------------------------------------
def _eval_task(wildcards):
    return planning.evaluate.task_of(PLAN.evaluate.settings, wildcards)


def get_eval_scans(wildcards):
    return planning.evaluate.scans(PLAN.evaluate.settings, wildcards, checkpoints.ingest)


def get_eval_target(wildcards):
    return _eval_task(wildcards).target


def get_eval_kind(wildcards):
    return _eval_task(wildcards).type


def get_eval_site_mode(wildcards):
    return _eval_task(wildcards).site_mode


def get_eval_models(wildcards):
    """The task's models (those needing T1w left out when it has only parcellated data)."""
    return planning.evaluate.models_for(
        PLAN.evaluate.settings, wildcards, PLAN.ingest.parcellated, PLAN.evaluate.needs_t1
    )


def get_eval_not_run(wildcards):
    """``--not-run NAME=REASON`` of the models get_eval_models leaves out (the tables'
    notes say why their cells are empty)."""
    return planning.evaluate.not_run_args(
        planning.evaluate.models_not_run(
            PLAN.evaluate.settings, wildcards, PLAN.ingest.parcellated, PLAN.evaluate.needs_t1
        )
    )


def get_eval_model_inputs(wildcards):
    """Named inputs of the models that need more than FC (embeddings, predictions: the
    predictor's and the evaluate.external files, the fine-tuned model folders and their
    data)."""
    return planning.evaluate.model_inputs(
        PLAN.evaluate.settings,
        wildcards,
        embeddings=PLAN.evaluate.embeddings,
        external=PLAN.evaluate.external,
        native_ms=lambda d: planning.multitr.native_ms(d, checkpoints.ingest),
        outputs=PLAN.train.outputs,
        parcellated=PLAN.ingest.parcellated,
        needs_t1=PLAN.evaluate.needs_t1,
    )


def get_eval_model_args(wildcards, input):
    return planning.evaluate.model_args(
        PLAN.evaluate.settings,
        input,
        embeddings=PLAN.evaluate.embeddings,
        external=PLAN.evaluate.external,
    )


def get_split_metas(wildcards):
    """splits.json of every seed of the task."""
    return planning.evaluate.split_metas(PLAN.evaluate.settings, wildcards)


def get_split_dirs(wildcards, input):
    return planning.evaluate.split_dirs(input.splits)


def get_eval_series(wildcards):
    """Denoised series of every run of the task's pooled datasets (the FC input)."""
    return planning.evaluate.series(
        PLAN.evaluate.settings, wildcards, checkpoints.ingest, PLAN.func, PLAN.ingest.tasks
    )


def _native_shards(wildcards, pattern):
    return [
        pattern.format(dataset=d, ms=planning.multitr.native_ms(d, checkpoints.ingest))
        for d in _eval_task(wildcards).datasets
    ]


def get_predictor_shards(wildcards):
    """The task's datasets' series shards at their own TR."""
    return _native_shards(wildcards, PLAN.multitr.series_shard)


def get_predictor_indexes(wildcards):
    """The indexes of those shards."""
    return _native_shards(wildcards, PLAN.multitr.series_index)


def get_predictor_lmae(wildcards):
    """The predictor's LMAE: the pretrained folder's weights (evaluate.predictor_lmae:
    shared) or the LMAE YAML pretrained per fold (per_fold)."""
    return planning.evaluate.predictor_lmae_inputs(
        PLAN.evaluate.settings, PLAN.train.yaml("lmae"), PLAN.train.outputs
    )


def get_predictor_lmae_args(wildcards):
    """``--init DIR`` or ``--lmae-config YAML`` (see get_predictor_lmae)."""
    return planning.evaluate.predictor_lmae_args(
        PLAN.evaluate.settings, PLAN.train.yaml("lmae"), PLAN.train.outputs
    )


def get_predictor_work(wildcards):
    return f"work/predictor/{wildcards.dataset}/{wildcards.task}"


def get_report_stages(wildcards):
    """The other stages' outputs (their QC goes into the report)."""
    return [
        *rules.ingest_all.input,
        *get_anat_targets(wildcards),
        *get_func_targets(wildcards),
    ]


def get_evaluate_targets(wildcards):
    """The tables and the report; without evaluate.tasks, the error that says so."""
    return planning.evaluate.require_tasks(
        PLAN.evaluate.settings, [*rules.eval_tables.output, *rules.report.output]
    )


def get_splits_targets(wildcards):
    """Every task's split folders (the export for predictions made outside the workflow);
    without evaluate.tasks, the error that says so."""
    return planning.evaluate.require_tasks(PLAN.evaluate.settings, PLAN.evaluate.split_files)
