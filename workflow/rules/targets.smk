# One target per stage, so a single stage can be (re)run by name: `snakemake ingest_all`.


rule ingest_all:
    input:
        expand(rules.ingest.output.scans, dataset=DATASETS),
        expand(rules.ingest.output.excluded, dataset=DATASETS),


rule anat_all:
    input:
        get_anat_targets,


rule func_all:
    input:
        get_func_targets,


rule qc_all:
    input:
        expand(rules.group_qc.output.table, dataset=BIDS_DATASETS),
        expand(rules.group_qc.output.sidecar, dataset=BIDS_DATASETS),
        expand(rules.group_qc.output.pages, dataset=BIDS_DATASETS),


rule geometry_all:
    input:
        PLAN.geometry.harmonics_table,
        PLAN.geometry.harmonics_figure,
        PLAN.geometry.group_gradients,
        expand(PLAN.geometry.dataset_gradients, dataset=DATASETS),


rule multitr_all:
    input:
        get_multitr_targets,
        expand(PLAN.multitr.volume_shard, dataset=BIDS_DATASETS),
        expand(PLAN.multitr.volume_index, dataset=BIDS_DATASETS),
        PLAN.multitr.scaling_stats,


rule train_all:
    input:
        *(PLAN.train.model_outputs(role).values() for role in PLAN.train.trained),
        expand(rules.embed_encoders.output, dataset=BIDS_DATASETS),
        expand(rules.embed_harmonizer.output, dataset=BIDS_DATASETS),
        expand(rules.embed_f.output, dataset=PLAN.ingest.parcellated),
        # train.variants: each one's model folder and features
        PLAN.train.variant_targets(DATASETS, BIDS_DATASETS),


# The one stage that needs more than the schema defaults: evaluate.tasks (which
# phenotypes to predict). Without tasks it stops with a message that says so.
rule evaluate_all:
    input:
        get_evaluate_targets,


# The split files alone (results/splits/<ds>/<task>/seed-<s>/): what code outside the
# workflow predicts on for an evaluate.external row (docs/evaluation.md).
rule splits_all:
    input:
        get_splits_targets,
