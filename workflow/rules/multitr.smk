# Multi-TR: each dataset's denoised series at every target TR, packed into one shard +
# index per dataset and TR (file names carry the TR in ms); the model-ready T1 volumes
# packed per dataset (minus the T1ws the anatomy stage excluded); robust-scaling
# statistics over the pretraining set.
# Outputs under results/multitr/: see docs/multitr.md.


rule multitr:
    input:
        scans=lambda wildcards: bh_plan.scans_of(wildcards.dataset, checkpoints.ingest),
        series=lambda wildcards: bh_plan.denoised_series(
            wildcards.dataset, checkpoints.ingest, FUNC, FUNC_TASKS
        ),
    output:
        shard=bh_plan.series_shard("series"),
        index=bh_plan.series_shard("index"),
    log:
        "logs/multitr/{dataset}_tr-{ms}.log",
    benchmark:
        "benchmarks/results/multitr/{dataset}_tr-{ms}.tsv"
    wildcard_constraints:
        ms=r"\d+",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        bh=BH,
        method=MULTITR.method,
        seed=MULTITR.seed,
    shell:
        "{params.bh} -v multitr --scans {input.scans:q} --series {input.series:q} "
        "--tr-out-ms {wildcards.ms} --method {params.method:q} --seed {params.seed} "
        "--shard {output.shard:q} --index {output.index:q} > {log:q} 2>&1"


rule pack_volumes:
    input:
        scans=lambda wildcards: bh_plan.scans_of(wildcards.dataset, checkpoints.ingest),
        volumes=lambda wildcards: bh_plan.model_volumes(
            wildcards.dataset, checkpoints.ingest, ANAT_SETTINGS
        ),
        # read next to each volume: a T1w the anatomy QC gate excluded is left out of
        # the shard and listed in its sidecar (ExcludedSources); all excluded: an error
        sidecars=lambda wildcards: bh_plan.model_volumes(
            wildcards.dataset, checkpoints.ingest, ANAT_SETTINGS, "model_json"
        ),
    output:
        shard=bh_plan.VOLUME_SHARD,
        index=bh_plan.VOLUME_INDEX,
    log:
        "logs/multitr/{dataset}_T1w_volumes.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        bh=BH,
    shell:
        "{params.bh} -v pack --kind volumes --files {input.volumes:q} --scans {input.scans:q} "
        "--shard {output.shard:q} --index {output.index:q} > {log:q} 2>&1"


rule scaling_stats:
    input:
        series=lambda wildcards: bh_plan.pretrain_series(
            MULTITR, checkpoints.ingest, FUNC, FUNC_TASKS
        ),
    output:
        stats=bh_plan.SCALING_STATS,
    log:
        "logs/multitr/scaling_stats.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        bh=BH,
        mode=MULTITR.scaling_mode,
    shell:
        "{params.bh} -v scaling-stats --series {input.series:q} --mode {params.mode:q} "
        "--out {output.stats:q} > {log:q} 2>&1"
