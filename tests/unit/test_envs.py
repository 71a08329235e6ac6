"""The conda environments and the lock file agree with pyproject.toml's ranges."""

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def _pyproject_requirements() -> dict[str, Requirement]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = list(data["project"]["dependencies"])
    for extra in data["project"]["optional-dependencies"].values():
        reqs.extend(extra)
    return {canonicalize_name(r.name): r for r in map(Requirement, reqs)}


def _lock() -> dict[str, str]:
    """Pins of lock-cpu.txt and lock-nodeps.txt (installed without their dependencies)."""
    pins = {}
    lines = (REPO / "requirements" / "lock-cpu.txt").read_text().splitlines()
    lines += (REPO / "requirements" / "lock-nodeps.txt").read_text().splitlines()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"lock line not an exact pin: {line}"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_lock_satisfies_pyproject_and_pins_cpu_torch():
    reqs, lock = _pyproject_requirements(), _lock()
    assert lock["torch"] == "2.13.0"
    for name, req in reqs.items():
        if name in {"flash-attn", "mamba-ssm", "causal-conv1d"}:
            assert name not in lock, f"GPU extra {name} must not be in the CPU lock"
            continue
        assert name in lock, f"{name} is a dependency but not in requirements/lock-cpu.txt"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"lock pins {name}=={lock[name]}, outside pyproject's {req.specifier}"
        )


@pytest.mark.parametrize("env_file", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_conda_env_parses_and_agrees_with_pins(env_file):
    env = yaml.safe_load(env_file.read_text())
    assert env["name"].startswith("brainharmony-")
    deps = env["dependencies"]
    assert any(str(d).startswith("python=3.11") for d in deps if isinstance(d, str))
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    reqs, lock = _pyproject_requirements(), _lock()
    assert pip, f"{env_file.name}: empty pip section"
    for line in pip:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in reqs or name in lock, f"{env_file.name}: {name} is not a project dependency"
        (spec,) = req.specifier
        if spec.operator == "==":
            assert spec.version == lock[name], f"{env_file.name}: {line} differs from the lock"
            if name in reqs:
                assert reqs[name].specifier.contains(spec.version, prereleases=True)
        else:
            assert name in {"flash-attn", "mamba-ssm", "causal-conv1d"}, (
                f"{env_file.name}: {line} is not pinned"
            )


def test_rules_reference_existing_envs():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        for name in ("preproc.yaml", "train.yaml"):
            if name in text:
                assert (REPO / "envs" / name).exists()
