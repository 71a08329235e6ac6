"""Faults while writing: a full disk and a file-size limit (docs/reliability.md).

Every writer goes through :func:`brainharmony.io.atomic_path`: the data goes to a hidden
temporary file beside the destination and is renamed over it only once complete. So a
write that fails for lack of room must leave (a) no temporary file, (b) the previous
version of the destination untouched, and (c) a clear message from the command line;
(d) once there is room again, the same write succeeds.

Two ways to run out of room: a real 1 MiB tmpfs (ENOSPC; needs root, which CI has) and
``RLIMIT_FSIZE`` in a child process (EFBIG; works for anyone).
"""

from __future__ import annotations

import errno
import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainharmony import cli
from brainharmony.io import write_json, write_nifti, write_npy, write_tsv

BIG = 2 * 1024 * 1024  # bytes of incompressible data: more than the 1 MiB filesystem


def _noise(n_bytes: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(n_bytes // 8)


def _writers(folder: Path) -> dict[str, tuple[Path, callable, callable]]:
    """name -> (destination, write a small good version, write a version too big)."""
    big = _noise(BIG)
    small = np.arange(10.0)

    def nifti(values):
        return lambda p: write_nifti(p, nib.Nifti1Image(values.reshape(-1, 1, 1), np.eye(4)), 1)

    def checkpoint(values):
        def write(p):
            import torch

            from brainharmony.io import atomic_path

            with atomic_path(p) as tmp:
                torch.save({"w": torch.from_numpy(values)}, tmp)

        return write

    return {
        "nifti": (folder / "img.nii.gz", nifti(small), nifti(big)),
        "npy": (folder / "a.npy", lambda p: write_npy(p, small), lambda p: write_npy(p, big)),
        "tsv": (
            folder / "t.tsv",
            lambda p: write_tsv(p, pd.DataFrame({"x": small})),
            lambda p: write_tsv(p, pd.DataFrame({"x": big})),
        ),
        "json": (
            folder / "d.json",
            lambda p: write_json(p, {"x": small.tolist()}),
            lambda p: write_json(p, {"x": big.tolist()}),
        ),
        "checkpoint": (folder / "checkpoint.pt", checkpoint(small), checkpoint(big)),
    }


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the RLIMIT_FSIZE test covers this case")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("kind", ["nifti", "npy", "tsv", "json", "checkpoint"])
def test_disk_full_keeps_the_old_file_and_no_temporary(full_disk, kind):
    dest, write_small, write_big = _writers(full_disk)[kind]
    write_small(dest)
    before = _content(dest)
    code = None
    try:
        write_big(dest)
    except OSError as err:  # not pytest.raises: its traceback would keep the writer's
        code = err.errno  # file open, and the blocks of the removed temporary in use
    gc.collect()
    assert code == errno.ENOSPC
    assert sorted(p.name for p in full_disk.iterdir()) == [dest.name]  # no temporary left
    assert _content(dest) == before
    # Room again (the failed write released its blocks): the same write succeeds.
    write_small(dest)
    assert _content(dest) == before


def test_cli_reports_a_full_disk_without_a_traceback(full_disk, tmp_path, capsys):
    series = tmp_path / "series.npy"
    np.save(series, _noise(4 * BIG).reshape(-1, 4))  # float64 in, float32 out: 2 MiB
    (tmp_path / "series.json").write_text('{"RepetitionTime": 1.0}')
    out = full_disk / "resampled.npy"
    capsys.readouterr()
    code = cli.main(["resample", "--input", str(series), "--output", str(out), "--tr-out", "2.0"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "No space left on device" in err and "rerun" in err and "Traceback" not in err
    assert list(full_disk.iterdir()) == []


CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of a kill
    sys.path.insert(0, sys.argv[2])
    from tests.unit.test_faults import _writers
    dest, write_small, write_big = _writers(Path(sys.argv[1]))[sys.argv[3]]
    write_small(dest)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    try:
        write_big(dest)
    except OSError as err:
        print("errno", err.errno)
    """
)


@pytest.mark.parametrize("kind", ["nifti", "npy", "tsv", "checkpoint"])
def test_file_size_limit_keeps_the_old_file_and_no_temporary(tmp_path, kind):
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), str(repo), kind],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"errno {errno.EFBIG}" in done.stdout, done.stdout + done.stderr[-2000:]
    dest = _writers(tmp_path)[kind][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]
    reference = tmp_path / "reference"
    reference.mkdir()
    ref_dest, write_small, _ = _writers(reference)[kind]
    write_small(ref_dest)
    assert _content(dest) == _content(ref_dest)


def _content(path: Path):
    if path.suffix == ".pt":  # torch's zip records carry the (temporary) file's name
        import torch

        return torch.load(path, weights_only=True)["w"].tolist()
    return path.read_bytes()
