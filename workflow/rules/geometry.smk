# Geometry: geometric harmonics of the population surface (one job) and functional
# gradients of the pretraining set's group FC, aligned per dataset.
# Outputs under results/geometry/: see docs/geometry.md. Planning:
# brainharmony.planning.geometry (PLAN.geometry).


rule harmonics:
    output:
        table=PLAN.geometry.harmonics_table,
        figure=PLAN.geometry.harmonics_figure,
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
        surface=PLAN.geometry.surface,
        k=PLAN.geometry.n_modes,
    shell:
        "{params.bh} -v harmonics --template {params.surface:q} --n-modes {params.k} "
        "--out-table {output.table:q} --qc-figure {output.figure:q} --threads {threads} "
        "> {log:q} 2>&1"


rule gradients_group:
    input:
        series=get_pretrain_series,
    output:
        table=PLAN.geometry.group_gradients,
        fc=PLAN.geometry.group_fc,
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
        g=PLAN.geometry.n_gradients,
        kernel=PLAN.geometry.kernel,
        sparsity=PLAN.geometry.sparsity,
    shell:
        "{params.bh} -v gradients --series {input.series:q} --n-components {params.g} "
        "--kernel {params.kernel:q} --sparsity {params.sparsity} --out {output.table:q} "
        "--out-fc {output.fc:q} > {log:q} 2>&1"


rule gradients_dataset:
    input:
        series=get_dataset_series,
        reference=rules.gradients_group.output.table,
    output:
        table=PLAN.geometry.dataset_gradients,
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
        g=PLAN.geometry.n_gradients,
        kernel=PLAN.geometry.kernel,
        sparsity=PLAN.geometry.sparsity,
    shell:
        "{params.bh} -v gradients --series {input.series:q} --n-components {params.g} "
        "--kernel {params.kernel:q} --sparsity {params.sparsity} "
        "--reference {input.reference:q} --out {output.table:q} > {log:q} 2>&1"
