# One target per stage, so a single stage can be (re)run by name: `snakemake ingest_all`.


rule ingest_all:
    input:
        expand(rules.ingest.output.scans, dataset=DATASETS),
        expand(rules.ingest.output.excluded, dataset=DATASETS),


rule anat_all:
    input:
        lambda wildcards: anat_planning.targets(DATASETS, checkpoints.ingest, ANAT_SETTINGS),


rule func_all:
    input:
        lambda wildcards: func_planning.targets(DATASETS, checkpoints.ingest, FUNC, FUNC_TASKS),
