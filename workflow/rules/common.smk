# Shared definitions: config validation, wildcard constraints, input functions.
import shlex
import sys
from pathlib import Path

from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod

from brainharmony.config import load_yaml, validate_config
from brainharmony.hpc import check_slurm_status_queries

# Snakemake's YAML reader keeps the last of two duplicate keys and expands aliases
# without bound: each config file is read again strictly (brainharmony.config.load_yaml:
# a duplicate key or an alias bomb stops here, naming the file, line and key).
for _configfile in workflow.configfiles:
    load_yaml(_configfile)
validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")


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


def bids_dir(dataset):
    return config["datasets"][dataset]["bids_dir"]


def dataset_description(wildcards):
    """The file that stands for a raw BIDS dataset in the DAG.

    Demo datasets are produced by rule `demo`; a user's dataset must exist at planning
    time, and a missing one is reported now, not mid-run.
    """
    ds = config["datasets"][wildcards.dataset]
    path = Path(ds["bids_dir"]) / "dataset_description.json"
    if not ds["demo"] and not path.exists():
        raise ValueError(
            f"dataset '{wildcards.dataset}': {path} not found; "
            f"bids_dir must point at a raw BIDS folder"
        )
    return str(path)
