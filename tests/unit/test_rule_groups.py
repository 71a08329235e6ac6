"""The per-subject rules carry the group names docs/hpc.md tells cluster users to batch."""

import re
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "workflow" / "rules"
HPC_DOC = Path(__file__).resolve().parents[2] / "docs" / "hpc.md"


def _rule_blocks(path: Path) -> dict[str, list[str]]:
    """Rule name -> the text of each definition (a rule may be defined per backend)."""
    blocks: dict[str, list[str]] = {}
    text = path.read_text()
    matches = list(re.finditer(r"^\s*rule (\w+):", text, flags=re.M))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        blocks.setdefault(m.group(1), []).append(text[m.end() : end])
    return blocks


@pytest.mark.parametrize(
    ("smk", "rule", "group"),
    [("anat.smk", "anat", "anat"), ("func.smk", "func_native", "func"),
     ("func.smk", "func_denoise", "func")],
)  # fmt: skip
def test_per_subject_rules_are_grouped(smk: str, rule: str, group: str) -> None:
    blocks = _rule_blocks(RULES / smk)[rule]
    for block in blocks:
        assert re.search(rf'^\s+group:\s*\n\s+"{group}"', block, flags=re.M), (rule, block)
    assert f"--group-components {group}=" in HPC_DOC.read_text()
