# Training (GPU-tagged rules; on a CPU-only machine they run the demo-size YAMLs on CPU).
#   train_bh_s        BrainHarmonix-S (3D MAE) on the pretraining set's T1 volume shards
#   train_bh_f        BrainHarmonix-F (JEPA) on the pretraining set's multi-TR series shards
#   embed_encoders    frozen S + F -> per-subject token files + pooled features, per dataset
#   train_harmonizer  hub tokens over the pretraining set's S + F tokens
#   embed_harmonizer  pooled hub features per dataset
#   embed_roi_similarity  BrainHarmonix-F ROI-similarity readout per dataset
#   train_lmae        LMAE pretraining on the multi-TR series (the predictor's encoder)
# Each training job checkpoints to work/train/<model>/ (not a declared output), so a
# killed job resumes where it stopped when rerun. resources.gpu comes from train.gpus;
# more than one GPU launches DDP through torchrun. See docs/training.md.
from brainharmony.train import planning as train_plan

TRAIN = train_plan.plan_from_config(config, workflow.basedir)
TRAIN_BH = train_plan.launcher(BH, TRAIN.gpus)
TRAIN_OPTS = train_plan.common_options(TRAIN)
GEOMETRY_SETS = train_plan.sets(
    [
        f"model.harmonics={bh_plan.harmonics_table(GEOMETRY)}",
        f"model.gradients={bh_plan.group_gradients(GEOMETRY)}",
    ]
)


rule train_bh_s:
    input:
        shards=[bh_plan.VOLUME_SHARD.format(dataset=d) for d in MULTITR.pretrain],
        indexes=[bh_plan.VOLUME_INDEX.format(dataset=d) for d in MULTITR.pretrain],
        # A YAML that does not fit the anatomy stage's box is refused when planned.
        yaml=lambda wildcards: train_plan.check_volume_shape(
            TRAIN.yaml("bh_s"), ANAT_SETTINGS.model_box_mm, ANAT_SETTINGS.resolution_mm
        ),
    output:
        **train_plan.model_outputs("bh_s"),
    log:
        "logs/train/bh_s.log",
    benchmark:
        "benchmarks/results/train/bh_s.tsv"
    conda:
        str(ENVS / "train.yaml")
    threads: TRAIN.threads
    resources:
        gpu=TRAIN.gpus,
        mem_mb=16000,
        runtime=2880,
    params:
        bh=TRAIN_BH,
        out=lambda wildcards, output: train_plan.folder_of(output.weights),
        state=lambda wildcards, output: train_plan.state_dir(train_plan.folder_of(output.weights)),
        pairs=lambda wildcards, input: train_plan.shard_pairs(input.shards, input.indexes),
        opts=TRAIN_OPTS,
    shell:
        "{params.bh} -v train --config {input.yaml:q} --out {params.out:q} "
        "--state {params.state:q} {params.pairs} --threads {threads} {params.opts} > {log:q} 2>&1"


rule train_bh_f:
    input:
        unpack(lambda wildcards: train_plan.pretrain_series(bh_plan, MULTITR, checkpoints.ingest)),
        scaling=bh_plan.SCALING_STATS,
        harmonics=bh_plan.harmonics_table(GEOMETRY),
        gradients=bh_plan.group_gradients(GEOMETRY),
        yaml=TRAIN.yaml("bh_f"),
    output:
        **train_plan.model_outputs("bh_f"),
    log:
        "logs/train/bh_f.log",
    benchmark:
        "benchmarks/results/train/bh_f.tsv"
    conda:
        str(ENVS / "train.yaml")
    threads: TRAIN.threads
    resources:
        gpu=TRAIN.gpus,
        mem_mb=16000,
        runtime=2880,
    params:
        bh=TRAIN_BH,
        out=lambda wildcards, output: train_plan.folder_of(output.weights),
        state=lambda wildcards, output: train_plan.state_dir(train_plan.folder_of(output.weights)),
        pairs=lambda wildcards: train_plan.pretrain_pairs(bh_plan, MULTITR, checkpoints.ingest),
        sets=GEOMETRY_SETS,
        opts=TRAIN_OPTS,
    shell:
        "{params.bh} -v train --config {input.yaml:q} --out {params.out:q} "
        "--state {params.state:q} {params.pairs} --scaling {input.scaling:q} {params.sets} "
        "--threads {threads} {params.opts} > {log:q} 2>&1"


rule embed_encoders:
    input:
        f_model=rules.train_bh_f.output.weights,
        s_model=rules.train_bh_s.output.weights,
        series=lambda wildcards: bh_plan.series_shard("series").format(
            dataset=wildcards.dataset, ms=bh_plan.native_ms(wildcards.dataset, checkpoints.ingest)
        ),
        series_index=lambda wildcards: bh_plan.series_shard("index").format(
            dataset=wildcards.dataset, ms=bh_plan.native_ms(wildcards.dataset, checkpoints.ingest)
        ),
        volumes=bh_plan.VOLUME_SHARD,
        volume_index=bh_plan.VOLUME_INDEX,
        scaling=bh_plan.SCALING_STATS,
    output:
        tokens="results/embeddings/tokens/{dataset}/index.tsv",
        f="results/embeddings/bh_f/{dataset}.npz",
        s="results/embeddings/bh_s/{dataset}.npz",
    log:
        "logs/train/embed_{dataset}.log",
    conda:
        str(ENVS / "train.yaml")
    threads: TRAIN.threads
    resources:
        gpu=min(TRAIN.gpus, 1),
        mem_mb=8000,
        runtime=240,
    params:
        bh=BH,
        f_dir=lambda wildcards, input: train_plan.folder_of(input.f_model),
        s_dir=lambda wildcards, input: train_plan.folder_of(input.s_model),
        tokens_dir=lambda wildcards, output: train_plan.folder_of(output.tokens),
    shell:
        "{params.bh} -v embed encoders --f-model {params.f_dir:q} --s-model {params.s_dir:q} "
        "--series-shard {input.series:q} --series-index {input.series_index:q} "
        "--scaling {input.scaling:q} --volume-shard {input.volumes:q} "
        "--volume-index {input.volume_index:q} --tokens-dir {params.tokens_dir:q} "
        "--out-f {output.f:q} --out-s {output.s:q} --threads {threads} > {log:q} 2>&1"


rule train_harmonizer:
    input:
        tokens=expand(rules.embed_encoders.output.tokens, dataset=MULTITR.pretrain),
        yaml=TRAIN.yaml("harmonizer"),
    output:
        **train_plan.model_outputs("harmonizer"),
    log:
        "logs/train/harmonizer.log",
    benchmark:
        "benchmarks/results/train/harmonizer.tsv"
    conda:
        str(ENVS / "train.yaml")
    threads: TRAIN.threads
    resources:
        gpu=TRAIN.gpus,
        mem_mb=16000,
        runtime=1440,
    params:
        bh=TRAIN_BH,
        out=lambda wildcards, output: train_plan.folder_of(output.weights),
        state=lambda wildcards, output: train_plan.state_dir(train_plan.folder_of(output.weights)),
        index=lambda wildcards, input: " ".join(f"--index {shlex.quote(i)}" for i in input.tokens),
        # s_grid: auto -> BrainHarmonix-S's token grid at anat.resolution_mm
        grid=lambda wildcards: train_plan.harmonizer_sets(
            TRAIN, ANAT_SETTINGS.model_box_mm, ANAT_SETTINGS.resolution_mm
        ),
        opts=TRAIN_OPTS,
    shell:
        "{params.bh} -v train --config {input.yaml:q} --out {params.out:q} "
        "--state {params.state:q} {params.index} {params.grid} --threads {threads} "
        "{params.opts} > {log:q} 2>&1"


rule embed_harmonizer:
    input:
        model=rules.train_harmonizer.output.weights,
        tokens=rules.embed_encoders.output.tokens,
    output:
        "results/embeddings/harmonizer/{dataset}.npz",
    log:
        "logs/train/embed_harmonizer_{dataset}.log",
    conda:
        str(ENVS / "train.yaml")
    threads: TRAIN.threads
    resources:
        gpu=min(TRAIN.gpus, 1),
        mem_mb=8000,
        runtime=120,
    params:
        bh=BH,
        model=lambda wildcards, input: train_plan.folder_of(input.model),
    shell:
        "{params.bh} -v embed harmonizer --model {params.model:q} "
        "--tokens-index {input.tokens:q} --out {output:q} > {log:q} 2>&1"


rule embed_roi_similarity:
    input:
        tokens=rules.embed_encoders.output.tokens,
    output:
        "results/embeddings/bh_f_roisim/{dataset}.npz",
    log:
        "logs/train/embed_roi_similarity_{dataset}.log",
    conda:
        str(ENVS / "train.yaml")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        bh=BH,
    shell:
        "{params.bh} -v embed roi-similarity --tokens-index {input.tokens:q} "
        "--out {output:q} > {log:q} 2>&1"


rule train_lmae:
    input:
        unpack(lambda wildcards: train_plan.pretrain_series(bh_plan, MULTITR, checkpoints.ingest)),
        scaling=bh_plan.SCALING_STATS,
        yaml=TRAIN.yaml("lmae"),
    output:
        **train_plan.model_outputs("lmae"),
    log:
        "logs/train/lmae.log",
    benchmark:
        "benchmarks/results/train/lmae.tsv"
    # Head of the longest chain after preprocessing (LMAE, then the predictor's CV).
    priority: 10
    conda:
        str(ENVS / "train.yaml")
    threads: TRAIN.threads
    resources:
        gpu=TRAIN.gpus,
        mem_mb=16000,
        runtime=1440,
    params:
        bh=TRAIN_BH,
        out=lambda wildcards, output: train_plan.folder_of(output.weights),
        state=lambda wildcards, output: train_plan.state_dir(train_plan.folder_of(output.weights)),
        pairs=lambda wildcards: train_plan.pretrain_pairs(bh_plan, MULTITR, checkpoints.ingest),
        opts=TRAIN_OPTS,
    shell:
        "{params.bh} -v train --config {input.yaml:q} --out {params.out:q} "
        "--state {params.state:q} {params.pairs} --scaling {input.scaling:q} "
        "--threads {threads} {params.opts} > {log:q} 2>&1"
