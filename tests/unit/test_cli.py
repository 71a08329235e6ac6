"""Every registered sub-command imports and documents itself."""

import subprocess
import sys

import pytest

from brainharmony import cli


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_subcommand_help(name):
    out = subprocess.run(
        [sys.executable, "-m", "brainharmony.cli", name, "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert f"brainharmony {name}" in out.stdout


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in cli.COMMANDS)
