# Geometry: geometric harmonics of the population surface (one job) and functional
# gradients of the pretraining set's group FC, aligned per dataset.
# Outputs under results/geometry/: see docs/geometry.md.
from brainharmony.timeseries import planning as bh_plan

GEOMETRY = bh_plan.geometry_from_config(config)
MULTITR = bh_plan.multitr_from_config(config)


rule harmonics:
    output:
        table=bh_plan.harmonics_table(GEOMETRY),
        figure=bh_plan.harmonics_figure(GEOMETRY),
    log:
        "logs/geometry/harmonics.log",
    benchmark:
        "benchmarks/results/geometry/harmonics.tsv"
    # It reads no other job's output: run it among the preprocessing jobs, not after them,
    # where BrainHarmonix-F's training would wait for it.
    priority: 10
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        bh=BH,
        surface=GEOMETRY.surface,
        k=GEOMETRY.n_modes,
    shell:
        "{params.bh} -v harmonics --template {params.surface:q} --n-modes {params.k} "
        "--out-table {output.table:q} --qc-figure {output.figure:q} --threads {threads} "
        "> {log:q} 2>&1"


rule gradients_group:
    input:
        series=lambda wildcards: bh_plan.pretrain_series(
            MULTITR, checkpoints.ingest, FUNC, FUNC_TASKS
        ),
    output:
        table=bh_plan.group_gradients(GEOMETRY),
        fc="results/geometry/atlas-Schaefer400_desc-group_fc.npy",
    log:
        "logs/geometry/gradients_group.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        bh=BH,
        g=GEOMETRY.n_gradients,
        kernel=GEOMETRY.kernel,
        sparsity=GEOMETRY.sparsity,
    shell:
        "{params.bh} -v gradients --series {input.series:q} --n-components {params.g} "
        "--kernel {params.kernel:q} --sparsity {params.sparsity} --out {output.table:q} "
        "--out-fc {output.fc:q} > {log:q} 2>&1"


rule gradients_dataset:
    input:
        series=lambda wildcards: bh_plan.denoised_series(
            wildcards.dataset, checkpoints.ingest, FUNC, FUNC_TASKS
        ),
        reference=rules.gradients_group.output.table,
    output:
        table=bh_plan.dataset_gradients(GEOMETRY),
    log:
        "logs/geometry/{dataset}_gradients.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        bh=BH,
        g=GEOMETRY.n_gradients,
        kernel=GEOMETRY.kernel,
        sparsity=GEOMETRY.sparsity,
    shell:
        "{params.bh} -v gradients --series {input.series:q} --n-components {params.g} "
        "--kernel {params.kernel:q} --sparsity {params.sparsity} "
        "--reference {input.reference:q} --out {output.table:q} > {log:q} 2>&1"
