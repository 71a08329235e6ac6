# Anatomy: each T1w (one per subject, or per subject and session) -> template space.
# Jobs come from the rows of the ingest checkpoint's scans.tsv (only T1ws that exist).
# Outputs (BIDS-Derivatives) under results/anat/<dataset>/: see docs/anat.md.
# anat_templates writes the template (image + brain mask, 1 and 2 mm) once to
# resources/templates/; every anat job reads it from there (--template-dir).
# Planning: brainharmony.planning.anat (PLAN.anat; a non-native backend whose
# executables are missing stops the workflow when the plan is built, in common.smk).


rule anat_templates:
    output:
        **PLAN.anat.template_outputs,
    log:
        "logs/anat/templates.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        bh=BH,
        out_dir=subpath(output.res1, parent=True),
        template=PLAN.anat.settings.template,
    shell:
        "{params.bh} -v templates --out-dir {params.out_dir:q} --template {params.template:q} "
        "--resolutions 1 2 > {log:q} 2>&1"


rule anat:
    input:
        t1w=get_anat_t1w,
        templates=rules.anat_templates.output,
    output:
        **PLAN.anat.outputs(session=False),
    log:
        "logs/anat/{dataset}/sub-{subject}.log",
    benchmark:
        "benchmarks/results/anat/{dataset}/sub-{subject}.tsv"
    # On a cluster: --group-components anat=N puts N T1ws into one job (docs/hpc.md).
    group:
        "anat"
    conda:
        str(ENVS / "preproc.yaml")
    # One thread: SimpleITK's multithreaded sums vary in the last bits between runs.
    threads: 1
    resources:
        mem_mb=PLAN.anat.mem_mb,
        runtime=PLAN.anat.runtime_min,
    params:
        bh=BH,
        out_dir=get_anat_dir,
        options=PLAN.anat.options,
        template_dir=get_template_dir,
        session="",
    shell:
        "{params.bh} -v anat --t1w {input.t1w:q} --out-dir {params.out_dir:q} "
        "--subject {wildcards.subject:q} {params.session} {params.options} "
        "--template-dir {params.template_dir:q} > {log:q} 2>&1"


use rule anat as anat_session with:
    output:
        **PLAN.anat.outputs(session=True),
    log:
        "logs/anat/{dataset}/sub-{subject}_ses-{session}.log",
    benchmark:
        "benchmarks/results/anat/{dataset}/sub-{subject}_ses-{session}.tsv"
    params:
        bh=BH,
        out_dir=get_anat_dir,
        options=PLAN.anat.options,
        template_dir=get_template_dir,
        session=get_anat_session_option,
