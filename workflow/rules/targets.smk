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


rule qc_all:
    input:
        expand(rules.group_qc.output.table, dataset=DATASETS),
        expand(rules.group_qc.output.sidecar, dataset=DATASETS),
        expand(rules.group_qc.output.pages, dataset=DATASETS),


rule geometry_all:
    input:
        bh_plan.harmonics_table(GEOMETRY),
        bh_plan.harmonics_figure(GEOMETRY),
        bh_plan.group_gradients(GEOMETRY),
        expand(bh_plan.dataset_gradients(GEOMETRY), dataset=DATASETS),


rule multitr_all:
    input:
        lambda wildcards: bh_plan.multitr_targets(DATASETS, checkpoints.ingest, MULTITR),
        expand(bh_plan.VOLUME_SHARD, dataset=DATASETS),
        expand(bh_plan.VOLUME_INDEX, dataset=DATASETS),
        bh_plan.SCALING_STATS,


rule train_all:
    input:
        *(
            train_plan.model_outputs(role).values()
            for role in ("bh_s", "bh_f", "harmonizer", "lmae")
        ),
        expand(rules.embed_encoders.output, dataset=DATASETS),
        expand(rules.embed_harmonizer.output, dataset=DATASETS),


# The one stage that needs more than the schema defaults: evaluate.tasks (which
# phenotypes to predict). Without tasks it stops with a message that says so.
rule evaluate_all:
    input:
        lambda wildcards: eval_plan.require_tasks(
            EVAL, [*rules.eval_tables.output, *rules.report.output]
        ),
