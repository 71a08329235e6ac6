# brainharmony: raw BIDS MRI -> brain foundation models -> paper tables.
# Entry point only: config, validation, rule files, final target.
# Run:  snakemake --cores 2            (main job on the embedded demo data)
#       snakemake ingest_all           (one stage; see README "Rerunning one stage")
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/anat.smk"
include: "workflow/rules/func.smk"
include: "workflow/rules/geometry.smk"
include: "workflow/rules/multitr.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/targets.smk"


rule all:
    default_target: True
    input:
        rules.ingest_all.input,
        rules.anat_all.input,
        rules.func_all.input,
        rules.geometry_all.input,
        rules.multitr_all.input,
        rules.train_all.input,
        rules.evaluate_all.input,
