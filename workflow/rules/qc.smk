# Group QC, per dataset: one table of every BOLD run and every file or subject the ingest
# left out (motion, frames kept, tSNR, the anatomy QC gate's and the coregistration's
# metrics, the atlas; excluded yes/no, by which stage and why), with a JSON sidecar of
# its columns, and one HTML page per subject with the QC figures the anat and func
# stages wrote (linked, relative). The report renders the tables and links the pages.
# Inputs: every anat and func output of the dataset (the input functions of anat_all
# and func_all, restricted to it: common.smk). See docs/evaluation.md ("Group QC").


rule group_qc:
    input:
        scans=rules.ingest.output.scans,
        excluded=rules.ingest.output.excluded,
        anat=get_dataset_anat_targets,
        func=get_dataset_func_targets,
    output:
        table=PLAN.qc.table,
        sidecar=PLAN.qc.sidecar,
        pages=directory(PLAN.qc.pages),
    log:
        "logs/qc/{dataset}.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        bh=BH,
        anat_dir=get_anat_dir,
        func_dir=get_func_dir,
        out_dir=subpath(output.table, parent=True),
        task=get_func_task,
        template=PLAN.anat.settings.template,
        space=PLAN.func.space,
    shell:
        "{params.bh} -v group-qc --dataset {wildcards.dataset:q} --scans {input.scans:q} "
        "--excluded {input.excluded:q} --anat-dir {params.anat_dir:q} "
        "--func-dir {params.func_dir:q} --task {params.task:q} --template {params.template:q} "
        "--space {params.space:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
