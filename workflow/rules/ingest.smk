# Ingest: index each raw BIDS dataset (or run table of released parcel series, kind
# parcellated) into scans.tsv (usable runs) and excluded.tsv.
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
        source=get_ingest_source,
        out_dir=subpath(output.scans, parent=True),
        options=get_ingest_options,
        min_volumes=PLAN.ingest.min_volumes,
        tr_tolerance=PLAN.ingest.tr_tolerance,
        tr_conflict=PLAN.ingest.tr_conflict,
        tr_range=PLAN.ingest.tr_range,
    shell:
        "{params.bh} -v ingest --dataset {wildcards.dataset:q} {params.source} "
        "--out-dir {params.out_dir:q} --min-volumes {params.min_volumes:q} "
        "--tr-tolerance {params.tr_tolerance:q} --tr-conflict {params.tr_conflict:q} "
        "--tr-range {params.tr_range:q} {params.options} > {log:q} 2>&1"


# A parcellated dataset's run: its released series (scans.tsv `bold`) checked again and
# written in the func stage's series format, where multi-TR, geometry, embedding and
# evaluation read it (docs/ingest.md, "Starting from released parcel series").
rule parcel_series:
    input:
        scans=rules.ingest.output.scans,
        source=get_parcel_source,
    output:
        series=PLAN.ingest.parcel_series,
        sidecar=PLAN.ingest.parcel_series.replace(".tsv", ".json"),
    log:
        "logs/ingest/{dataset}/{fdir}/{fstem}_series.log",
    wildcard_constraints:
        fdir=PLAN.func.fdir,
        fstem=PLAN.func.fstem,
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        bh=BH,
        tr=get_parcel_tr,
    shell:
        "{params.bh} -v parcel-series --source {input.source:q} --tr {params.tr:q} "
        "--out {output.series:q} > {log:q} 2>&1"
