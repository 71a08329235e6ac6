# Functional stage: BOLD runs -> denoised Schaefer-400 time series (+ confounds, motion, QC).
# Jobs come from the rows of the ingest checkpoint's scans.tsv (only runs that exist).
# Backends (config func.backend): native (default), fmriprep, fmriprep-derivatives.
#   native: func_native (motion, slice timing, BOLD->T1w (registered to the anatomy
#           stage's T1w brain, func.coreg; an anatomy-excluded T1w or a registration
#           failing its QC gate writes the run excluded) ->template in one resampling,
#           then the same denoising and parcellation code as func_denoise, in memory;
#           the 4-D template BOLD is written only with func.keep_bold).
#   fmriprep: fmriprep (one job per participant) -> func_denoise.
#   fmriprep-derivatives: an existing fMRIPrep folder -> func_denoise.
# Outputs (BIDS-Derivatives) under results/func/<dataset>/: see docs/func.md.
# Planning-time helpers live in the package: brainharmony.func.planning.
from brainharmony.func import planning as func_planning

FUNC = func_planning.settings_from_config(config)
FUNC_TASKS = {name: ds.get("task", "rest") for name, ds in config["datasets"].items()}


# The atlas of the BOLD's template space, looked up offline now (func.atlas; docs/func.md):
# the official Schaefer2018 volume when found, else the offline rebuild, named apart.
rule func_atlas:
    input:
        **func_planning.atlas_inputs(FUNC),
    output:
        **func_planning.atlas_outputs(FUNC),
    log:
        f"logs/func/atlas_res-{FUNC.res}.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=3000,
        runtime=15,
    params:
        bh=BH,
        out_dir=lambda wildcards, output: str(Path(output.image).parent),
        resolution=FUNC.resolution_mm,
        atlas=func_planning.atlas_options(FUNC),
    shell:
        "{params.bh} -v func atlas --resolution {params.resolution:q} "
        "--out-dir {params.out_dir:q} {params.atlas} > {log:q} 2>&1"


if FUNC.backend == "native":

    rule func_native:
        input:
            bold=lambda wildcards: func_planning.row(checkpoints.ingest, wildcards, FUNC_TASKS).bold,
            t1w=lambda wildcards: func_planning.row(checkpoints.ingest, wildcards, FUNC_TASKS).t1w,
            t1w_to_template=lambda wildcards: func_planning.anat_inputs(
                FUNC,
                wildcards.dataset,
                func_planning.row(checkpoints.ingest, wildcards, FUNC_TASKS),
            )["t1w_to_template"],
            t1w_brain=lambda wildcards: func_planning.anat_inputs(
                FUNC,
                wildcards.dataset,
                func_planning.row(checkpoints.ingest, wildcards, FUNC_TASKS),
            )["t1w_brain"],
            t1w_brain_mask=lambda wildcards: func_planning.anat_inputs(
                FUNC,
                wildcards.dataset,
                func_planning.row(checkpoints.ingest, wildcards, FUNC_TASKS),
            )["t1w_brain_mask"],
            anat_sidecar=lambda wildcards: func_planning.anat_inputs(
                FUNC,
                wildcards.dataset,
                func_planning.row(checkpoints.ingest, wildcards, FUNC_TASKS),
            )["anat_sidecar"],
            atlas=rules.func_atlas.output.image,
            labels=rules.func_atlas.output.labels,
            tissues=rules.func_atlas.output.tissues,
        output:
            **func_planning.native_outputs(FUNC),
            **func_planning.denoise_outputs(FUNC),
        log:
            "logs/func/{dataset}/{fdir}/{fstem}_native.log",
        benchmark:
            "benchmarks/results/func/{dataset}/{fdir}/{fstem}_native.tsv"
        wildcard_constraints:
            fdir=func_planning.FDIR,
            fstem=func_planning.FSTEM,
        # On a cluster: --group-components func=N puts N runs into one job (docs/hpc.md).
        group:
            "func"
        conda:
            str(ENVS / "preproc.yaml")
        # One thread: a second one bought nothing (default demoA run, 160 volumes, load 3.7:
        # 24.4 s wall with 1 thread, 27.6 s with 2), so two runs side by side beat one run
        # on two threads. A cluster profile may raise it (set-threads).
        threads: 1
        resources:
            mem_mb=func_planning.MEM_MB["native"],
            runtime=func_planning.RUNTIME_MIN["native"],
        params:
            bh=BH,
            out_dir=lambda wildcards: f"results/func/{wildcards.dataset}",
            run=lambda wildcards: func_planning.run_options(
                func_planning.row(checkpoints.ingest, wildcards, FUNC_TASKS),
                config["ingest"]["tr_range"],
            ),
            sidecar=lambda wildcards: func_planning.sidecar_option(
                func_planning.row(checkpoints.ingest, wildcards, FUNC_TASKS)
            ),
            options=func_planning.native_options(FUNC),
            denoise=func_planning.denoise_options(FUNC),
            keep_bold="--keep-bold" if FUNC.keep_bold else "",
        shell:
            "{params.bh} -v func native {params.keep_bold} --bold {input.bold:q} "
            "{params.sidecar} --t1w {input.t1w:q} --t1w-to-template {input.t1w_to_template:q} "
            "--t1w-brain {input.t1w_brain:q} --t1w-brain-mask {input.t1w_brain_mask:q} "
            "--anat-sidecar {input.anat_sidecar:q} "
            "--atlas {input.atlas:q} --atlas-labels {input.labels:q} "
            "--tissue-masks {input.tissues:q} --out-dir {params.out_dir:q} {params.run} "
            "{params.options} {params.denoise} --threads {threads} > {log:q} 2>&1"

else:

    if FUNC.backend == "fmriprep":

        rule fmriprep:
            input:
                description=dataset_description,
                scans=lambda wildcards: checkpoints.ingest.get(
                    dataset=wildcards.dataset
                ).output.scans,
            output:
                done=func_planning.fmriprep_done(FUNC, "{dataset}", "{subject}", config["datasets"]),
            log:
                "logs/func/{dataset}/sub-{subject}_fmriprep.log",
            benchmark:
                "benchmarks/results/func/{dataset}/sub-{subject}_fmriprep.tsv"
            conda:
                str(ENVS / "preproc.yaml")
            threads: 8
            resources:
                mem_mb=func_planning.MEM_MB["fmriprep"],
                runtime=func_planning.RUNTIME_MIN["fmriprep"],
            params:
                bh=BH,
                bids_dir=lambda wildcards: bids_dir(wildcards.dataset),
                out_dir=lambda wildcards: func_planning.fmriprep_root(
                    FUNC, wildcards.dataset, config["datasets"]
                ),
                work_dir=lambda wildcards: (
                    f"{FUNC.fmriprep.get('work_root', 'work/fmriprep')}/"
                    f"{wildcards.dataset}/sub-{wildcards.subject}"
                ),
                options=func_planning.fmriprep_options(FUNC),
            shell:
                "{params.bh} -v func fmriprep --bids-dir {params.bids_dir:q} "
                "--fmriprep-dir {params.out_dir:q} --work-dir {params.work_dir:q} "
                "--participant-label {wildcards.subject:q} --nthreads {threads} "
                "{params.options} --done {output.done:q} > {log:q} 2>&1"

    rule func_denoise:
        input:
            unpack(
                lambda wildcards: func_planning.source_inputs(
                    FUNC, checkpoints.ingest, wildcards, FUNC_TASKS, config["datasets"]
                )
            ),
            atlas=rules.func_atlas.output.image,
            labels=rules.func_atlas.output.labels,
        output:
            **func_planning.denoise_outputs(FUNC),
        log:
            "logs/func/{dataset}/{fdir}/{fstem}_denoise.log",
        benchmark:
            "benchmarks/results/func/{dataset}/{fdir}/{fstem}_denoise.tsv"
        wildcard_constraints:
            fdir=func_planning.FDIR,
            fstem=func_planning.FSTEM,
        group:
            "func"
        conda:
            str(ENVS / "preproc.yaml")
        threads: 1
        resources:
            mem_mb=func_planning.MEM_MB["denoise"],
            runtime=func_planning.RUNTIME_MIN["denoise"],
        params:
            bh=BH,
            out_dir=lambda wildcards: f"results/func/{wildcards.dataset}",
            source=lambda wildcards: func_planning.source_options(
                FUNC, wildcards.dataset, config["datasets"]
            ),
            run=lambda wildcards: func_planning.run_options(
                func_planning.row(checkpoints.ingest, wildcards, FUNC_TASKS),
                config["ingest"]["tr_range"],
            ),
            denoise=func_planning.denoise_options(FUNC),
        shell:
            "{params.bh} -v func derivatives {params.source} --atlas {input.atlas:q} "
            "--atlas-labels {input.labels:q} --out-dir {params.out_dir:q} {params.run} "
            "{params.denoise} > {log:q} 2>&1"
