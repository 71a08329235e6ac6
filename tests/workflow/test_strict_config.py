"""The workflow reads its config files strictly too (issue 23, item 7).

Snakemake loads ``--configfile`` with its own YAML reader, which keeps the last of two
duplicate keys and expands aliases without bound; ``workflow/rules/common.smk`` reads
each config file again through :func:`brainharmony.config.load_yaml`.
"""

from __future__ import annotations

import pytest

from tests.conftest import run_snakemake

pytestmark = pytest.mark.workflow


def _bomb() -> str:
    lines = ["datasets:", "  s:", "    bids_dir: /data", "    phenotypes:"]
    lines.append("      a: &a [" + ", ".join(["lol"] * 9) + "]")
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"      {name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "datasets:\n  s:\n    bids_dir: /a\n    bids_dir: /b\n",
            "line 4: duplicate key 'bids_dir' (first at line 3)",
        ),
        (_bomb(), "YAML aliases (*name) expand the document"),
        ('datasets:\n  s:\n    bids_dir: /a\n    task: "rest\\n"\n', "key 'task'"),
        (
            "datasets:\n  s:\n    bids_dir: /a\n    phenotypes: {tr: number}\n",
            "phenotype 'tr' clashes with a scans.tsv column",
        ),
    ],
    ids=["duplicate-key", "alias-bomb", "newline-task", "phenotype-clash"],
)
def test_workflow_refuses_what_validate_config_refuses(tmp_path, text, expected):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text, encoding="utf-8")
    out = run_snakemake(tmp_path, "--configfile", str(cfg), "-n", timeout=120)
    assert out.returncode != 0
    assert expected in out.stdout + out.stderr, (out.stdout + out.stderr)[-3000:]
    assert "Job stats" not in out.stdout + out.stderr
