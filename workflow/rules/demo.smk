# Demo BIDS datasets with planted, known effects (written by the package generator).

if DEMO_DATASETS:

    rule demo:
        output:
            descriptions=expand(
                f"{DEMO_ROOT}/{{dataset}}/dataset_description.json", dataset=DEMO_DATASETS
            ),
            truth=expand(f"{DEMO_ROOT}/{{dataset}}-truth/README.md", dataset=DEMO_DATASETS),
        params:
            bh=BH,
            root=lambda wildcards, output: str(Path(output.descriptions[0]).parent.parent),
            preset=config["demo"]["preset"],
            seed=config["demo"]["seed"],
            datasets=" ".join(DEMO_DATASETS),
        log:
            "logs/demo/demo.log",
        benchmark:
            "benchmarks/results/demo/demo.tsv"
        threads: 2
        resources:
            mem_mb=6000,
            runtime=30,
        conda:
            str(ENVS / "preproc.yaml")
        shell:
            "{params.bh} -v demo --out {params.root} --preset {params.preset} "
            "--seed {params.seed} --datasets {params.datasets} --jobs {threads} > {log} 2>&1"
