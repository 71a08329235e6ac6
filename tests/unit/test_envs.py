"""The conda environments and the lock files agree with pyproject.toml's ranges, and the
runtime set (what `pip install .` and the workflow's environments get) holds no test,
lint or benchmark tool."""

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCKS = ("lock-cpu.txt", "lock-nodeps.txt", "lock-dev.txt", "lock-bench.txt")
RUNTIME_LOCKS = ("lock-cpu.txt", "lock-nodeps.txt")
GPU = {"flash-attn", "mamba-ssm", "causal-conv1d"}
# Needed only by the tests, `make lint` or `make bench`: never in the runtime set.
NOT_RUNTIME = {"pytest", "ruff", "bids-validator-deno", "deno", "lapy", "snakefmt", "black"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _pyproject_requirements() -> dict[str, Requirement]:
    project = _pyproject()
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs.extend(extra)
    return {canonicalize_name(r.name): r for r in map(Requirement, reqs)}


def _lock(files=LOCKS) -> dict[str, str]:
    """Pins of the lock files (lock-nodeps.txt is installed without dependencies)."""
    pins = {}
    lines = []
    for name in files:
        lines += (REPO / "requirements" / name).read_text().splitlines()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"lock line not an exact pin: {line}"
            name = canonicalize_name(req.name)
            assert pins.get(name, spec.version) == spec.version, f"{name}: two different pins"
            pins[name] = spec.version
    return pins


def test_runtime_set_holds_no_test_lint_or_benchmark_tool():
    """`pip install .` and the runtime lock: no pytest, ruff, BIDS validator, deno, lapy."""
    base = {canonicalize_name(Requirement(r).name) for r in _pyproject()["dependencies"]}
    runtime_extras = {
        canonicalize_name(Requirement(r).name)
        for extra in ("workflow", "preproc")
        for r in _pyproject()["optional-dependencies"][extra]
    }
    runtime_lock = set(_lock(RUNTIME_LOCKS))
    for where, names in (
        ("pyproject dependencies", base),
        ("extras workflow/preproc", runtime_extras),
        ("requirements/lock-cpu.txt", runtime_lock),
    ):
        assert not names & NOT_RUNTIME, f"{where} carries {sorted(names & NOT_RUNTIME)}"
    # ... while the dev and bench sets carry them, so `make install` still gets them.
    dev, bench = set(_lock(("lock-dev.txt",))), set(_lock(("lock-bench.txt",)))
    assert {"pytest", "ruff", "bids-validator-deno", "lapy", "snakefmt"} <= dev
    assert "lapy" in bench
    assert not (dev | bench) & runtime_lock, "a pin in lock-dev/bench is already a runtime pin"
    makefile = (REPO / "Makefile").read_text()
    assert all(f"requirements/{f}" in makefile for f in LOCKS), "make install misses a lock"


def test_imported_third_party_modules_are_declared():
    """A module the package imports at run time comes from a declared dependency."""
    declared = {canonicalize_name(Requirement(r).name) for r in _pyproject()["dependencies"]}
    assert "threadpoolctl" in declared


def test_lock_satisfies_pyproject_and_pins_cpu_torch():
    reqs, lock = _pyproject_requirements(), _lock()
    assert lock["torch"] == "2.13.0"
    for name, req in reqs.items():
        if name in GPU:
            assert name not in lock, f"GPU extra {name} must not be in the CPU lock"
            continue
        assert name in lock, f"{name} is a dependency but in no requirements/lock-*.txt"
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
    reqs, lock = _pyproject_requirements(), _lock(RUNTIME_LOCKS)
    assert pip, f"{env_file.name}: empty pip section"
    for line in pip:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in reqs or name in lock, f"{env_file.name}: {name} is not a project dependency"
        assert name not in NOT_RUNTIME, f"{env_file.name}: {name} is not a runtime package"
        # flash-attn & co. compile against the installed torch: not in the same pip block
        # (they need --no-build-isolation; envs/train.post-deploy.sh installs them).
        assert name not in GPU, f"{env_file.name}: {name} belongs to the post-deploy step"
        (spec,) = req.specifier
        assert spec.operator == "==", f"{env_file.name}: {line} is not pinned"
        assert spec.version == lock[name], f"{env_file.name}: {line} differs from the lock"
        if name in reqs:
            assert reqs[name].specifier.contains(spec.version, prereleases=True)


def test_rules_reference_existing_envs():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        for name in ("preproc.yaml", "train.yaml"):
            if name in text:
                assert (REPO / "envs" / name).exists()


def test_gpu_packages_are_a_second_step_after_torch():
    """envs/train.yaml builds without the GPU packages; its post-deploy script adds them
    with --no-build-isolation (they compile against the env's torch), as pyproject's
    `gpu` extra declares them."""
    script = (REPO / "envs" / "train.post-deploy.sh").read_text()
    assert "--no-build-isolation" in script
    extra = {
        canonicalize_name(Requirement(r).name): r
        for r in _pyproject()["optional-dependencies"]["gpu"]
    }
    assert set(extra) == GPU
    for spec in extra.values():
        assert f'"{spec}"' in script, f"{spec}: pyproject's gpu extra and the script disagree"
    train = yaml.safe_load((REPO / "envs" / "train.yaml").read_text())
    pip = next(d["pip"] for d in train["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert any(line.startswith("torch==") for line in pip)
