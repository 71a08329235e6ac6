# Evaluation: per task (evaluate.tasks) labels -> splits (one folder per seed) ->
# cross-validated predictions of every harness model -> merged predictions, metrics,
# paired tests and paper tables -> the HTML report. See docs/evaluation.md.
# Wildcards: {dataset} = evaluation dataset (a dataset or an evaluate.cohorts name),
# {task} = task name, {seed} = split seed. Planning helpers: brainharmony.evaluate.planning.
from brainharmony.evaluate import planning as eval_plan
from brainharmony.evaluate.settings import settings_from_mapping

EVAL = settings_from_mapping(config)
EVAL_SETTINGS = eval_plan.settings_json(EVAL)


rule eval_labels:
    input:
        scans=lambda wildcards: eval_plan.scans(EVAL, wildcards, checkpoints.ingest),
    output:
        labels=eval_plan.LABELS,
        sidecar=eval_plan.LABELS.replace(".tsv", ".json"),
    log:
        "logs/eval/{dataset}_{task}_labels.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        bh=BH,
        settings=EVAL_SETTINGS,
    shell:
        "{params.bh} -v eval-labels --dataset {wildcards.dataset:q} --task {wildcards.task:q} "
        "--settings {params.settings:q} --scans {input.scans:q} --out {output.labels:q} "
        "> {log:q} 2>&1"


rule eval_splits:
    input:
        labels=rules.eval_labels.output.labels,
    output:
        folds=expand(
            eval_plan.SPLITS_FOLD,
            dataset="{dataset}",
            task="{task}",
            seed="{seed}",
            k=range(EVAL.n_folds),
        ),
        meta=eval_plan.SPLITS_META,
    log:
        "logs/eval/{dataset}_{task}_splits_seed-{seed}.log",
    wildcard_constraints:
        seed=r"\d+",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        bh=BH,
        out_dir=subpath(output.meta, parent=True),
        target=lambda wildcards: eval_plan.task_of(EVAL, wildcards).target,
        kind=lambda wildcards: eval_plan.task_of(EVAL, wildcards).type,
        site_mode=lambda wildcards: eval_plan.task_of(EVAL, wildcards).site_mode,
        n_folds=EVAL.n_folds,
        val_fraction=EVAL.val_fraction,
        n_bins=EVAL.n_bins,
    shell:
        "{params.bh} -v splits --table {input.labels:q} --target {params.target:q} "
        "--task {params.kind:q} --site-column site --site-mode {params.site_mode:q} "
        "--n-folds {params.n_folds} --val-fraction {params.val_fraction} "
        "--n-bins {params.n_bins} --seed {wildcards.seed} --out-dir {params.out_dir:q} "
        "> {log:q} 2>&1"


rule evaluate:
    input:
        unpack(lambda wildcards: eval_plan.model_inputs(EVAL, wildcards)),
        labels=rules.eval_labels.output.labels,
        splits=lambda wildcards: eval_plan.split_metas(EVAL, wildcards),
        # FC input, and (their sidecars) the subjects an earlier stage excluded: left
        # out for every model and listed in predictions.json (SubjectsLeftOut)
        series=lambda wildcards: eval_plan.series(
            EVAL, wildcards, checkpoints.ingest, FUNC, FUNC_TASKS
        ),
    output:
        predictions=eval_plan.PREDICTIONS,
        sidecar=eval_plan.PREDICTIONS.replace(".tsv", ".json"),
        selection=eval_plan.PREDICTIONS.replace("predictions.tsv", "selection.tsv"),
    log:
        "logs/eval/{dataset}_{task}_evaluate.log",
    benchmark:
        "benchmarks/results/eval/{dataset}_{task}.tsv"
    conda:
        str(ENVS / "train.yaml")
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        bh=BH,
        settings=EVAL_SETTINGS,
        split_dirs=lambda wildcards, input: eval_plan.split_dirs(input.splits),
        models=list(EVAL.models),
        extra=lambda wildcards, input: eval_plan.model_args(EVAL, input),
    shell:
        "{params.bh} -v evaluate --dataset {wildcards.dataset:q} --task {wildcards.task:q} "
        "--settings {params.settings:q} --labels {input.labels:q} "
        "--splits {params.split_dirs} --series {input.series:q} --models {params.models:q} "
        "{params.extra} --threads {threads} --out {output.predictions:q} > {log:q} 2>&1"


rule eval_tables:
    input:
        predictions=eval_plan.predictions(EVAL),
    output:
        predictions="results/eval/predictions.tsv",
        predictions_json="results/eval/predictions.json",
        metrics="results/tables/metrics.csv",
        per_fold="results/tables/metrics_per_fold.csv",
        tests="results/tables/tests.csv",
        table=multiext("results/tables/paper_table", ".csv", ".md", ".tex"),
        sidecar="results/tables/tables.json",
    log:
        "logs/eval/tables.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        bh=BH,
        settings=EVAL_SETTINGS,
        out_dir=subpath(output.metrics, parent=True),
    shell:
        "{params.bh} -v tables --inputs {input.predictions:q} "
        "--predictions {output.predictions:q} --out-dir {params.out_dir:q} "
        "--settings {params.settings:q} > {log:q} 2>&1"


rule report:
    input:
        tables=rules.eval_tables.output.metrics,
        # the other stages first, so that their QC is in the page (anatomy: the preproc
        # sidecars with the QC metrics and exclusions, and the registration figures)
        stages=lambda wildcards: [
            *rules.ingest_all.input,
            *anat_planning.targets(DATASETS, checkpoints.ingest, ANAT_SETTINGS),
            *func_planning.targets(DATASETS, checkpoints.ingest, FUNC, FUNC_TASKS),
        ],
        # the group QC tables and subject pages (rendered and linked in the page)
        qc=lambda wildcards: rules.qc_all.input,
    output:
        report("results/report/index.html", category="Report"),
    log:
        "logs/eval/report.log",
    conda:
        str(ENVS / "preproc.yaml")
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        bh=BH,
        configs=" ".join(shlex.quote(str(p)) for p in workflow.configfiles),
    shell:
        "{params.bh} -v report --results results --config {params.configs} "
        "--out {output:q} > {log:q} 2>&1"


rule predictor_cv:
    # The LMAE -> RWMoE -> SSM predictor trained per seed and fold of the task's splits
    # (initialised from the pretrained LMAE), scored by the harness as model `predictor`.
    input:
        labels=rules.eval_labels.output.labels,
        splits=lambda wildcards: eval_plan.split_metas(EVAL, wildcards),
        shards=lambda wildcards: [
            bh_plan.series_shard("series").format(
                dataset=d, ms=bh_plan.native_ms(d, checkpoints.ingest)
            )
            for d in eval_plan.task_of(EVAL, wildcards).datasets
        ],
        indexes=lambda wildcards: [
            bh_plan.series_shard("index").format(
                dataset=d, ms=bh_plan.native_ms(d, checkpoints.ingest)
            )
            for d in eval_plan.task_of(EVAL, wildcards).datasets
        ],
        scaling=bh_plan.SCALING_STATS,
        lmae=rules.train_lmae.output.weights,
        yaml=TRAIN.yaml("predictor"),
    output:
        predictions=eval_plan.EXTERNAL["predictor"],
    log:
        "logs/eval/{dataset}_{task}_predictor.log",
    benchmark:
        "benchmarks/results/eval/{dataset}_{task}_predictor.tsv"
    conda:
        str(ENVS / "train.yaml")
    threads: TRAIN.threads
    resources:
        gpu=min(TRAIN.gpus, 1),
        mem_mb=8000,
        runtime=720,
    params:
        bh=BH,
        settings=EVAL_SETTINGS,
        split_dirs=lambda wildcards, input: eval_plan.split_dirs(input.splits),
        pairs=lambda wildcards, input: train_plan.shard_pairs(input.shards, input.indexes),
        lmae=lambda wildcards, input: train_plan.folder_of(input.lmae),
        work=lambda wildcards: f"work/predictor/{wildcards.dataset}/{wildcards.task}",
        opts=TRAIN_OPTS,
    shell:
        "{params.bh} -v predictor-cv --config {input.yaml:q} --labels {input.labels:q} "
        "--splits {params.split_dirs} --settings {params.settings:q} "
        "--dataset {wildcards.dataset:q} --task {wildcards.task:q} {params.pairs} "
        "--scaling {input.scaling:q} --init {params.lmae:q} --work {params.work:q} "
        "--threads {threads} {params.opts} --out {output.predictions:q} > {log:q} 2>&1"
