"""``train.variants`` in the workflow: config/presets/demo_ablations.yaml plans every
variant and every row (dry runs); the paper presets' commented ablation block plans once
uncommented; and (slow) a tiny run trains, embeds and evaluates variants end to end."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from brainharmony import planning
from brainharmony.config import load_yaml, validate_config
from tests.conftest import REPO, run_snakemake
from tests.workflow.test_workflow import TINY
from tests.workflow_config import SCHEMA

pytestmark = pytest.mark.workflow

ABLATIONS = REPO / "config" / "presets" / "demo_ablations.yaml"
PAPER_PRESETS = sorted(
    p for p in (REPO / "config" / "presets").glob("*.yaml") if not p.stem.startswith("demo_")
)
BLOCK = re.compile(r"^  # >>> ablations and Brain-JEPA.*?\n(.*?)^  # <<< ablations", re.M | re.S)
SECTIONS = re.compile(
    r"^    # >>> ablation sections.*?\n(.*?)^    # <<< ablation sections", re.M | re.S
)


def _jobs(text: str) -> dict[str, int]:
    block = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def test_demo_ablations_plans_every_variant_and_row(tmp_path):
    config = load_yaml(ABLATIONS)
    variants = config["train"]["variants"]
    assert set(variants) == {
        "bhf_gradonly", "bhf_nopos", "bhf_nomtr", "harm_sonly", "harm_fonly",
        "hubs32", "hubs64", "hubs128", "hubs256", "brain_jepa", "brainlm",
    }  # fmt: skip
    rows = [m for m in config["evaluate"]["models"] if m.startswith("probe_")]
    assert {f"probe_{n}" for n in variants} <= set(rows)
    out = run_snakemake(
        tmp_path, "--configfile", str(ABLATIONS), "-n", "-p", "evaluate_all", timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = _jobs(out.stdout)
    assert jobs["train_variant"] == len(variants)  # every variant trained once
    assert jobs["embed_variant"] == len(variants)  # on demoB, the one evaluated dataset
    assert jobs["evaluate"] == 2 and jobs["eval_tables"] == 1
    for name in variants:
        assert f"wildcards: variant={name}\n" in out.stdout, name
        assert f"results/embeddings/{name}/demoB.npz" in out.stdout, name
    # BrainLM trains from its own YAML (its data options wait for the ingest checkpoint:
    # tests/unit/planning/test_variants.py checks them)
    assert "train --config " + str(REPO / "models" / "brainlm_demo.yaml") in out.stdout
    commands = [line for line in out.stdout.splitlines() if " evaluate --dataset " in line]
    assert len(commands) == 2
    for line in commands:
        models = re.search(r"--models (.*?) --embedding", line).group(1).split()
        assert models == config["evaluate"]["models"]
        task = re.search(r"--task (\w+)", line).group(1)
        for name in variants:  # each row reads its variant's features
            want = f"--embedding probe_{name}=results/embeddings/{name}/demoB.npz"
            assert want in line, (task, name)
        settings = json.loads(re.search(r"--settings '(\{.*?\})' --labels", line).group(1))
        assert settings["labels"]["probe_brain_jepa"] == "Brain-JEPA (LP)"
        assert settings["labels"]["probe_brainlm"] == "BrainLM (LP)"
        assert settings["labels"]["probe_hubs64"] == "BrainHarmonix (N_H = 64) (LP)"
        assert settings["labels"]["probe_bhf_nomtr"] == "BrainHarmonix-F (no multi-TR) (LP)"


def test_train_all_embeds_every_variant_on_every_dataset(tmp_path):
    out = run_snakemake(tmp_path, "--configfile", str(ABLATIONS), "-n", "train_all", timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = _jobs(out.stdout)
    assert jobs["train_variant"] == 11 and jobs["embed_variant"] == 11 * 3


def test_a_variant_named_like_a_role_stops_the_workflow(tmp_path):
    config = {**TINY, "train": {**TINY["train"], "variants": {"harmonizer": {"role": "bh_f"}}}}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = run_snakemake(tmp_path, "--configfile", str(cfg), "-n", "train_all", timeout=300)
    assert out.returncode != 0
    assert "train.variants.harmonizer: 'harmonizer' is taken" in out.stdout + out.stderr


@pytest.mark.parametrize("preset", PAPER_PRESETS, ids=[p.stem for p in PAPER_PRESETS])
def test_the_paper_presets_ablation_block_plans_once_uncommented(preset):
    text = preset.read_text()
    found = BLOCK.search(text)
    assert found, f"{preset.name}: no ablation block"
    lines = [ln for ln in found.group(1).splitlines() if ln.startswith("  # ")]
    start = next(i for i, ln in enumerate(lines) if ln == "  # variants:")
    variants = yaml.safe_load("\n".join(ln[4:] for ln in lines[start:]))["variants"]
    config = load_yaml(preset)
    config["train"]["variants"] = variants
    config["evaluate"]["models"] = [
        *config["evaluate"]["models"],
        *(f"probe_{n}" for n in variants),
    ]
    validate_config(config, SCHEMA)
    plan = planning.from_config(config, str(REPO))
    assert len(plan.train.variants) == 11
    assert plan.train.variants["brain_jepa"].model == "models/brain_jepa_paper.yaml"
    assert plan.train.variants["brainlm"].model == "models/brainlm_paper.yaml"
    assert plan.train.variants["bhf_nomtr"].model == config["train"]["models"]["bh_f"]
    listed = re.search(r"evaluate\.models: (.*?)\. The demo", " ".join(found.group(1).split()))
    assert listed and sorted(listed.group(1).replace("# ", "").split(", ")) == sorted(
        f"probe_{n}" for n in variants
    )
    # ... and so do the ablation table sections, commented under evaluate.sections (the
    # BrainHarmonix presets: Cam-CAN, the predictor's preset, has one table, no sections)
    if preset.stem == "camcan":
        assert not config["evaluate"].get("sections")
        return
    sections = SECTIONS.search(text)
    assert sections, f"{preset.name}: no ablation sections"
    extra = yaml.safe_load("\n".join(ln[6:] for ln in sections.group(1).splitlines()))
    config["evaluate"]["sections"] = {**config["evaluate"].get("sections", {}), **extra}
    validate_config(config, SCHEMA)
    plan = planning.from_config(config, str(REPO))
    assert list(plan.evaluate.settings.sections)[-2:] == ["ablations", "hubs"]
    assert plan.evaluate.figures == [
        "results/tables/paper_figure_hubs.png",
        "results/tables/paper_figure_hubs.csv",
    ]
    hubs = plan.evaluate.settings.sections["hubs"]
    assert hubs.figure.points(hubs.models) == {
        "probe_hubs32": 32, "probe_hubs64": 64, "probe_hubs128": 128, "probe_hubs256": 256
    }  # fmt: skip


def test_demo_ablations_declares_the_paper_sections_and_the_hub_figure():
    config = load_yaml(ABLATIONS)
    validate_config(config, SCHEMA)
    plan = planning.from_config(config, str(REPO))
    sections = plan.evaluate.settings.sections
    assert list(sections) == ["table1", "table2", "ablations", "hubs"]
    assert sections["table1"].tasks == (("demoB", "diagnosis"),)
    assert sections["table2"].tasks == (("demoB", "age"),)
    assert "probe_brain_jepa" in sections["table1"].models
    assert "probe_brainlm" in sections["table1"].models
    assert "probe_brainlm" in sections["table2"].models
    assert {m for s in sections.values() for m in s.models} == set(config["evaluate"]["models"])
    assert plan.evaluate.figures[0] == "results/tables/paper_figure_hubs.png"
    # the main Harmonizer's point is at its own hub count
    x = sections["hubs"].figure.points(sections["hubs"].models)
    main = load_yaml(REPO / config["train"]["models"]["harmonizer"])
    assert x["probe_harmonizer"] == main["model"]["n_hubs"]
    assert sorted(x.values()) == [main["model"]["n_hubs"], 32, 64, 128, 256]


def test_a_section_naming_an_unconfigured_model_stops_the_planning():
    config = load_yaml(ABLATIONS)
    config["evaluate"]["sections"]["hubs"]["models"].append("probe_hubs512")
    validate_config(config, SCHEMA)
    with pytest.raises(ValueError, match=r"evaluate\.sections\.hubs\.models: \['probe_hubs512'\]"):
        planning.from_config(config, str(REPO))
    config = load_yaml(ABLATIONS)
    config["evaluate"]["sections"]["table2"]["tasks"] = ["demoB/sex"]
    validate_config(config, SCHEMA)
    with pytest.raises(ValueError, match=r"evaluate\.sections\.table2\.tasks: 'demoB/sex'"):
        planning.from_config(config, str(REPO))


#: Variants of the tiny end-to-end run: one of each kind of data path.
TINY_VARIANTS = {
    "brain_jepa": {
        "role": "bh_f",
        "model": "models/brain_jepa_demo.yaml",
        "multitr": "native",
        "label": "Brain-JEPA",
    },
    "bhf_nomtr": {"role": "bh_f", "multitr": "native", "label": "BrainHarmonix-F (no multi-TR)"},
    "hubs32": {"role": "harmonizer", "set": ["model.n_hubs=32"], "label": "BH (N_H = 32)"},
}


@pytest.mark.slow
def test_variants_train_embed_and_get_their_rows_on_the_tiny_demo(tiny_run, tmp_path):
    """The tiny run (tests/workflow/test_workflow.py) again with three variants: only
    their jobs and the evaluation run; each variant's folder, features and table row
    exist, with the variant's label."""
    from tests.slurm.conftest import copy_run

    work = copy_run(tiny_run, tmp_path / "run")
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["train"]["variants"] = TINY_VARIANTS
    rows = [f"probe_{n}" for n in TINY_VARIANTS]
    config["evaluate"]["models"] = ["null_model", "fc_ridge", "probe_bh_f", *rows]
    cfg = work / "variants.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = run_snakemake(work, "--configfile", str(cfg), "--cores", "2", "evaluate_all")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in TINY_VARIANTS:
        kind = json.loads((work / f"results/models/{name}/config.json").read_text())["kind"]
        assert kind == ("brain_jepa" if name == "brain_jepa" else TINY_VARIANTS[name]["role"])
        feats = work / f"results/embeddings/{name}/demoA.npz"
        assert feats.is_file(), feats
    metrics = pd.read_csv(work / "results/tables/metrics.csv")
    assert set(rows) <= set(metrics["model"])
    table = (work / "results/tables/paper_table.md").read_text()
    for label in ("Brain-JEPA (LP)", "BrainHarmonix-F (no multi-TR) (LP)", "BH (N_H = 32) (LP)"):
        assert label in table, label
