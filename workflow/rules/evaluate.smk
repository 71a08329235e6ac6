# Evaluation: per task (evaluate.tasks) labels -> splits (one folder per seed) ->
# cross-validated predictions of every harness model -> merged predictions, metrics,
# paired tests and paper tables -> the HTML report. See docs/evaluation.md.
# Wildcards: {dataset} = evaluation dataset (a dataset or an evaluate.cohorts name),
# {task} = task name, {seed} = split seed. Planning: brainharmony.planning.evaluate
# (PLAN.evaluate: .settings, .settings_json and the path patterns).


rule eval_labels:
    input:
        scans=get_eval_scans,
    output:
        labels=PLAN.evaluate.labels,
        sidecar=PLAN.evaluate.labels.replace(".tsv", ".json"),
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
        settings=PLAN.evaluate.settings_json,
    shell:
        "{params.bh} -v eval-labels --dataset {wildcards.dataset:q} --task {wildcards.task:q} "
        "--settings {params.settings:q} --scans {input.scans:q} --out {output.labels:q} "
        "> {log:q} 2>&1"


rule eval_splits:
    input:
        labels=rules.eval_labels.output.labels,
    output:
        folds=expand(
            PLAN.evaluate.splits_fold,
            dataset="{dataset}",
            task="{task}",
            seed="{seed}",
            k=range(PLAN.evaluate.settings.n_folds),
        ),
        meta=PLAN.evaluate.splits_meta,
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
        target=get_eval_target,
        kind=get_eval_kind,
        site_mode=get_eval_site_mode,
        n_folds=PLAN.evaluate.settings.n_folds,
        val_fraction=PLAN.evaluate.settings.val_fraction,
        n_bins=PLAN.evaluate.settings.n_bins,
    shell:
        "{params.bh} -v splits --table {input.labels:q} --target {params.target:q} "
        "--task {params.kind:q} --site-column site --site-mode {params.site_mode:q} "
        "--n-folds {params.n_folds} --val-fraction {params.val_fraction} "
        "--n-bins {params.n_bins} --seed {wildcards.seed} --out-dir {params.out_dir:q} "
        "> {log:q} 2>&1"


rule evaluate:
    input:
        unpack(get_eval_model_inputs),
        labels=rules.eval_labels.output.labels,
        splits=get_split_metas,
        # FC input, and (their sidecars) the subjects an earlier stage excluded: left
        # out for every model and listed in predictions.json (SubjectsLeftOut)
        series=get_eval_series,
    output:
        predictions=PLAN.evaluate.predictions_pattern,
        sidecar=PLAN.evaluate.predictions_pattern.replace(".tsv", ".json"),
        selection=PLAN.evaluate.predictions_pattern.replace("predictions.tsv", "selection.tsv"),
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
        settings=PLAN.evaluate.settings_json,
        split_dirs=get_split_dirs,
        models=get_eval_models,
        not_run=get_eval_not_run,
        extra=get_eval_model_args,
    shell:
        "{params.bh} -v evaluate --dataset {wildcards.dataset:q} --task {wildcards.task:q} "
        "--settings {params.settings:q} --labels {input.labels:q} "
        "--splits {params.split_dirs} --series {input.series:q} --models {params.models:q} "
        "{params.not_run} {params.extra} --threads {threads} --out {output.predictions:q} "
        "> {log:q} 2>&1"


rule eval_tables:
    input:
        predictions=PLAN.evaluate.predictions,
    output:
        predictions=PLAN.evaluate.tables["predictions"],
        predictions_json=PLAN.evaluate.tables["predictions_json"],
        metrics=PLAN.evaluate.tables["metrics"],
        per_fold=PLAN.evaluate.tables["per_fold"],
        tests=PLAN.evaluate.tables["tests"],
        table=multiext(PLAN.evaluate.paper_table, ".csv", ".md", ".tex"),
        # the table sections' figures (evaluate.sections.<id>.figure; none without)
        figures=PLAN.evaluate.figures,
        sidecar=PLAN.evaluate.tables["sidecar"],
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
        settings=PLAN.evaluate.settings_json,
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
        stages=get_report_stages,
        # the group QC tables and subject pages (rendered and linked in the page)
        qc=lambda wildcards: rules.qc_all.input,
    output:
        report(PLAN.evaluate.report, category="Report"),
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
    # (initialised from an LMAE pretrained on the fold's training subjects, or with
    # evaluate.predictor_lmae: shared from train_lmae's), scored by the harness as
    # model `predictor`;
    # also the ROI x expert map of its spatial RWMoE (TSV + figure, shown by the report).
    input:
        unpack(get_predictor_lmae),
        labels=rules.eval_labels.output.labels,
        splits=get_split_metas,
        shards=get_predictor_shards,
        indexes=get_predictor_indexes,
        scaling=PLAN.multitr.scaling_stats,
        yaml=PLAN.train.yaml("predictor"),
    output:
        predictions=PLAN.evaluate.external["predictor"],
        experts=PLAN.evaluate.predictor_experts["weights"],
        experts_figure=PLAN.evaluate.predictor_experts["figure"],
    log:
        "logs/eval/{dataset}_{task}_predictor.log",
    benchmark:
        "benchmarks/results/eval/{dataset}_{task}_predictor.tsv"
    conda:
        str(ENVS / "train.yaml")
    threads: PLAN.train.threads
    resources:
        gpu=min(PLAN.train.gpus, 1),
        mem_mb=8000,
        runtime=720,
    params:
        bh=BH,
        settings=PLAN.evaluate.settings_json,
        split_dirs=get_split_dirs,
        pairs=get_shard_pairs,
        lmae=get_predictor_lmae_args,
        work=get_predictor_work,
        opts=PLAN.train.options,
    shell:
        "{params.bh} -v predictor-cv --config {input.yaml:q} --labels {input.labels:q} "
        "--splits {params.split_dirs} --settings {params.settings:q} "
        "--dataset {wildcards.dataset:q} --task {wildcards.task:q} {params.pairs} "
        "--scaling {input.scaling:q} {params.lmae} --work {params.work:q} "
        "--threads {threads} {params.opts} --expert-weights {output.experts:q} "
        "--expert-figure {output.experts_figure:q} --out {output.predictions:q} > {log:q} 2>&1"
