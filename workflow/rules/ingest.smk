# Ingest: index each raw BIDS dataset into scans.tsv (usable runs) and excluded.tsv.
# A checkpoint: the subjects/sessions/runs that later stages expand over are the rows
# of scans.tsv, so only combinations that exist become jobs.
# Every config-derived value reaches the shell quoted (`:q`, or shlex.quote in the
# option helpers): a bids_dir may hold spaces, quotes or `$( )` (tests/workflow/
# test_shell_quoting.py).


def _phenotype_arg(wildcards):
    spec = config["datasets"][wildcards.dataset]["phenotypes"]
    return ",".join(f"{col}:{kind}" for col, kind in spec.items())


def _ingest_options(wildcards):
    ds = config["datasets"][wildcards.dataset]
    opts = [f"--task {shlex.quote(ds['task'])}"]
    if ds["site_column"]:
        opts.append(f"--site-column {shlex.quote(ds['site_column'])}")
    if ds["exclude_subjects"]:
        opts.append("--exclude-subjects " + " ".join(map(shlex.quote, ds["exclude_subjects"])))
    if ds["participant_label"]:
        opts.append("--participant-label " + " ".join(map(shlex.quote, ds["participant_label"])))
    phen = _phenotype_arg(wildcards)
    if phen:
        opts.append(f"--phenotypes {shlex.quote(phen)}")
    return " ".join(opts)


checkpoint ingest:
    input:
        description=dataset_description,
    output:
        scans="results/ingest/{dataset}/scans.tsv",
        excluded="results/ingest/{dataset}/excluded.tsv",
        sidecar="results/ingest/{dataset}/scans.json",
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
        bids_dir=lambda wildcards: bids_dir(wildcards.dataset),
        out_dir=subpath(output.scans, parent=True),
        options=_ingest_options,
        min_volumes=config["ingest"]["min_volumes"],
        tr_tolerance=config["ingest"]["tr_tolerance"],
        tr_conflict=config["ingest"]["tr_conflict"],
        tr_range=config["ingest"]["tr_range"],
    shell:
        "{params.bh} -v ingest --dataset {wildcards.dataset:q} --bids-dir {params.bids_dir:q} "
        "--out-dir {params.out_dir:q} --min-volumes {params.min_volumes:q} "
        "--tr-tolerance {params.tr_tolerance:q} --tr-conflict {params.tr_conflict:q} "
        "--tr-range {params.tr_range:q} {params.options} > {log:q} 2>&1"
