# brainharmony: raw BIDS MRI -> brain foundation models -> paper tables.
# Entry point only: config, validation, rule files, final target.
# Run:  snakemake --cores 2 --configfile my-config.yaml   (your data: README "Running on
#                                                        your own data")
#       snakemake --cores 2            (no --configfile: the demo, config/demo.yaml)
#       snakemake ingest_all           (one stage; see README "Rerunning one stage")
from pathlib import Path

from snakemake.logging import logger
from snakemake.utils import min_version

min_version("9.0")


# A --configfile defines the whole run: the demo config is read only when none is given
# (Snakemake would otherwise merge the user's config into it, demo datasets included).
if not workflow.overwrite_configfiles:

    configfile: str(Path(workflow.basedir) / "config" / "demo.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/anat.smk"
include: "workflow/rules/func.smk"
include: "workflow/rules/geometry.smk"
include: "workflow/rules/multitr.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/targets.smk"


if not PLAN.evaluate.settings.tasks:
    logger.warning(
        "evaluate.tasks is empty: `all` stops after train_all (no evaluation, no report); "
        "add tasks to run them (docs/evaluation.md)"
    )


rule all:
    default_target: True
    input:
        rules.ingest_all.input,
        rules.anat_all.input,
        rules.func_all.input,
        rules.qc_all.input,
        rules.geometry_all.input,
        rules.multitr_all.input,
        rules.train_all.input,
        rules.evaluate_all.input if PLAN.evaluate.settings.tasks else [],
