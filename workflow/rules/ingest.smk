# Ingest: index each raw BIDS dataset into scans.tsv (usable runs) and excluded.tsv.
# A checkpoint: the subjects/sessions/runs that later stages expand over are the rows
# of scans.tsv, so only combinations that exist become jobs.
# Every config-derived value reaches the shell quoted (`:q`, or shlex.quote in
# brainharmony.planning.ingest's options): a bids_dir may hold spaces, quotes or `$( )` (tests/workflow/
# test_shell_quoting.py).


checkpoint ingest:
    input:
        description=dataset_description,
    output:
        **PLAN.ingest.outputs,
    log:
        "logs/ingest/{dataset}.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        bh=BH,
        bids_dir=get_bids_dir,
        out_dir=subpath(output.scans, parent=True),
        options=get_ingest_options,
        min_volumes=PLAN.ingest.min_volumes,
        tr_tolerance=PLAN.ingest.tr_tolerance,
        tr_conflict=PLAN.ingest.tr_conflict,
        tr_range=PLAN.ingest.tr_range,
    shell:
        "{params.bh} -v ingest --dataset {wildcards.dataset:q} --bids-dir {params.bids_dir:q} "
        "--out-dir {params.out_dir:q} --min-volumes {params.min_volumes:q} "
        "--tr-tolerance {params.tr_tolerance:q} --tr-conflict {params.tr_conflict:q} "
        "--tr-range {params.tr_range:q} {params.options} > {log:q} 2>&1"
