# Multi-TR: each dataset's denoised series at every target TR, packed into one shard +
# index per dataset and TR (file names carry the TR in ms); the model-ready T1 volumes
# packed per dataset (minus the T1ws the anatomy stage excluded); robust-scaling
# statistics over the pretraining set.
# Outputs under results/multitr/: see docs/multitr.md. Planning:
# brainharmony.planning.multitr (PLAN.multitr).


rule multitr:
    input:
        scans=get_scans,
        series=get_dataset_series,
    output:
        shard=PLAN.multitr.series_shard,
        index=PLAN.multitr.series_index,
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
        method=PLAN.multitr.method,
        seed=PLAN.multitr.seed,
    shell:
        "{params.bh} -v multitr --scans {input.scans:q} --series {input.series:q} "
        "--tr-out-ms {wildcards.ms} --method {params.method:q} --seed {params.seed} "
        "--shard {output.shard:q} --index {output.index:q} > {log:q} 2>&1"


rule pack_volumes:
    input:
        scans=get_scans,
        volumes=get_model_volumes,
        # read next to each volume: a T1w the anatomy QC gate excluded is left out of
        # the shard and listed in its sidecar (ExcludedSources); all excluded: an error
        sidecars=get_model_volume_sidecars,
    output:
        shard=PLAN.multitr.volume_shard,
        index=PLAN.multitr.volume_index,
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
        series=get_pretrain_series,
    output:
        stats=PLAN.multitr.scaling_stats,
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
        mode=PLAN.multitr.scaling_mode,
    shell:
        "{params.bh} -v scaling-stats --series {input.series:q} --mode {params.mode:q} "
        "--out {output.stats:q} > {log:q} 2>&1"
