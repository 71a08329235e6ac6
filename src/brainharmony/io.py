"""Atomic file writers and provenance sidecars.

Every derivative the package writes goes through :func:`atomic_path`: the data is
written to a temporary file in the destination folder and moved into place with
:func:`os.replace` only once it is complete, so an interrupted job never leaves a
half-written file behind under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from brainharmony._version import __version__

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class InputDataError(ValueError):
    """An input file is unusable. The message names the file and the problem."""

    def __init__(self, path: PathLike | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")


def _suffixes(path: Path) -> str:
    name = path.name
    for double in (".nii.gz", ".tsv.gz", ".csv.gz", ".tar.gz"):
        if name.endswith(double):
            return double
    return path.suffix


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place on success.

    The temporary file keeps the destination's extension so that writers which
    infer the format from the name (nibabel, numpy, matplotlib) behave the same.
    On any exception the temporary file is removed and ``path`` is untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{dest.name}.", suffix=f".tmp{_suffixes(dest)}", dir=dest.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the result the mode a plain open() would (umask).
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, dest)
    except BaseException as err:
        storage = _storage_error(err, tmp, dest)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if storage is not None:
            raise storage from err
        raise


#: Write failures that mean "out of room": no space, quota, file-size limit.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _storage_error(err: BaseException, tmp: Path, dest: Path) -> OSError | None:
    """An ``OSError`` with errno ENOSPC/EFBIG when ``err`` was a write that ran out of room.

    Some writers report a short write without an errno (numpy's ``tofile``: "N requested
    and M written"; torch's zip writer: a ``RuntimeError``). Checked before the temporary
    file is removed: a filesystem with (almost) no free block left, or a temporary file
    that reached the process's file-size limit.
    """
    if isinstance(err, OSError) and err.errno is not None:
        if err.errno in STORAGE_ERRNOS:
            return OSError(err.errno, os.strerror(err.errno), str(dest))  # not the temp name
        return None
    if not isinstance(err, OSError | RuntimeError):
        return None
    try:
        size = tmp.stat().st_size
        fs = os.statvfs(tmp.parent)
    except OSError:
        return None
    if fs.f_bavail * fs.f_frsize < 64 * 1024:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and size >= soft - 64 * 1024:
        return OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(dest))
    return None


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


#: Largest JSON file read (a BIDS sidecar is a few kilobytes).
MAX_JSON_BYTES = 16 * 1024**2
#: Deepest nesting accepted in a JSON file (BIDS sidecars are about 3 deep).
MAX_JSON_DEPTH = 100
#: Longest exception message kept in a reason (the rest is cut).
MAX_REASON_CHARS = 500


class ReadRefused(Exception):
    """A file ingest will not read: not a regular file, or over its size cap."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def special_kind(mode: int) -> str | None:
    for test, name in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / 1024**2:g} MiB" if n_bytes >= 1024**2 else f"{n_bytes} bytes"


def read_capped(path: PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    The file is opened without blocking (a named pipe cannot hang the call) and
    checked on the open descriptor, and at most ``limit + 1`` bytes are read, so a
    link to ``/dev/zero`` or a file that grows while read cannot exhaust memory.

    Raises
    ------
    ReadRefused
        For a named pipe, device, socket or folder (the reason names the kind), or
        a file over ``limit`` bytes.
    OSError
        When the file cannot be opened or read.
    """
    kind = special_kind(os.stat(path).st_mode)
    if kind is not None:
        raise ReadRefused(f"{kind}, not a regular file; not read")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        kind = special_kind(info.st_mode)
        if kind is not None:
            raise ReadRefused(f"{kind}, not a regular file; not read")
        if info.st_size > limit:
            raise ReadRefused(
                f"{_size_text(info.st_size)}, over the {_size_text(limit)} limit; not read"
            )
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1024**2))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ReadRefused(f"more than {_size_text(limit)} (the limit); not read")
    return data


def loads_json(data: bytes) -> Any:
    """Parse JSON bytes strictly enough that no later step can fail on the value.

    Raises
    ------
    ValueError
        With a readable reason: invalid UTF-8, a syntax error, an integer too large
        to be a number, or nesting deeper than :data:`MAX_JSON_DEPTH`.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"UnicodeDecodeError: {err}") from err
    try:
        value = json.loads(text, parse_int=_json_int)
    except _JsonProblem as err:
        raise ValueError(str(err)) from err
    except json.JSONDecodeError as err:
        raise ValueError(f"JSONDecodeError: {err}") from err
    except RecursionError as err:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from err
    except ValueError as err:  # e.g. Python's limit on integer digits
        raise ValueError(f"ValueError: {cut_reason(str(err))}") from err
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    return value


class _JsonProblem(ValueError):
    pass


def _json_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > 300:  # float() of such an integer overflows, or int() refuses it
        raise _JsonProblem(f"an integer with {digits} digits, too large to be a number")
    return int(text)


def _json_depth(value: Any) -> int:
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def cut_reason(text: str) -> str:
    """``text`` cut to :data:`MAX_REASON_CHARS` (a reason stays readable)."""
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "..."


def read_json(path: PathLike, *, context: str | None = None) -> dict[str, Any]:
    """A JSON object from a file, read with :func:`read_capped` and :func:`loads_json`.

    Raises
    ------
    InputDataError
        Naming the file: not a regular file, over :data:`MAX_JSON_BYTES`, not valid JSON
        (syntax, UTF-8, an integer too large, nesting too deep) or not an object; the
        reason is prefixed with ``context`` when given (e.g. "cannot read JSON sidecar").
    OSError
        When the file cannot be opened (e.g. it does not exist).
    """
    path = Path(path)
    prefix = f"{context}: " if context else ""
    try:
        doc = loads_json(read_capped(path, MAX_JSON_BYTES))
    except ReadRefused as err:
        raise InputDataError(path, f"{prefix}{err.reason}") from None
    except ValueError as err:
        raise InputDataError(path, f"{prefix}not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise InputDataError(path, f"{prefix}expected a JSON object")
    return doc


def write_json(path: PathLike, data: Mapping[str, Any]) -> Path:
    """Write a JSON document atomically with sorted keys and a trailing newline."""
    text = json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"
    return write_text(path, text)


def write_tsv(path: PathLike, frame: Any, **kwargs: Any) -> Path:
    """Write a pandas DataFrame as a BIDS-style TSV ('n/a' for missing) atomically."""
    kwargs.setdefault("index", False)
    kwargs.setdefault("na_rep", "n/a")
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", lineterminator="\n", **kwargs)
    return Path(path)


def write_npy(path: PathLike, array: np.ndarray) -> Path:
    """Save a numpy array atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    return Path(path)


def write_nifti(
    path: PathLike, image: Any, compresslevel: int = 6, *, huffman_only: bool = False
) -> Path:
    """Save a nibabel image atomically (gzip output is byte-reproducible).

    ``compresslevel`` (1-9) applies to ``.nii.gz``: 1 is about 4x faster than the default 6
    on noisy float/int16 images and only a few percent larger (used for large derivatives
    and the demo data). ``huffman_only`` skips the search for repeated strings
    (zlib's ``Z_HUFFMAN_ONLY`` strategy): about twice as fast again as level 1 and as
    small on images dominated by noise, where that search finds little; a standard
    gzip stream all the same.
    """
    import gzip

    import nibabel as nib

    dest = Path(path)
    with atomic_path(dest) as tmp:
        if dest.name.endswith(".gz"):
            # nibabel's gzip writer stores the file name and mtime in the gzip header;
            # write the raw bytes ourselves with mtime=0 so reruns are byte-identical.
            raw = image.to_bytes() if hasattr(image, "to_bytes") else None
            if raw is None:
                raise TypeError(f"cannot serialise image of type {type(image).__name__}")
            if huffman_only:
                import zlib

                # wbits 31: gzip container; zlib writes mtime 0 and no file name.
                packer = zlib.compressobj(compresslevel, zlib.DEFLATED, 31, 8, zlib.Z_HUFFMAN_ONLY)
                with open(tmp, "wb") as handle:
                    handle.write(packer.compress(raw))
                    handle.write(packer.flush())
            else:
                with (
                    open(tmp, "wb") as handle,
                    gzip.GzipFile(
                        filename="",
                        mode="wb",
                        fileobj=handle,
                        mtime=0,
                        compresslevel=compresslevel,
                    ) as gz,
                ):
                    gz.write(raw)
        else:
            nib.save(image, tmp)
    return dest


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def config_digest(config: Mapping[str, Any]) -> str:
    """Stable digest of a (JSON-serialisable) configuration mapping."""
    text = json.dumps(config, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def git_sha(start: PathLike | None = None) -> str | None:
    """The git commit of the source tree, or None when not in a git checkout."""
    here = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(
    *,
    step: str,
    inputs: Sequence[PathLike] = (),
    parameters: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    timestamp: bool = False,
) -> dict[str, Any]:
    """Provenance block for a derivative's JSON sidecar.

    Parameters
    ----------
    step : str
        Name of the processing step that produced the file.
    inputs : sequence of path-like
        Files read to produce it (recorded as given, so relative paths stay relative).
    parameters : mapping, optional
        Parameters of the step that changed its output.
    config : mapping, optional
        The configuration section the step used; only its digest is stored.
    timestamp : bool
        Record the wall-clock time. Off by default so that reruns are byte-identical.
    """
    block: dict[str, Any] = {
        "Step": step,
        "Software": "brainharmony",
        "Version": __version__,
        "GitSHA": git_sha(),
        "Python": platform.python_version(),
        "Inputs": [str(p) for p in inputs],
    }
    if parameters is not None:
        block["Parameters"] = dict(parameters)
    if config is not None:
        block["ConfigDigest"] = config_digest(config)
    if timestamp:
        block["Created"] = datetime.now(UTC).isoformat(timespec="seconds")
    return block


def sidecar_path(path: PathLike) -> Path:
    """The JSON sidecar path for a data file (``x.nii.gz`` -> ``x.json``)."""
    p = Path(path)
    return p.with_name(p.name[: -len(_suffixes(p))] + ".json")


def read_resource(path: PathLike, what: str, hint: str) -> tuple[Any, np.ndarray, dict]:
    """Load a NIfTI resource file and its JSON sidecar (files the workflow wrote once).

    Parameters
    ----------
    path : path-like
        The ``.nii.gz``; its sidecar is :func:`sidecar_path`.
    what : str
        What the file holds, for messages ("tissue masks", ...).
    hint : str
        How to make the file, for the message when it is missing.

    Returns
    -------
    image : nibabel.Nifti1Image
    data : ndarray
        The voxel data (as stored).
    meta : dict
        The sidecar.

    Raises
    ------
    InputDataError
        A missing file (naming it and ``hint``) or one that cannot be read.
    """
    import nibabel as nib

    path = Path(path)
    meta_path = sidecar_path(path)
    for p in (path, meta_path):
        if not p.is_file():
            raise InputDataError(p, f"{what} file not found ({hint})")
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
        meta = json.loads(meta_path.read_text())
    except Exception as err:  # nibabel and zlib raise many types for broken files
        raise InputDataError(path, f"cannot read the {what}: {err}") from err
    return image, data, meta
