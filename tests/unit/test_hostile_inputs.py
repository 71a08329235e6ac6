"""The permanent adversarial suite (issue 23): hostile and broken inputs, one table.

Every case is one kind of input a careless or hostile user may hand to a stage: ingest
(``brainharmony ingest``), ``func``, ``anat``, ``validate-config``, or the workflow's
shell commands. :data:`CASES` lists them; each names the stage, the input kind, a builder
that writes the input under ``tmp_path``, the outcome it must have and a one-line
behaviour that ``docs/reliability.md`` shows (the table there is rendered from
:data:`CASES` and checked by :func:`test_reliability_doc_holds_the_rendered_table`).

The outcome kinds, each asserted exactly by :func:`test_hostile_input`:

``refused``
    ``brainharmony.cli.main`` returns (or argparse exits with) status 2 -- 1 or 2 for
    ``validate-config``, which reports an invalid file with 1 --, the message names the
    file (or the offending value) and matches the case's regex, there is no traceback and
    nothing is written in the output folder.
``subject excluded``
    ingest exits 0; the bad subject has a row in ``excluded.tsv`` whose reason matches the
    regex and none in ``scans.tsv``; every other subject's rows are byte-identical to a
    clean ingest of the same dataset without the bad subject (paths aside). For ``anat``:
    exit 0 and every output written with ``Excluded: true`` and a reason naming the file
    and matching the regex.
``reported``
    ingest exits 0, the problem is reported for the bad subject (an ``excluded.tsv`` row or
    a warning matching the regex); every other subject's rows are identical to the clean
    ingest. The subject's own valid files may still be used.
``handled``
    exit 0 with the correct output (the case's own check).

Every case also checks that no file appeared outside the output folder (a stage that
escaped ``--out-dir`` or ran ``$(touch PWNED)`` fails it). Cases that could hang or
exhaust memory before their fix (symlink loops, ``/dev/zero``, a huge sparse sidecar, an
alias bomb, deep JSON, 100,000-row ``participants.tsv``) run ``python -m brainharmony``
in a subprocess with a timeout and a 4 GiB address-space limit; the in-process cases are
stopped by SIGALRM after the same time.

Regenerate the table in docs/reliability.md::

    .venv/bin/python -m tests.unit.test_hostile_inputs --write-docs
"""

from __future__ import annotations

import builtins
import contextlib
import gzip
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainharmony import cli
from tests.unit import bids_factory as bf
from tests.unit.test_bad_inputs import _save, _t1w_data, _truncated, func_env  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- hostile-inputs:begin -->", "<!-- hostile-inputs:end -->"
REGENERATE = ".venv/bin/python -m tests.unit.test_hostile_inputs --write-docs"
#: Seconds a subprocess case may take (a fixed stage answers in a few seconds).
TIMEOUT_S = 60
#: Address-space limit of a subprocess case (an unbounded read or alias expansion fails
#: with MemoryError instead of taking the machine's memory).
MEMORY_LIMIT = 4 << 30
GOOD = ("01", "02")
BAD = "bad"


# ---------------------------------------------------------------------- the table


@dataclass
class Run:
    """What a builder prepared: the command and what to check afterwards."""

    argv: list[str]
    #: The output folder (or, for ``--out-dir`` pointing at a file, that file).
    out: Path
    #: One of these strings must appear in a refusal's message (a path or a value).
    named: tuple[str, ...] = ()
    #: Ingest: the dataset root and the bad subject's label and folder.
    root: Path | None = None
    bad: str = BAD
    bad_dir: Path | None = None
    #: Extra check of a ``handled`` outcome: called with (run, result).
    check: Callable[[Run, Result], None] | None = None
    #: Entered around the command (e.g. a folder made unreadable).
    context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
    #: The test's folder (set by the test): left out of the text a regex is matched in,
    #: so a folder name cannot match the problem.
    tmp: Path | None = None

    def neutral(self, text: str) -> str:
        return text if self.tmp is None else text.replace(str(self.tmp), "<TMP>")


@dataclass
class Result:
    code: int | None
    text: str  # stdout + stderr
    seconds: float


@dataclass(frozen=True)
class Case:
    """One hostile input kind."""

    id: str
    stage: str  # ingest | func | anat | validate-config | workflow
    kind: str  # the input, in a few words
    outcome: str  # refused | subject excluded | reported | handled
    problem: str  # regex the message / reason must match ("" for handled)
    behaviour: str  # one line for docs/reliability.md
    item: str  # the issue-23 item ("1".."7") or "keep" (already handled before it)
    build: Callable[..., Run] | None = None
    #: Run ``python -m brainharmony`` in a subprocess with a timeout (hang-prone input).
    isolate: bool = False
    #: For stage "workflow": the test that holds the promise (``path::name``).
    test: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------- NIfTI damage


def _patch_header(path: Path, **fields: Any) -> Path:
    """Set NIfTI-1 header fields in the file's bytes (nibabel would rewrite qform/sform
    from the affine if it saved the image)."""
    raw = path.read_bytes()
    packed = raw[:2] == b"\x1f\x8b"
    data = bytearray(gzip.decompress(raw) if packed else raw)
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(data)))
    for name, value in fields.items():
        header[name] = value
    data[:348] = header.binaryblock
    path.write_bytes(gzip.compress(bytes(data), mtime=0) if packed else bytes(data))
    return path


def _no_orientation(path: Path) -> Path:
    return _patch_header(path, qform_code=0, sform_code=0)


def _zero_sform(path: Path) -> Path:
    zero = [0.0, 0.0, 0.0, 0.0]
    return _patch_header(path, qform_code=0, sform_code=1, srow_x=zero, srow_y=zero, srow_z=zero)


def _bad_crc(path: Path) -> Path:
    """Flip the stored CRC-32 of a .gz: every byte decompresses, the check fails at the end."""
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def _sidecar(path: Path) -> Path:
    return path.with_name(re.sub(r"\.nii(\.gz)?$", ".json", path.name))


# ------------------------------------------------------------------------ ingest


def _ingest_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["ingest", "--bids-dir", str(root), "--dataset", "hostile", "--out-dir", str(out),
            *extra]  # fmt: skip


def _ingest(breaker: Callable[[Path], Any], *extra: str, folder: str = "ds") -> Callable[..., Run]:
    """A dataset of the good subjects plus ``sub-bad``, which ``breaker`` then damages."""

    def build(tmp: Path, env: Any = None) -> Run:
        root = bf.make_dataset(tmp / folder, subjects=(*GOOD, BAD))
        run = Run(_ingest_argv(root, tmp / "out", *extra), tmp / "out", root=root,
                  bad_dir=root / f"sub-{BAD}")  # fmt: skip
        changed = breaker(root)
        if isinstance(changed, Run):
            return changed
        if callable(changed):
            run.context = changed
        return run

    return build


def _ingest_option(option: str, value: str) -> Callable[..., Run]:
    """A clean dataset and one bad command-line value (the message must name it)."""

    def build(tmp: Path, env: Any = None) -> Run:
        root = bf.make_dataset(tmp / "ds", subjects=GOOD)
        return Run(_ingest_argv(root, tmp / "out", option, value), tmp / "out",
                   named=(option, value), root=root)  # fmt: skip

    return build


def _bold(root: Path) -> Path:
    return bf.bold_path(root, BAD)


def _t1w(root: Path) -> Path:
    return bf.t1w_path(root, BAD)


def _tr(value: Any) -> Callable[[Path], Any]:
    return lambda root: bf.add_bold(root, BAD, metadata={"RepetitionTime": value}, header_tr=0.0)


def _raw_sidecar(text: str | bytes) -> Callable[[Path], Any]:
    def breaker(root: Path) -> None:
        data = text.encode() if isinstance(text, str) else text
        _sidecar(_bold(root)).write_bytes(data)

    return breaker


def _huge_int(digits: int, where: str) -> Callable[[Path], Any]:
    number = "1" + "0" * (digits - 1)
    if where == "tr":
        doc = '{"RepetitionTime": ' + number + ', "TaskName": "rest"}'
    else:
        times = f"[0, 0.3, {number}, 1, 1.3, 1.6]"
        doc = '{"RepetitionTime": 2.0, "TaskName": "rest", "SliceTiming": ' + times + "}"
    return _raw_sidecar(doc)


def _deep_json(where: str) -> Callable[[Path], None]:
    def breaker(root: Path) -> None:
        depth = 100_000
        path = _t1w(root).parent / "notes.json" if where == "notes" else _sidecar(_bold(root))
        path.write_text("[" * depth + "]" * depth)

    return breaker


def _symlink_loops(root: Path) -> None:
    (root / f"sub-{BAD}" / "func" / "loop").symlink_to("..", target_is_directory=True)
    (root / f"sub-{BAD}" / "anat" / "back").symlink_to("../anat", target_is_directory=True)


def _bold_links_outside(root: Path) -> None:
    outside = bf.add_bold(root.parent / "elsewhere", BAD)
    _bold(root).unlink()
    _bold(root).symlink_to(outside)


def _sidecar_dev_zero(root: Path) -> None:
    _sidecar(_bold(root)).unlink()
    _sidecar(_bold(root)).symlink_to("/dev/zero")


def _sidecar_huge_sparse(root: Path) -> None:
    """A 4 GiB sidecar of NUL bytes (sparse: no disk used)."""
    with open(_sidecar(_bold(root)), "r+b") as handle:
        handle.truncate(4 << 30)


def _sidecar_fifo(root: Path) -> None:
    """A named pipe: opening it for reading blocks until a writer comes (never)."""
    _sidecar(_bold(root)).unlink()
    os.mkfifo(_sidecar(_bold(root)))


def _huge_voxels(root: Path) -> None:
    bf.write_image(_bold(root), (8, 8, 6, 60), zooms=(300.0, 300.0, 400.0, 2.0))


def _dataset_file(breaker: Callable[[Path], Any], name: str) -> Callable[..., Run]:
    """A clean dataset whose dataset-level file ``name`` ``breaker`` damages."""

    def build(tmp: Path, env: Any = None) -> Run:
        root = bf.make_dataset(tmp / "ds", subjects=GOOD)
        breaker(root / name)
        return Run(_ingest_argv(root, tmp / "out"), tmp / "out", named=(str(root / name),),
                   root=root)  # fmt: skip

    return build


def _link_outside(path: Path) -> None:
    elsewhere = path.parent.parent / f"elsewhere-{path.name}"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)


def _link_dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def _unreadable_func(root: Path) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    return lambda: _unreadable(root / f"sub-{BAD}" / "func")


@contextlib.contextmanager
def _unreadable(folder: Path) -> Iterator[None]:
    """``folder`` unreadable: mode 000; as root (who reads anyway) listing, stat-ing and
    opening anything in it raise PermissionError as they would for another user."""
    folder.chmod(0)
    try:
        if os.geteuid() != 0:
            yield
            return
        inside = str(folder.resolve())

        def denied(path: Any, strict: bool) -> bool:
            try:
                text = os.path.abspath(os.fsdecode(path))
            except TypeError:
                return False
            return text.startswith(inside + os.sep) or (not strict and text == inside)

        def guard(function: Callable[..., Any], strict: bool) -> Callable[..., Any]:
            def guarded(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
                if denied(path, strict):
                    raise PermissionError(13, "Permission denied", os.fsdecode(path))
                return function(path, *args, **kwargs)

            return guarded

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "scandir", guard(os.scandir, strict=False))
            mp.setattr(os, "listdir", guard(os.listdir, strict=False))
            mp.setattr(os, "stat", guard(os.stat, strict=True))
            mp.setattr(builtins, "open", guard(builtins.open, strict=True))
            mp.setattr(io, "open", guard(io.open, strict=True))
            yield
    finally:
        folder.chmod(0o755)


def _unsafe_label(label: str) -> Callable[..., Run]:
    def build(tmp: Path, env: Any = None) -> Run:
        root = bf.make_dataset(tmp / "ds", subjects=GOOD)
        folder = root / f"sub-{label}"
        bf.add_t1w(root, "x", path=folder / "anat" / f"sub-{label}_T1w.nii.gz")
        bf.add_bold(root, "x", path=folder / "func" / f"sub-{label}_task-rest_bold.nii.gz")
        return Run(_ingest_argv(root, tmp / "out"), tmp / "out", root=root, bad=label,
                   bad_dir=folder)  # fmt: skip

    return build


def _participants(text: str) -> Callable[..., Run]:
    def build(tmp: Path, env: Any = None) -> Run:
        root = bf.make_dataset(tmp / "ds", subjects=GOOD)
        path = bf.write_participants(root, text=text)
        return Run(_ingest_argv(root, tmp / "out"), tmp / "out", named=(str(path),), root=root)

    return build


def _participants_bytes(data: bytes) -> Callable[..., Run]:
    def build(tmp: Path, env: Any = None) -> Run:
        root = bf.make_dataset(tmp / "ds", subjects=GOOD)
        path = root / "participants.tsv"
        path.write_bytes(data)
        return Run(_ingest_argv(root, tmp / "out"), tmp / "out", named=(str(path),), root=root)

    return build


def _many_participants(rows: int, duplicate: bool) -> Callable[..., Run]:
    def build(tmp: Path, env: Any = None) -> Run:
        root = bf.make_dataset(tmp / "ds", subjects=GOOD)
        lines = (root / "participants.tsv").read_text().splitlines()
        extra = [f"sub-x{i:06d}\t30\tF\t25\tcontrol" for i in range(rows - len(lines) + 1)]
        if duplicate:
            extra[-1] = lines[1]  # sub-01 again, last
        path = bf.write_participants(root, text="\n".join([*lines, *extra]) + "\n")
        run = Run(_ingest_argv(root, tmp / "out"), tmp / "out", named=(str(path),), root=root)
        run.check = _others_as_clean
        return run

    return build


def _hostile_bids_path(tmp: Path, env: Any = None) -> Run:
    root = bf.make_dataset(tmp / "my study 'sq' \"dq\" $(touch PWNED)" / "ds", subjects=GOOD)
    run = Run(_ingest_argv(root, tmp / "out"), tmp / "out", root=root)
    run.check = _others_as_clean
    return run


def _slice_timing_wrong_count(root: Path) -> None:
    bf.add_bold(root, BAD, metadata={"SliceTiming": [0.0, 0.5, 1.0]})


def _kept_without_slice_timing(run: Run, result: Result) -> None:
    _others_as_clean(run, result)
    scans = _table(run.out / "scans.tsv")
    rows = scans[scans["subject"] == BAD]
    assert len(rows) == 1 and rows["has_slice_timing"].tolist() == ["False"], rows
    assert re.search(r"SliceTiming ignored", result.text), result.text


def _mixed_sessions(root: Path) -> None:
    shutil.rmtree(root / f"sub-{BAD}")
    bf.add_t1w(root, BAD, "pre")
    bf.add_bold(root, BAD, "pre", "1")
    bf.add_bold(root, BAD, "pre", "2")
    bf.add_t1w(root, BAD, "post")
    bf.add_bold(root, BAD, "post")


def _mixed_rows(run: Run, result: Result) -> None:
    _others_as_clean(run, result)
    scans = _table(run.out / "scans.tsv")
    keys = list(zip(scans["subject"], scans["session"], scans["run"], strict=True))
    assert keys == [(*GOOD[:1], "n/a", "n/a"), (GOOD[1], "n/a", "n/a"), (BAD, "post", "n/a"),
                    (BAD, "pre", "1"), (BAD, "pre", "2")], keys  # fmt: skip
    assert scans.loc[scans["subject"] == BAD, "t1w_session"].tolist() == ["post", "pre", "pre"]


# -------------------------------------------------------------------------- func


def _func_argv(env: dict, bold: Path, out: Path, *extra: str, tr: bool = True,
               subject: str = "01") -> list[str]:  # fmt: skip
    return [
        "func", "native", "--bold", str(bold), "--coreg", "header", "--subject", subject,
        "--t1w-to-template", str(env["eye"]),
        "--atlas", str(env["image"]), "--atlas-labels", str(env["labels"]),
        "--out-dir", str(out), "--threads", "1", "--no-qc",
        *(["--tr", str(env["meta"]["RepetitionTime"])] if tr else []), *extra,
    ]  # fmt: skip


def _func_bold(tmp: Path, env: dict, data: np.ndarray | None = None) -> Path:
    img = nib.load(env["bold"])
    path = tmp / "bids" / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(img.dataobj, dtype=np.float32) if data is None else data
    out = nib.Nifti1Image(arr, img.affine)
    out.header.set_xyzt_units("mm", "sec")
    nib.save(out, path)
    return path


def _func(damage: Callable[[Path], Any] | None = None, *, data: Callable[[np.ndarray], np.ndarray]
          | None = None, sidecar: str | bytes | None = None, tr: bool = True,
          extra: tuple[str, ...] = (), named: str = "bold") -> Callable[..., Run]:  # fmt: skip
    """A refusal case of ``func native`` on the synthetic run, damaged as asked."""

    def build(tmp: Path, env: dict) -> Run:
        arr = None
        if data is not None:
            arr = data(np.asarray(nib.load(env["bold"]).dataobj, dtype=np.float32))
        bold = _func_bold(tmp, env, arr)
        if damage is not None:
            damage(bold)
        more = list(extra)
        if sidecar is not None:
            side = _sidecar(bold)
            side.write_bytes(sidecar.encode() if isinstance(sidecar, str) else sidecar)
            more += ["--bold-sidecar", str(side)]
        out = tmp / "w" / "x" / "func"
        names = {"bold": (str(bold),), "sidecar": (str(_sidecar(bold)),),
                 "either": (str(bold), str(_sidecar(bold)))}  # fmt: skip
        return Run(_func_argv(env, bold, out, *more, tr=tr), out,
                   named=names.get(named, (named,)))  # fmt: skip

    return build


def _func_label(option: str, value: str) -> Callable[..., Run]:
    def build(tmp: Path, env: dict) -> Run:
        bold = _func_bold(tmp, env)
        out = tmp / "w" / "x" / "func"
        argv = _func_argv(env, bold, out)
        if option == "--subject":
            argv[argv.index("--subject") + 1] = value
        else:
            argv += [option, value]
        return Run(argv, out, named=(value, repr(value)))

    return build


def _func_out_is_file(tmp: Path, env: dict) -> Run:
    bold = _func_bold(tmp, env)
    out = tmp / "results.txt"
    out.write_text("not a folder\n")
    return Run(_func_argv(env, bold, out), out, named=(str(out),))


def _func_meta(**changes: Any) -> Callable[..., Run]:
    """``func`` without ``--tr``: the sidecar's RepetitionTime is ``changes``'."""

    def build(tmp: Path, env: dict) -> Run:
        inner = _func(sidecar=json.dumps({**env["meta"], **changes}), tr=False, named="either")
        return inner(tmp, env)

    return build


def _volumes(start: int, stop: int, value: float) -> Callable[[np.ndarray], np.ndarray]:
    def damage(arr: np.ndarray) -> np.ndarray:
        arr[..., start:stop] = value
        return arr

    return damage


# -------------------------------------------------------------------------- anat


def _anat(damage: Callable[[Path], Any] | None = None, *, dtype: str = "float32",
          subject: str = "01", session: str | None = None) -> Callable[..., Run]:  # fmt: skip
    def build(tmp: Path, env: Any = None) -> Run:
        t1w = tmp / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
        _save(_t1w_data().astype(dtype), t1w)
        if damage is not None:
            damage(t1w)
        out = tmp / "w" / "x" / "anat"
        argv = ["anat", "--t1w", str(t1w), "--out-dir", str(out), "--subject", subject]
        argv += ["--resolution-mm", "2"]
        if session is not None:
            argv += ["--session", session]
        value = session if session is not None else subject
        return Run(argv, out, named=(str(t1w),) if subject == "01" and session is None
                   else (value, repr(value)))  # fmt: skip

    return build


def _anat_out_is_file(tmp: Path, env: Any = None) -> Run:
    run = _anat()(tmp)
    out = tmp / "anat.txt"
    out.write_text("not a folder\n")
    run.argv[run.argv.index("--out-dir") + 1] = str(out)
    return Run(run.argv, out, named=(str(out),))


# ------------------------------------------------------------------ validate-config


def _config(text: str) -> Callable[..., Run]:
    def build(tmp: Path, env: Any = None) -> Run:
        path = tmp / "config.yaml"
        path.write_text(text, encoding="utf-8")
        return Run(["validate-config", str(path)], tmp / "none", named=(str(path),))

    return build


def _config_with_injection(tmp: Path, env: Any = None) -> Run:
    run = _config('datasets:\n  study:\n    bids_dir: "/data/my study/$(touch PWNED)"\n')(tmp)

    def valid(run: Run, result: Result) -> None:
        assert "valid" in result.text, result.text

    run.check = valid
    return run


def _alias_bomb() -> str:
    lines = ["datasets:", "  study:", "    bids_dir: x", "    phenotypes:",
             "      a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]  # fmt: skip
    for level in range(1, 10):
        below = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"      a{level}: &a{level} [{below}]")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ the cases

SHELL_TEST = "tests/workflow/test_shell_quoting.py"
ANY_TR = r"RepetitionTime|\bTR\b|repetition time"
CRC = r"CRC|corrupt|compress|gzip"
LABEL = r"label|alphanumeric|not allowed|invalid|unsafe|BIDS"
OUT_FILE = r"out-dir|not a (directory|folder)|is a file|exists"

# fmt: off
CASES: list[Case] = [
    # 1. shell injection -------------------------------------------------------------
    Case("workflow-unquoted-config-paths", "workflow",
         "`bids_dir`, demo root, sidecar paths with a space, quotes and `$( )` in rule shell "
         "commands", "handled", "",
         "every config-derived value reaches the shell quoted: one shell word, no `$(` outside "
         "quotes in any rule's dry-run command", "1",
         test=f"{SHELL_TEST}::test_dry_run_commands_quote_every_config_path"),
    Case("workflow-ingest-hostile-bids-path", "workflow",
         "ingest job on a BIDS folder whose path holds spaces, quotes and `$(touch PWNED)`",
         "handled", "", "the job indexes the folder; nothing named PWNED is created", "1",
         test=f"{SHELL_TEST}::test_ingest_job_runs_on_a_hostile_bids_path"),
    Case("config-bids-dir-command-substitution", "validate-config",
         "`bids_dir: /data/my study/$(touch PWNED)`", "handled", "",
         "valid (a path may hold any character); nothing is executed", "1",
         build=_config_with_injection),
    Case("ingest-bids-dir-spaces-quotes", "ingest",
         "`--bids-dir` holding spaces, quotes and `$(touch PWNED)`", "handled", "",
         "indexed like any folder; nothing is executed", "1", build=_hostile_bids_path),
    # 2. silent wrong output ---------------------------------------------------------
    Case("func-bold-no-qform-sform", "func", "BOLD with qform_code = sform_code = 0",
         "refused", r"qform|sform|orientation",
         "refused: the voxel-to-world mapping is unknown (no nibabel fallback affine)", "2",
         build=_func(_no_orientation)),
    Case("ingest-bold-no-qform-sform", "ingest", "BOLD with qform_code = sform_code = 0",
         "subject excluded", r"qform|sform|orientation", "run excluded, reason names both codes",
         "2", build=_ingest(lambda r: _no_orientation(_bold(r)))),
    Case("ingest-t1w-no-qform-sform", "ingest", "T1w with qform_code = sform_code = 0",
         "subject excluded", r"qform|sform|orientation", "T1w rejected, subject excluded", "2",
         build=_ingest(lambda r: _no_orientation(_t1w(r)))),
    Case("anat-t1w-no-qform-sform", "anat", "T1w with qform_code = sform_code = 0",
         "subject excluded", r"qform|sform|orientation",
         "subject excluded (outputs flagged `Excluded`, reason names the file)", "2",
         build=_anat(_no_orientation)),
    Case("func-bold-complex", "func", "complex-valued BOLD", "refused", r"complex",
         "refused (never cast to its real part)", "2",
         build=_func(data=lambda a: a.astype(np.complex64))),
    Case("ingest-bold-complex", "ingest", "complex-valued BOLD", "subject excluded", r"complex",
         "run excluded", "2", build=_ingest(lambda r: bf.add_bold(r, BAD, dtype="complex64"))),
    Case("ingest-t1w-complex", "ingest", "complex-valued T1w", "subject excluded", r"complex",
         "T1w rejected, subject excluded", "2",
         build=_ingest(lambda r: bf.add_t1w(r, BAD, dtype="complex64"))),
    Case("anat-t1w-complex", "anat", "complex-valued T1w", "subject excluded", r"complex",
         "subject excluded, reason names the file", "2", build=_anat(dtype="complex64")),
    Case("func-bold-gzip-crc", "func", "`.nii.gz` whose CRC-32 check fails", "refused", CRC,
         "refused naming the file (the stream is read to its end)", "2",
         build=_func(_bad_crc)),
    Case("ingest-bold-gzip-crc", "ingest", "BOLD `.nii.gz` whose CRC-32 check fails",
         "subject excluded", CRC, "run excluded", "2", build=_ingest(lambda r: _bad_crc(_bold(r)))),
    Case("anat-t1w-gzip-crc", "anat", "T1w `.nii.gz` whose CRC-32 check fails",
         "subject excluded", CRC, "subject excluded, reason names the file", "2",
         build=_anat(_bad_crc)),
    Case("func-tr-1e-6", "func", "sidecar `RepetitionTime: 1e-6`", "refused", ANY_TR,
         "refused naming the sidecar: outside `tr_range` (default 0.1-10 s)", "2",
         build=_func_meta(RepetitionTime=1e-6)),
    Case("ingest-tr-1e-6", "ingest", "sidecar `RepetitionTime: 1e-6`", "subject excluded",
         ANY_TR, "run excluded: outside `ingest.tr_range` (default 0.1-10 s)", "2",
         build=_ingest(_tr(1e-6))),
    Case("ingest-tr-12.5", "ingest", "sidecar `RepetitionTime: 12.5`", "subject excluded",
         r"tr_range|range", "run excluded: outside `ingest.tr_range` (default 0.1-10 s)", "2",
         build=_ingest(_tr(12.5))),
    Case("ingest-voxels-300-mm", "ingest", "BOLD voxels of 300 x 300 x 400 mm",
         "subject excluded", r"voxel size", "run excluded: voxel size outside 0.1-20 mm", "2",
         build=_ingest(_huge_voxels)),
    Case("config-tr-range-reversed", "validate-config", "`ingest.tr_range: [10, 0.1]`",
         "refused", r"tr_range", "invalid: min must be below max (not only at run time)", "2",
         build=_config("datasets:\n  study: {bids_dir: x}\ningest: {tr_range: [10, 0.1]}\n")),
    # 3. hang -------------------------------------------------------------------------
    Case("ingest-symlink-loops", "ingest", "two symlink loops inside one subject",
         "reported", r"symlink|link|loop",
         "the links are not followed and are reported; ingest finishes", "3",
         build=_ingest(_symlink_loops), isolate=True),
    Case("ingest-sidecar-dev-zero", "ingest", "sidecar symlinked to `/dev/zero`",
         "subject excluded", r"symlink|link|outside|size|regular|device",
         "never read (a link out of the dataset, not a regular file): run excluded", "3",
         build=_ingest(_sidecar_dev_zero), isolate=True),
    Case("ingest-bold-links-outside", "ingest", "BOLD symlinked to a file outside the dataset",
         "subject excluded", r"symlink|link|outside",
         "not followed: run excluded with the reason", "3", build=_ingest(_bold_links_outside)),
    Case("ingest-sidecar-4gib", "ingest", "4 GiB sidecar (sparse, NUL bytes)",
         "subject excluded", r"size|large|big|bytes|[KMG]i?B",
         "not read: over the size cap, run excluded", "3",
         build=_ingest(_sidecar_huge_sparse), isolate=True),
    Case("ingest-sidecar-fifo", "ingest", "sidecar that is a named pipe (FIFO)",
         "subject excluded", r"pipe|FIFO|regular",
         "never opened (not a regular file): run excluded", "3",
         build=_ingest(_sidecar_fifo), isolate=True),
    Case("ingest-participants-links-outside", "ingest",
         "`participants.tsv` symlinked to a file outside the dataset", "refused",
         r"symlink|symbolic link|outside", "refused naming the file: a dataset-level file stops "
         "the dataset", "3", build=_dataset_file(_link_outside, "participants.tsv")),
    Case("ingest-description-dev-zero", "ingest", "`dataset_description.json` linked to "
         "`/dev/zero`", "refused", r"symlink|symbolic link|outside|regular",
         "refused naming the file, nothing read", "3",
         build=_dataset_file(_link_dev_zero, "dataset_description.json"), isolate=True),
    Case("ingest-participants-100k-rows", "ingest", "`participants.tsv` with 100,000 rows",
         "handled", "",
         "read in linear time (docs/ingest.md states the measured time); the rows without a "
         "folder are warnings", "3",
         build=_many_participants(100_000, duplicate=False), isolate=True),
    Case("ingest-participants-100k-duplicate", "ingest",
         "`participants.tsv` with 100,000 rows, the last one a duplicate", "refused",
         r"duplicate", "refused naming the file and the duplicate, in linear time", "3",
         build=_many_participants(100_000, duplicate=True), isolate=True),
    # 4. one bad file kills the dataset ----------------------------------------------
    Case("ingest-tr-400-digits", "ingest", "`RepetitionTime` an integer of 400 digits",
         "subject excluded", rf"{ANY_TR}|integer|digits|too large",
         "run excluded (no OverflowError)", "4",
         build=_ingest(_huge_int(400, "tr"))),
    Case("ingest-slicetiming-400-digits", "ingest", "`SliceTiming` holding a 400-digit integer",
         "subject excluded", r"SliceTiming|overflow|integer|large|digits",
         "the run is excluded with the reason (no OverflowError)", "4",
         build=_ingest(_huge_int(400, "slice"))),
    Case("ingest-int-over-4300-digits", "ingest", "sidecar integer of 5,000 digits",
         "subject excluded", r"digit|integer|int|large|JSON|parse",
         "run excluded (no ValueError)", "4", build=_ingest(_huge_int(5000, "tr"))),
    Case("ingest-deep-json-notes", "ingest", "`anat/notes.json` nested 100,000 deep",
         "reported", r"deep|nest|recursion",
         "reported and left out of the index (no RecursionError); it is no sidecar of the "
         "subject's runs, which are used", "4", build=_ingest(_deep_json("notes")),
         isolate=True),
    Case("ingest-deep-json-sidecar", "ingest", "BOLD sidecar nested 100,000 deep",
         "subject excluded", r"deep|nest|recursion", "run excluded (no RecursionError)", "4",
         build=_ingest(_deep_json("sidecar")), isolate=True),
    Case("ingest-unreadable-folder", "ingest", "one subject's `func/` unreadable",
         "subject excluded", r"[Pp]ermission|denied|readable|access",
         "subject excluded with the PermissionError's message", "4",
         build=_ingest(_unreadable_func)),
    # 5. escape from the output folder ------------------------------------------------
    Case("func-subject-dotdot", "func", "`--subject ../x`", "refused", LABEL,
         "refused before anything is written", "5", build=_func_label("--subject", "../x")),
    Case("func-session-dotdot", "func", "`--session ../x`", "refused", LABEL,
         "refused before anything is written", "5", build=_func_label("--session", "../x")),
    Case("func-task-dotdot", "func", "`--task ../x`", "refused", LABEL,
         "refused before anything is written", "5", build=_func_label("--task", "../x")),
    Case("func-run-dotdot", "func", "`--run ../x`", "refused", LABEL,
         "refused before anything is written", "5", build=_func_label("--run", "../x")),
    Case("anat-subject-dotdot", "anat", "`--subject ../x`", "refused", LABEL,
         "refused before anything is written", "5", build=_anat(subject="../x")),
    Case("anat-session-dotdot", "anat", "`--session ../x`", "refused", LABEL,
         "refused before anything is written", "5", build=_anat(session="../x")),
    # 6. tracebacks instead of messages ----------------------------------------------
    Case("func-sform-all-zero", "func", "all-zero sform with sform_code 1", "refused",
         r"singular|sform|affine", "refused: the sform is singular", "6",
         build=_func(_zero_sform)),
    Case("ingest-sform-all-zero", "ingest", "BOLD with an all-zero sform, sform_code 1",
         "subject excluded", r"singular|sform|affine", "run excluded", "6",
         build=_ingest(lambda r: _zero_sform(_bold(r)))),
    Case("func-bold-1e30-voxels", "func", "1e30 in some volumes", "refused",
         r"1e\+?30|finite|overflow|range|extreme|implausible|large",
         "values beyond +-1e10 count as corrupt, like NaN: refused over 10 % of the voxels with "
         "signal (fewer are left out and counted)", "6",
         build=_func(data=_volumes(5, 8, 1e30))),
    Case("ingest-sidecar-invalid-utf8", "ingest", "sidecar in invalid UTF-8", "subject excluded",
         r"UTF-8|utf-8|decode|encoding", "run excluded", "6",
         build=_ingest(_raw_sidecar(b'{"RepetitionTime": 2.0, "TaskName": "r\xe9st"}'))),
    Case("func-sidecar-invalid-utf8", "func", "`--bold-sidecar` in invalid UTF-8", "refused",
         r"UTF-8|utf-8|decode|encoding", "refused naming the sidecar", "6",
         build=_func(sidecar=b'{"RepetitionTime": 2.0, "TaskName": "r\xe9st"}', named="sidecar")),
    Case("func-tr-list", "func", "sidecar `RepetitionTime: [2.0]`, no `--tr`", "refused",
         ANY_TR, "refused: RepetitionTime is not a number", "6",
         build=_func_meta(RepetitionTime=[2.0])),
    Case("func-task-with-space", "func", "`--task 're st'`", "refused", LABEL,
         "refused: not a BIDS label", "6", build=_func_label("--task", "re st")),
    Case("func-out-dir-is-file", "func", "`--out-dir` naming an existing file", "refused",
         OUT_FILE, "refused; the file is left as it was", "6", build=_func_out_is_file),
    Case("anat-out-dir-is-file", "anat", "`--out-dir` naming an existing file", "refused",
         OUT_FILE, "refused; the file is left as it was", "6", build=_anat_out_is_file),
    Case("config-phenotype-named-tr", "validate-config", "`phenotypes: {tr: number}`",
         "refused", r"scans\.tsv|clash|collid|reserved",
         "invalid: a phenotype may not be named like a scans.tsv column", "6",
         build=_config("datasets:\n  study:\n    bids_dir: x\n    phenotypes: {tr: number}\n")),
    Case("ingest-phenotype-named-tr", "ingest", "`--phenotypes tr:number`", "refused",
         r"scans\.tsv|clash|collid|reserved", "refused naming phenotype and column", "6",
         build=_ingest_option("--phenotypes", "tr:number")),
    # 7. config validation ------------------------------------------------------------
    Case("config-dataset-name-newline", "validate-config", "dataset name with a trailing newline",
         "refused", r"name|alphanumeric|pattern|does not match|invalid",
         "invalid: names are matched whole (no `$` before a newline)", "7",
         build=_config('datasets:\n  "study\\n": {bids_dir: x}\n')),
    Case("config-task-newline", "validate-config", "`task` with a trailing newline", "refused",
         r"task|does not match|pattern|alphanumeric|invalid", "invalid: labels are matched whole",
         "7", build=_config('datasets:\n  study: {bids_dir: x, task: "rest\\n"}\n')),
    Case("config-duplicate-key", "validate-config", "a key given twice", "refused",
         r"duplicate|twice|more than once",
         "invalid, naming the key and both lines (not the last value kept)", "7",
         build=_config("datasets:\n  study:\n    bids_dir: /a\n    bids_dir: /b\n")),
    Case("config-alias-bomb", "validate-config", "YAML alias bomb under `phenotypes:`",
         "refused", r"alias|anchor|expan|large|too many|nest",
         "invalid once aliases expand past 100,000 values, before validation (bounded time "
         "and memory)", "7", build=_config(_alias_bomb()),
         isolate=True),
    # keep: handled before issue 23 ---------------------------------------------------
    Case("ingest-tr-string", "ingest", "`RepetitionTime: \"2.0\"`", "subject excluded",
         r"is not a number", "run excluded", "keep", build=_ingest(_tr("2.0"))),
    Case("ingest-tr-list", "ingest", "`RepetitionTime: [2.0]`", "subject excluded",
         r"is not a number", "run excluded", "keep", build=_ingest(_tr([2.0]))),
    Case("ingest-tr-nan", "ingest", "`RepetitionTime: NaN`", "subject excluded",
         r"not a positive finite number", "run excluded", "keep",
         build=_ingest(_raw_sidecar('{"RepetitionTime": NaN, "TaskName": "rest"}'))),
    Case("ingest-tr-milliseconds", "ingest", "`RepetitionTime: 2000` (milliseconds)",
         "subject excluded", r"over 60 s|milliseconds", "run excluded", "keep",
         build=_ingest(_tr(2000))),
    Case("ingest-slicetiming-wrong-count", "ingest", "`SliceTiming` with 3 values for 6 slices",
         "handled", "", "run kept with `has_slice_timing` false and a warning", "keep",
         build=_ingest(_slice_timing_wrong_count)),
    Case("ingest-bold-3d", "ingest", "3D BOLD", "subject excluded", r"3D|4D", "run excluded",
         "keep", build=_ingest(lambda r: bf.add_bold(r, BAD, n_volumes=0))),
    Case("ingest-bold-5d", "ingest", "5D BOLD", "subject excluded", r"5D|4D", "run excluded",
         "keep", build=_ingest(lambda r: bf.write_image(_bold(r), (8, 8, 6, 60, 2),
                                                        zooms=(3, 3, 4, 2, 1)))),
    Case("ingest-too-few-volumes", "ingest", "20 volumes (`min_volumes` 50)", "subject excluded",
         r"fewer volumes", "run excluded", "keep",
         build=_ingest(lambda r: bf.add_bold(r, BAD, n_volumes=20))),
    Case("func-bold-3d", "func", "3D BOLD", "refused", r"4-D|4D", "refused", "keep",
         build=_func(data=lambda a: a[..., 0])),
    Case("func-too-few-volumes", "func", "8 volumes", "refused", r"too few", "refused, stating "
         "the minimum", "keep", build=_func(data=lambda a: a[..., :8])),
    Case("func-constant-bold", "func", "constant BOLD", "refused", r"no signal|constant",
         "refused", "keep", build=_func(data=lambda a: np.full_like(a, 100.0))),
    Case("func-bold-truncated", "func", "truncated BOLD `.nii.gz`", "refused",
         r"cannot read|truncat|damaged|corrupt", "refused", "keep", build=_func(_truncated)),
    Case("ingest-bold-truncated", "ingest", "truncated BOLD `.nii.gz`", "subject excluded",
         r"cannot read", "run excluded", "keep",
         build=_ingest(lambda r: bf.truncate_file(_bold(r), 0.6))),
    Case("ingest-bold-not-gzip", "ingest", "uncompressed NIfTI named `.nii.gz`",
         "subject excluded", r"not a gzip|cannot read|gzip", "run excluded", "keep",
         build=_ingest(lambda r: _bold(r).write_bytes(gzip.decompress(_bold(r).read_bytes())))),
    Case("anat-t1w-truncated", "anat", "truncated T1w `.nii.gz`", "subject excluded",
         r"not a readable NIfTI|damaged|corrupt|truncat", "subject excluded", "keep",
         build=_anat(_truncated)),
    Case("ingest-label-dotdot", "ingest", "subject folder `sub-..`", "subject excluded",
         r"not alphanumeric", "folder excluded, never read", "keep", build=_unsafe_label("..")),
    Case("ingest-label-unicode", "ingest", "subject folder `sub-0é`", "subject excluded",
         r"not alphanumeric", "folder excluded, never read", "keep", build=_unsafe_label("0é")),
    Case("ingest-participants-no-id", "ingest", "`participants.tsv` without `participant_id`",
         "refused", r"no participant_id column", "refused naming the file", "keep",
         build=_participants("subject\tage\nsub-01\t30\n")),
    Case("ingest-participants-commas", "ingest", "comma-separated `participants.tsv`",
         "refused", r"commas", "refused naming the file", "keep",
         build=_participants("participant_id,age\nsub-01,30\n")),
    Case("ingest-participants-ragged", "ingest", "`participants.tsv` with a ragged row",
         "refused", r"fields", "refused naming the file", "keep",
         build=_participants("participant_id\tage\nsub-01\t30\t7\n")),
    Case("ingest-participants-duplicate", "ingest", "`participants.tsv` listing a subject twice",
         "refused", r"duplicate", "refused naming the file and the subject", "keep",
         build=_participants("participant_id\tage\nsub-01\t30\nsub-02\t31\nsub-01\t32\n")),
    Case("ingest-participants-binary", "ingest", "binary `participants.tsv`", "refused",
         r"not UTF-8", "refused naming the file", "keep",
         build=_participants_bytes(b"\x1f\x8b\x08\x00\xff\xfe binary")),
    Case("ingest-mixed-sessions-runs", "ingest",
         "subjects without sessions beside one with sessions, runs and a session without a "
         "run index", "handled", "", "one row per run, each paired with its session's T1w",
         "keep", build=_ingest(_mixed_sessions)),
]
# fmt: on
# The outcome checks of the two handled ingest cases built with _ingest.
_HANDLED_CHECKS = {
    "ingest-slicetiming-wrong-count": _kept_without_slice_timing,
    "ingest-mixed-sessions-runs": _mixed_rows,
}  # fmt: skip
OUTCOMES = ("refused", "subject excluded", "reported", "handled")
STAGES = ("ingest", "func", "anat", "validate-config", "workflow")


# ------------------------------------------------------------------------ checks


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _files_under(folder: Path) -> set[Path]:
    """Every file and link under ``folder`` (links not followed)."""
    found: set[Path] = set()
    for top, dirs, files in os.walk(folder, followlinks=False):
        found.update(Path(top) / name for name in (*files, *dirs))
    return found


def _scans_lines(out: Path, root: Path, keep: Callable[[str], bool]) -> list[list[str]]:
    """scans.tsv rows (header first, every field as written) of the subjects ``keep``
    accepts, the dataset root replaced by ``<ROOT>``."""
    table = _table(out / "scans.tsv")
    rows = [list(table.columns)] + [
        [value.replace(str(root), "<ROOT>") for value in row]
        for row in table.itertuples(index=False)
        if keep(row.subject)
    ]
    return rows


_CLEAN: dict[str, list[list[str]]] = {}


def _clean_lines() -> list[list[str]]:
    """scans.tsv of the good subjects alone (computed once per session)."""
    if "lines" not in _CLEAN:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bh-hostile-clean-") as tmp:
            root = bf.make_dataset(Path(tmp) / "ds", subjects=GOOD)
            out = Path(tmp) / "out"
            with contextlib.redirect_stderr(io.StringIO()):
                assert cli.main(_ingest_argv(root, out)) == 0
            _CLEAN["lines"] = _scans_lines(out, root, lambda s: True)
            assert _table(out / "excluded.tsv").empty
    return _CLEAN["lines"]


def _others_as_clean(run: Run, result: Result) -> None:
    """Every subject but the bad one: scans.tsv rows identical to the clean ingest and no
    excluded.tsv row."""
    assert result.code == 0, result.text[-3000:]
    assert run.root is not None
    got = _scans_lines(run.out, run.root, lambda s: s != run.bad)
    assert got == _clean_lines(), got
    excluded = _table(run.out / "excluded.tsv")
    others = excluded[[not _is_bad(run, row) for row in excluded.to_dict("records")]]
    assert others.empty, others.to_dict("records")


def _is_bad(run: Run, row: dict[str, str]) -> bool:
    if row["subject"] == run.bad:
        return True
    bad_dir = str(run.bad_dir) if run.bad_dir is not None else None
    return bad_dir is not None and (row["path"] == bad_dir or row["path"].startswith(bad_dir + "/"))


def _bad_rows(run: Run) -> list[dict[str, str]]:
    return [r for r in _table(run.out / "excluded.tsv").to_dict("records") if _is_bad(run, r)]


def _check_refused(case: Case, run: Run, result: Result, before: bytes | None) -> None:
    codes = (1, 2) if case.stage == "validate-config" else (2,)
    assert result.code in codes, f"exit {result.code}, expected {codes}:\n{result.text[-3000:]}"
    assert any(name in result.text for name in run.named), (run.named, result.text[-3000:])
    assert re.search(case.problem, run.neutral(result.text)), (case.problem, result.text[-3000:])
    if run.out.is_file():
        assert run.out.read_bytes() == before, f"{run.out} was changed"
    elif run.out.exists():
        assert not _files_under(run.out), sorted(_files_under(run.out))


def _check_excluded(case: Case, run: Run, result: Result) -> None:
    assert result.code == 0, result.text[-3000:]
    if case.stage == "anat":
        from brainharmony.anat.derivatives import anat_paths

        paths = anat_paths(run.out, "01", None)
        assert all(p.exists() for p in paths.files()), [p for p in paths.files() if not p.exists()]
        for image in (paths.preproc, paths.mask, paths.model, paths.native_preproc):
            doc = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
            assert doc["Excluded"] is True, doc
            assert run.argv[run.argv.index("--t1w") + 1] in doc["ExclusionReason"], doc
            reason = run.neutral(doc["ExclusionReason"])
            assert re.search(case.problem, reason), reason
        return
    reasons = [run.neutral(r["reason"]) for r in _bad_rows(run)]
    assert any(re.search(case.problem, reason) for reason in reasons), (case.problem, reasons)
    scans = _table(run.out / "scans.tsv")
    assert run.bad not in set(scans["subject"]), scans.to_dict("records")
    _others_as_clean(run, result)


def _check_reported(case: Case, run: Run, result: Result) -> None:
    assert result.code == 0, result.text[-3000:]
    reasons = [run.neutral(r["reason"]) for r in _bad_rows(run)]
    texts = [*reasons, run.neutral(result.text)]
    assert any(re.search(case.problem, text) for text in texts), (case.problem, texts)
    scans = _table(run.out / "scans.tsv")
    assert run.bad in set(scans["subject"]), "the subject's valid files should still be used"
    _others_as_clean(run, result)


def _limit_memory() -> None:  # pragma: no cover - runs in the child
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run_isolated(argv: list[str], cwd: Path) -> Result:
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "brainharmony", *argv], cwd=cwd, env=env, timeout=TIMEOUT_S,
            capture_output=True, text=True, errors="replace", preexec_fn=_limit_memory,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-2000:]
        pytest.fail(f"no answer within {TIMEOUT_S} s (a hang): {argv}\n{tail!r}")
    return Result(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)


class _Hang(BaseException):
    """Raised by SIGALRM in an in-process case that ran past :data:`TIMEOUT_S` (a
    BaseException, so no ``except Exception`` of the code under test swallows it)."""


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def ring(signum: int, frame: Any) -> None:
        raise _Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str],
                    caplog: pytest.LogCaptureFixture) -> Result:  # fmt: skip
    capsys.readouterr()
    caplog.clear()
    start = time.monotonic()
    try:
        with _time_limit(TIMEOUT_S):
            code: int | None = cli.main(argv)
    except SystemExit as exc:  # argparse refusals
        code = exc.code if isinstance(exc.code, int) else 1
    except _Hang:
        pytest.fail(f"no answer within {TIMEOUT_S} s (a hang): {argv}")
    except Exception:  # a traceback: the failure this suite looks for
        captured = capsys.readouterr()
        pytest.fail(f"traceback instead of a message:\n{traceback.format_exc()}\n{captured.err}")
    captured = capsys.readouterr()
    return Result(code, captured.out + captured.err + caplog.text, time.monotonic() - start)


# ------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input(case: Case, tmp_path, capsys, caplog, monkeypatch, request):
    if case.stage == "workflow":
        path, _, name = case.test.partition("::")
        text = (REPO / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {re.escape(name)}\(", text, re.M), f"{case.test} is missing"
        return
    assert case.build is not None
    env = request.getfixturevalue("func_env") if case.stage == "func" else None
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run = case.build(tmp_path, env)
    run.tmp = tmp_path
    if case.id in _HANDLED_CHECKS:
        run.check = _HANDLED_CHECKS[case.id]
    before_bytes = run.out.read_bytes() if run.out.is_file() else None
    before = _files_under(tmp_path)
    with run.context() if run.context is not None else contextlib.nullcontext():
        result = _run_isolated(run.argv, cwd) if case.isolate else _run_in_process(
            run.argv, capsys, caplog)  # fmt: skip
    assert "Traceback" not in result.text, result.text[-4000:]
    # Nothing outside the output folder: no escaped file, no PWNED.
    stray = sorted(p for p in _files_under(tmp_path) - before
                   if run.out not in p.parents and p != run.out
                   and not (p in run.out.parents and p.is_dir()))  # fmt: skip
    assert stray == [], stray
    assert not (REPO / "PWNED").exists() and not (cwd / "PWNED").exists()
    if case.outcome == "refused":
        _check_refused(case, run, result, before_bytes)
    elif case.outcome == "subject excluded":
        _check_excluded(case, run, result)
    elif case.outcome == "reported":
        _check_reported(case, run, result)
    else:
        assert result.code == 0, result.text[-3000:]
        assert run.check is not None, f"{case.id}: a handled case needs its check"
        run.check(run, result)


def test_the_table_covers_every_issue_item_and_40_kinds():
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)
    for case in CASES:
        assert case.stage in STAGES and case.outcome in OUTCOMES, case.id
        assert case.outcome == "handled" or case.problem, case.id
        assert (case.build is None) == (case.stage == "workflow"), case.id
    items = {case.item for case in CASES}
    assert items == {"1", "2", "3", "4", "5", "6", "7", "keep"}, items


# ------------------------------------------------------------------- the doc table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown() -> str:
    """The docs/reliability.md table of every case (between the marker comments); a test
    named ``test_hostile_input[...]`` is in this file."""
    lines = [
        "| stage | input | outcome | behaviour | issue 23 | test |",
        "|---|---|---|---|---|---|",
    ]
    for case in CASES:
        test = f"`{case.test}`" if case.test else f"`test_hostile_input[{case.id}]`"
        item = "works before" if case.item == "keep" else f"item {case.item}"
        lines.append(
            f"| {case.stage} | {_cell(case.kind)} | {case.outcome} | {_cell(case.behaviour)} "
            f"| {item} | {test} |"
        )
    return "\n".join(lines) + "\n"


def _doc_section(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write_docs(path: Path = DOC) -> None:
    text = path.read_text(encoding="utf-8")
    if _doc_section(text) is None:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n{render_markdown()}{END}{tail}", encoding="utf-8")


def test_reliability_doc_holds_the_rendered_table():
    section = _doc_section(DOC.read_text(encoding="utf-8"))
    assert section is not None, f"{DOC}: no {BEGIN} / {END} markers"
    assert section == render_markdown(), (
        f"{DOC}: the hostile-inputs table is out of date; regenerate it with: {REGENERATE}"
    )


if __name__ == "__main__":  # pragma: no cover
    if "--write-docs" in sys.argv[1:]:
        write_docs()
        print(f"wrote the table ({len(CASES)} cases) into {DOC}")
    else:
        sys.stdout.write(render_markdown())
