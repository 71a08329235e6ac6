# Demo BIDS datasets with planted, known effects (written by the package generator).
# One job per dataset: their data do not depend on each other, so a small dataset's
# preprocessing starts while a larger one is still being generated.

if DEMO_DATASETS:

    rule demo:
        output:
            description=f"{DEMO_ROOT}/{{dataset}}/dataset_description.json",
            truth=f"{DEMO_ROOT}/{{dataset}}-truth/README.md",
        log:
            "logs/demo/{dataset}.log",
        benchmark:
            "benchmarks/results/demo/{dataset}.tsv"
        wildcard_constraints:
            dataset="|".join(DEMO_DATASETS),
        conda:
            str(ENVS / "preproc.yaml")
        # One thread (one worker process): on a 2-core machine the other core runs the
        # first datasets' preprocessing meanwhile.
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            bh=BH,
            root=lambda wildcards, output: str(Path(output.description).parent.parent),
            preset=config["demo"]["preset"],
            seed=config["demo"]["seed"],
        shell:
            "{params.bh} -v demo --out {params.root:q} --preset {params.preset:q} "
            "--seed {params.seed:q} --datasets {wildcards.dataset:q} --jobs {threads} "
            "> {log:q} 2>&1"
