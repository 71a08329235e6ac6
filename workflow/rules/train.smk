# Training (GPU-tagged rules; on a CPU-only machine they run the demo-size YAMLs on CPU).
#   train_bh_s        BrainHarmonix-S (3D MAE) on the pretraining set's T1 volume shards
#   train_bh_f        BrainHarmonix-F (JEPA) on the pretraining set's multi-TR series shards
#   embed_encoders    frozen S + F -> per-subject token files + pooled features, per dataset
#   embed_f           frozen F -> pooled features, per dataset without T1w (parcellated)
#   train_harmonizer  hub tokens over the pretraining set's S + F tokens
#   embed_harmonizer  pooled hub features per dataset
#   embed_roi_similarity  BrainHarmonix-F ROI-similarity readout per dataset
#   train_lmae        LMAE pretraining on the multi-TR series (the predictor's encoder)
# Each training job checkpoints to work/train/<model>/ (not a declared output), so a
# killed job resumes where it stopped when rerun. resources.gpu comes from train.gpus;
# more than one GPU launches DDP through torchrun (TRAIN_BH, common.smk). See
# docs/training.md. A role named in train.pretrained is not trained: its readers take the
# given model folder (PLAN.train.weights). Planning: brainharmony.planning.train (PLAN.train).


rule train_bh_s:
    input:
        # the pretraining datasets with T1w (none: an error saying so, when planned)
        unpack(get_bh_s_volumes),
        # A YAML that does not fit the anatomy stage's box is refused when planned.
        yaml=get_bh_s_yaml,
    output:
        **PLAN.train.model_outputs("bh_s"),
    log:
        "logs/train/bh_s.log",
    benchmark:
        "benchmarks/results/train/bh_s.tsv"
    conda:
        str(ENVS / "train.yaml")
    threads: PLAN.train.threads
    resources:
        gpu=PLAN.train.gpus,
        mem_mb=16000,
        runtime=2880,
    params:
        bh=TRAIN_BH,
        out=subpath(output.weights, parent=True),
        state=get_state_dir,
        pairs=get_shard_pairs,
        opts=PLAN.train.options,
    shell:
        "{params.bh} -v train --config {input.yaml:q} --out {params.out:q} "
        "--state {params.state:q} {params.pairs} --threads {threads} {params.opts} > {log:q} 2>&1"


rule train_bh_f:
    input:
        unpack(get_pretrain_shards),
        scaling=PLAN.multitr.scaling_stats,
        harmonics=PLAN.geometry.harmonics_table,
        gradients=PLAN.geometry.group_gradients,
        yaml=PLAN.train.yaml("bh_f"),
    output:
        **PLAN.train.model_outputs("bh_f"),
    log:
        "logs/train/bh_f.log",
    benchmark:
        "benchmarks/results/train/bh_f.tsv"
    conda:
        str(ENVS / "train.yaml")
    threads: PLAN.train.threads
    resources:
        gpu=PLAN.train.gpus,
        mem_mb=16000,
        runtime=2880,
    params:
        bh=TRAIN_BH,
        out=subpath(output.weights, parent=True),
        state=get_state_dir,
        pairs=get_pretrain_pairs,
        sets=TRAIN_GEOMETRY_SETS,
        opts=PLAN.train.options,
    shell:
        "{params.bh} -v train --config {input.yaml:q} --out {params.out:q} "
        "--state {params.state:q} {params.pairs} --scaling {input.scaling:q} {params.sets} "
        "--threads {threads} {params.opts} > {log:q} 2>&1"


rule embed_encoders:
    input:
        # train.pretrained: the given folder instead of the training rule's
        f_model=PLAN.train.weights("bh_f"),
        s_model=PLAN.train.weights("bh_s"),
        series=get_native_series_shard,
        series_index=get_native_series_index,
        volumes=PLAN.multitr.volume_shard,
        volume_index=PLAN.multitr.volume_index,
        scaling=PLAN.multitr.scaling_stats,
    output:
        tokens=PLAN.train.embeddings["tokens"],
        f=PLAN.train.embeddings["bh_f"],
        s=PLAN.train.embeddings["bh_s"],
    log:
        "logs/train/embed_{dataset}.log",
    wildcard_constraints:
        dataset=PLAN.ingest.bids_pattern,
    conda:
        str(ENVS / "train.yaml")
    threads: PLAN.train.threads
    resources:
        gpu=min(PLAN.train.gpus, 1),
        mem_mb=8000,
        runtime=240,
    params:
        bh=BH,
        f_dir=subpath(input.f_model, parent=True),
        s_dir=subpath(input.s_model, parent=True),
        tokens_dir=subpath(output.tokens, parent=True),
    shell:
        "{params.bh} -v embed encoders --f-model {params.f_dir:q} --s-model {params.s_dir:q} "
        "--series-shard {input.series:q} --series-index {input.series_index:q} "
        "--scaling {input.scaling:q} --volume-shard {input.volumes:q} "
        "--volume-index {input.volume_index:q} --tokens-dir {params.tokens_dir:q} "
        "--out-f {output.f:q} --out-s {output.s:q} --threads {threads} > {log:q} 2>&1"


rule embed_f:
    # A dataset without T1w (kind parcellated): BrainHarmonix-F features only, in
    # embed_encoders' layout (no token files, so no Harmonizer features).
    input:
        f_model=rules.train_bh_f.output.weights,
        series=get_native_series_shard,
        series_index=get_native_series_index,
        scaling=PLAN.multitr.scaling_stats,
    output:
        f=PLAN.train.embeddings["bh_f"],
    log:
        "logs/train/embed_f_{dataset}.log",
    wildcard_constraints:
        dataset=PLAN.ingest.parcellated_pattern,
    conda:
        str(ENVS / "train.yaml")
    threads: PLAN.train.threads
    resources:
        gpu=min(PLAN.train.gpus, 1),
        mem_mb=8000,
        runtime=240,
    params:
        bh=BH,
        f_dir=subpath(input.f_model, parent=True),
    shell:
        "{params.bh} -v embed f --f-model {params.f_dir:q} --series-shard {input.series:q} "
        "--series-index {input.series_index:q} --scaling {input.scaling:q} "
        "--out-f {output.f:q} --threads {threads} > {log:q} 2>&1"


rule train_harmonizer:
    input:
        tokens=get_harmonizer_tokens,
        yaml=PLAN.train.yaml("harmonizer"),
    output:
        **PLAN.train.model_outputs("harmonizer"),
    log:
        "logs/train/harmonizer.log",
    benchmark:
        "benchmarks/results/train/harmonizer.tsv"
    conda:
        str(ENVS / "train.yaml")
    threads: PLAN.train.threads
    resources:
        gpu=PLAN.train.gpus,
        mem_mb=16000,
        runtime=1440,
    params:
        bh=TRAIN_BH,
        out=subpath(output.weights, parent=True),
        state=get_state_dir,
        index=get_token_index_options,
        # s_grid: auto -> BrainHarmonix-S's token grid at anat.resolution_mm
        grid=get_harmonizer_grid,
        opts=PLAN.train.options,
    shell:
        "{params.bh} -v train --config {input.yaml:q} --out {params.out:q} "
        "--state {params.state:q} {params.index} {params.grid} --threads {threads} "
        "{params.opts} > {log:q} 2>&1"


rule embed_harmonizer:
    input:
        model=PLAN.train.weights("harmonizer"),
        tokens=rules.embed_encoders.output.tokens,
    output:
        PLAN.train.embeddings["harmonizer"],
    log:
        "logs/train/embed_harmonizer_{dataset}.log",
    conda:
        str(ENVS / "train.yaml")
    threads: PLAN.train.threads
    resources:
        gpu=min(PLAN.train.gpus, 1),
        mem_mb=8000,
        runtime=120,
    params:
        bh=BH,
        model=subpath(input.model, parent=True),
    shell:
        "{params.bh} -v embed harmonizer --model {params.model:q} "
        "--tokens-index {input.tokens:q} --out {output:q} > {log:q} 2>&1"


rule embed_roi_similarity:
    input:
        tokens=rules.embed_encoders.output.tokens,
    output:
        PLAN.train.embeddings["bh_f_roisim"],
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
        unpack(get_pretrain_shards),
        scaling=PLAN.multitr.scaling_stats,
        yaml=PLAN.train.yaml("lmae"),
    output:
        **PLAN.train.model_outputs("lmae"),
    log:
        "logs/train/lmae.log",
    benchmark:
        "benchmarks/results/train/lmae.tsv"
    # Head of the longest chain after preprocessing (LMAE, then the predictor's CV).
    priority: 10
    conda:
        str(ENVS / "train.yaml")
    threads: PLAN.train.threads
    resources:
        gpu=PLAN.train.gpus,
        mem_mb=16000,
        runtime=1440,
    params:
        bh=TRAIN_BH,
        out=subpath(output.weights, parent=True),
        state=get_state_dir,
        pairs=get_pretrain_pairs,
        opts=PLAN.train.options,
    shell:
        "{params.bh} -v train --config {input.yaml:q} --out {params.out:q} "
        "--state {params.state:q} {params.pairs} --scaling {input.scaling:q} "
        "--threads {threads} {params.opts} > {log:q} 2>&1"


# Variants (train.variants): extra models trained next to the main ones, e.g. the
# ablations, Brain-JEPA and BrainLM (docs/evaluation.md, "Ablations and Brain-JEPA"). One rule
# trains any variant: a bh_f variant (kind bh_f, brain_jepa or brainlm) on the pretraining series
# shards (every TR, or the native TR only with multitr: native), a harmonizer variant on
# the main encoders' token files; the variant's `set` items override its YAML.
rule train_variant:
    input:
        unpack(get_variant_train_inputs),
        # its YAML (refused when planned if missing or of a kind the role cannot take)
        yaml=get_variant_yaml,
    output:
        **PLAN.train.variant_outputs(),
    log:
        "logs/train/variants/{variant}.log",
    benchmark:
        "benchmarks/results/train/variants/{variant}.tsv"
    wildcard_constraints:
        variant=PLAN.train.variant_pattern(),
    conda:
        str(ENVS / "train.yaml")
    threads: PLAN.train.threads
    resources:
        gpu=PLAN.train.gpus,
        mem_mb=16000,
        runtime=2880,
    params:
        bh=TRAIN_BH,
        out=subpath(output.weights, parent=True),
        state=get_state_dir,
        args=get_variant_train_args,
        opts=PLAN.train.options,
    shell:
        "{params.bh} -v train --config {input.yaml:q} --out {params.out:q} "
        "--state {params.state:q} {params.args} --threads {threads} {params.opts} "
        "> {log:q} 2>&1"


# A variant's pooled features per dataset: `embed f` (bh_f variants: the dataset's
# native-TR shard) or `embed harmonizer` (the main encoders' token files; datasets with
# T1w only).
rule embed_variant:
    input:
        unpack(get_variant_embed_inputs),
        weights=PLAN.train.variant_outputs()["weights"],
    output:
        PLAN.train.variant_embedding,
    log:
        "logs/train/variants/embed_{variant}_{dataset}.log",
    wildcard_constraints:
        variant=PLAN.train.variant_pattern(),
    conda:
        str(ENVS / "train.yaml")
    threads: PLAN.train.threads
    resources:
        gpu=min(PLAN.train.gpus, 1),
        mem_mb=8000,
        runtime=240,
    params:
        bh=BH,
        args=get_variant_embed_args,
    shell:
        "{params.bh} -v embed {params.args} --threads {threads} > {log:q} 2>&1"
