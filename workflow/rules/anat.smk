# Anatomy: each T1w (one per subject, or per subject and session) -> template space.
# Jobs come from the rows of the ingest checkpoint's scans.tsv (only T1ws that exist).
# Outputs (BIDS-Derivatives) under results/anat/<dataset>/: see docs/anat.md.
# anat_templates writes the template (image + brain mask, 1 and 2 mm) once to
# resources/templates/; every anat job reads it from there (--template-dir).
# Planning-time helpers live in the package: brainharmony.anat.planning.
from brainharmony.anat import planning as anat_planning

ANAT_SETTINGS = anat_planning.settings_from_config(config)
# A non-native backend whose executables are missing stops the workflow here, now.
anat_planning.check_can_run(ANAT_SETTINGS)


rule anat_templates:
    output:
        **anat_planning.template_outputs(ANAT_SETTINGS),
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
        out_dir=lambda wildcards, output: str(Path(output.res1).parent),
        template=ANAT_SETTINGS.template,
    shell:
        "{params.bh} -v templates --out-dir {params.out_dir:q} --template {params.template:q} "
        "--resolutions 1 2 > {log:q} 2>&1"


rule anat:
    input:
        t1w=lambda wildcards: anat_planning.t1w_for(
            checkpoints.ingest.get(dataset=wildcards.dataset).output.scans,
            wildcards.dataset,
            wildcards.subject,
            wildcards.get("session"),
        ),
        templates=rules.anat_templates.output,
    output:
        **anat_planning.rule_outputs(ANAT_SETTINGS, session=False),
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
        mem_mb=anat_planning.MEM_MB[ANAT_SETTINGS.resolution_mm],
        runtime=anat_planning.RUNTIME_MIN[ANAT_SETTINGS.resolution_mm],
    params:
        bh=BH,
        out_dir=lambda wildcards: f"results/anat/{wildcards.dataset}",
        options=anat_planning.cli_options(ANAT_SETTINGS),
        template_dir=lambda wildcards, input: str(Path(input.templates[0]).parent),
        session="",
    shell:
        "{params.bh} -v anat --t1w {input.t1w:q} --out-dir {params.out_dir:q} "
        "--subject {wildcards.subject:q} {params.session} {params.options} "
        "--template-dir {params.template_dir:q} > {log:q} 2>&1"


use rule anat as anat_session with:
    output:
        **anat_planning.rule_outputs(ANAT_SETTINGS, session=True),
    log:
        "logs/anat/{dataset}/sub-{subject}_ses-{session}.log",
    benchmark:
        "benchmarks/results/anat/{dataset}/sub-{subject}_ses-{session}.tsv"
    params:
        bh=BH,
        out_dir=lambda wildcards: f"results/anat/{wildcards.dataset}",
        options=anat_planning.cli_options(ANAT_SETTINGS),
        template_dir=lambda wildcards, input: str(Path(input.templates[0]).parent),
        session=lambda wildcards: f"--session {shlex.quote(wildcards.session)}",
