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
# Planning: brainharmony.planning.func (PLAN.func; the task of each dataset:
# PLAN.ingest.tasks).


# The atlas of the BOLD's template space, looked up offline now (func.atlas; docs/func.md):
# the official Schaefer2018 volume when found, else the offline rebuild, named apart.
rule func_atlas:
    input:
        **PLAN.func.atlas_inputs,
    output:
        **PLAN.func.atlas_outputs,
    log:
        f"logs/func/atlas_res-{PLAN.func.res}.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=3000,
        runtime=15,
    params:
        bh=BH,
        out_dir=subpath(output.image, parent=True),
        resolution=PLAN.func.resolution_mm,
        atlas=PLAN.func.atlas_options,
    shell:
        "{params.bh} -v func atlas --resolution {params.resolution:q} "
        "--out-dir {params.out_dir:q} {params.atlas} > {log:q} 2>&1"


if PLAN.func.backend == "native":

    rule func_native:
        input:
            unpack(get_func_native_inputs),
            atlas=rules.func_atlas.output.image,
            labels=rules.func_atlas.output.labels,
            tissues=rules.func_atlas.output.tissues,
        output:
            **PLAN.func.native_outputs,
            **PLAN.func.denoise_outputs,
        log:
            "logs/func/{dataset}/{fdir}/{fstem}_native.log",
        benchmark:
            "benchmarks/results/func/{dataset}/{fdir}/{fstem}_native.tsv"
        wildcard_constraints:
            fdir=PLAN.func.fdir,
            fstem=PLAN.func.fstem,
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
            mem_mb=PLAN.func.mem_mb["native"],
            runtime=PLAN.func.runtime_min["native"],
        params:
            bh=BH,
            out_dir=get_func_dir,
            run=get_func_run_options,
            sidecar=get_func_sidecar_option,
            options=PLAN.func.native_options,
            denoise=PLAN.func.denoise_options,
            keep_bold="--keep-bold" if PLAN.func.keep_bold else "",
        shell:
            "{params.bh} -v func native {params.keep_bold} --bold {input.bold:q} "
            "{params.sidecar} --t1w {input.t1w:q} --t1w-to-template {input.t1w_to_template:q} "
            "--t1w-brain {input.t1w_brain:q} --t1w-brain-mask {input.t1w_brain_mask:q} "
            "--anat-sidecar {input.anat_sidecar:q} "
            "--atlas {input.atlas:q} --atlas-labels {input.labels:q} "
            "--tissue-masks {input.tissues:q} --out-dir {params.out_dir:q} {params.run} "
            "{params.options} {params.denoise} --threads {threads} > {log:q} 2>&1"

else:

    if PLAN.func.backend == "fmriprep":

        rule fmriprep:
            input:
                description=dataset_description,
                scans=get_scans,
            output:
                done=PLAN.func.fmriprep_done,
            log:
                "logs/func/{dataset}/sub-{subject}_fmriprep.log",
            benchmark:
                "benchmarks/results/func/{dataset}/sub-{subject}_fmriprep.tsv"
            conda:
                str(ENVS / "preproc.yaml")
            threads: 8
            resources:
                mem_mb=PLAN.func.mem_mb["fmriprep"],
                runtime=PLAN.func.runtime_min["fmriprep"],
            params:
                bh=BH,
                bids_dir=get_bids_dir,
                out_dir=get_fmriprep_root,
                work_dir=get_fmriprep_work_dir,
                options=PLAN.func.fmriprep_options,
            shell:
                "{params.bh} -v func fmriprep --bids-dir {params.bids_dir:q} "
                "--fmriprep-dir {params.out_dir:q} --work-dir {params.work_dir:q} "
                "--participant-label {wildcards.subject:q} --nthreads {threads} "
                "{params.options} --done {output.done:q} > {log:q} 2>&1"

    rule func_denoise:
        input:
            unpack(get_func_source_inputs),
            atlas=rules.func_atlas.output.image,
            labels=rules.func_atlas.output.labels,
        output:
            **PLAN.func.denoise_outputs,
        log:
            "logs/func/{dataset}/{fdir}/{fstem}_denoise.log",
        benchmark:
            "benchmarks/results/func/{dataset}/{fdir}/{fstem}_denoise.tsv"
        wildcard_constraints:
            fdir=PLAN.func.fdir,
            fstem=PLAN.func.fstem,
        group:
            "func"
        conda:
            str(ENVS / "preproc.yaml")
        threads: 1
        resources:
            mem_mb=PLAN.func.mem_mb["denoise"],
            runtime=PLAN.func.runtime_min["denoise"],
        params:
            bh=BH,
            out_dir=get_func_dir,
            source=get_func_source_options,
            run=get_func_run_options,
            denoise=PLAN.func.denoise_options,
        shell:
            "{params.bh} -v func derivatives {params.source} --atlas {input.atlas:q} "
            "--atlas-labels {input.labels:q} --out-dir {params.out_dir:q} {params.run} "
            "{params.denoise} > {log:q} 2>&1"
