"""Strict parsing of BIDS file names and the sidecar inheritance rule.

pybids is lenient about names: it reads ``sub-0é`` as subject ``0``, drops a
non-numeric ``run-x`` and takes the subject from the folder when the file name
disagrees. Ingestion must not guess, so every candidate file name is parsed here
first, strictly, and anything that does not follow the naming rules is reported
with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: A BIDS label: ASCII letters and digits only (so it cannot escape its folder).
LABEL_PATTERN = re.compile(r"[A-Za-z0-9]+")
#: A BIDS index (``run``, ``echo``): a non-negative integer.
INDEX_PATTERN = re.compile(r"[0-9]+")

#: Entity keys that take an index rather than a label.
INDEX_ENTITIES = frozenset({"run", "echo"})

#: Entities BIDS allows in a BOLD file name (``func/*_bold``), in BIDS order.
BOLD_ENTITIES = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "part")
#: Entities BIDS allows in a T1w file name (``anat/*_T1w``), in BIDS order.
T1W_ENTITIES = ("sub", "ses", "acq", "ce", "rec", "run", "part")

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


class BadName(ValueError):
    """A file or folder name that does not follow the BIDS naming rules."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class ParsedName:
    """The parts of a BIDS file name.

    Attributes
    ----------
    entities : dict of str to str
        Entity key (short form, e.g. ``"sub"``) to its value, in file-name order.
    suffix : str
        The part after the last entity, e.g. ``"bold"``.
    extension : str
        E.g. ``".nii.gz"``.
    """

    entities: dict[str, str]
    suffix: str
    extension: str

    def get(self, key: str) -> str | None:
        """The value of entity ``key``, or None when the name has none."""
        return self.entities.get(key)


def show(text: str) -> str:
    """Quote a label or name for a message, escaping control characters."""
    return repr(text)


def safe_text(text: str) -> str:
    """``text`` with undecodable bytes (surrogate escapes) made printable UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def label_problem(key: str, value: str) -> str | None:
    """Why ``value`` is not a valid value for entity ``key``, or None when it is.

    Parameters
    ----------
    key : str
        Short entity key (``"sub"``, ``"ses"``, ``"run"``...).
    value : str
        The value as it appears in the name.
    """
    if key in INDEX_ENTITIES:
        if not INDEX_PATTERN.fullmatch(value):
            return f"{key} index {show(value)} is not a non-negative integer"
        return None
    if not LABEL_PATTERN.fullmatch(value):
        return f"{key} label {show(value)} is not alphanumeric"
    return None


def split_extension(name: str) -> tuple[str, str]:
    """Split ``name`` into stem and extension (``.nii.gz`` counts as one)."""
    for ext in (*NIFTI_EXTENSIONS, ".tsv.gz", ".json", ".tsv"):
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    stem, dot, ext = name.rpartition(".")
    return (stem, f".{ext}") if dot else (name, "")


def parse_name(name: str, *, allowed: Iterable[str] | None = None) -> ParsedName:
    """Parse a BIDS file name strictly.

    Parameters
    ----------
    name : str
        A file name (no folders), e.g. ``sub-01_task-rest_run-1_bold.nii.gz``.
    allowed : iterable of str, optional
        Entity keys allowed in this kind of file; others are rejected.

    Returns
    -------
    ParsedName

    Raises
    ------
    BadName
        With a short reason: a part that is not ``key-value``, a repeated entity,
        an entity not allowed here, or a label that is not alphanumeric.
    """
    stem, extension = split_extension(name)
    parts = stem.split("_")
    suffix = parts.pop()
    if not suffix or not LABEL_PATTERN.fullmatch(suffix):
        raise BadName(f"file name suffix {show(suffix)} is not alphanumeric")
    allowed_set = set(allowed) if allowed is not None else None
    entities: dict[str, str] = {}
    for part in parts:
        key, dash, value = part.partition("-")
        if not dash or not key:
            raise BadName(f"malformed file name: {show(part)} is not a key-value entity")
        if not LABEL_PATTERN.fullmatch(key):
            raise BadName(f"entity key {show(key)} is not alphanumeric")
        if key in entities:
            raise BadName(f"entity {show(key)} appears twice in the file name")
        problem = label_problem(key, value)
        if problem is not None:
            raise BadName(problem)
        if allowed_set is not None and key not in allowed_set:
            raise BadName(f"entity {show(key)} is not allowed in a {suffix} file name")
        entities[key] = value
    return ParsedName(entities=entities, suffix=suffix, extension=extension)


def expected_folder(parsed: ParsedName, datatype: str) -> PurePosixPath:
    """The folder (relative to the dataset root) where a file with this name belongs."""
    folder = PurePosixPath(f"sub-{parsed.entities['sub']}")
    if "ses" in parsed.entities:
        folder = folder / f"ses-{parsed.entities['ses']}"
    return folder / datatype


def applicable_sidecars(
    data_path: Path,
    parsed: ParsedName,
    sidecars: Mapping[Path, ParsedName],
    root: Path,
) -> list[Path]:
    """JSON files whose metadata applies to ``data_path`` (BIDS inheritance principle).

    A sidecar applies when it has the same suffix, every entity in its name has the
    same value in the data file's name, and it lies in the data file's folder or a
    parent folder up to the dataset root.

    Parameters
    ----------
    data_path : Path
        The data file (absolute).
    parsed : ParsedName
        Its parsed name.
    sidecars : mapping of Path to ParsedName
        Every JSON file of the dataset (absolute paths) with its parsed name.
    root : Path
        Dataset root (absolute).

    Returns
    -------
    list of Path
        From the most general (closest to the root, fewest entities) to the most
        specific, which is the one whose values win.
    """
    folders = {data_path.parent, *[p for p in data_path.parents if p.is_relative_to(root)]}
    found = []
    for path, name in sidecars.items():
        if name.suffix != parsed.suffix or path.parent not in folders:
            continue
        if all(parsed.entities.get(key) == value for key, value in name.entities.items()):
            found.append(path)
    return sorted(found, key=lambda p: (len(p.parts), len(sidecars[p].entities), str(p)))


def natural_key(value: str) -> tuple[int, int, str]:
    """Sort key that orders ``n/a`` first, then numbers by value, then text."""
    if value == "n/a":
        return (0, 0, "")
    if value.isascii() and value.isdigit():
        return (1, int(value), value)
    return (2, 0, value)
