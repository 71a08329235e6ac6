"""Finding the files of a raw BIDS dataset: our own walk plus the pybids index.

The walk is the ground truth of what is on disk: every ``sub-*`` folder and every
``*_bold.nii[.gz]`` / ``*_T1w.nii[.gz]`` file under it is either used or reported.
pybids (``validate=False``) supplies the metadata with BIDS inheritance; a file it
did not index is reported rather than silently dropped.

pybids aborts indexing at the first JSON file it cannot parse, so every JSON file
is parsed here first and the broken ones are kept out of its index (the runs they
apply to are then rejected with the parse error).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from brainharmony.bids_checks import Rejected
from brainharmony.bids_names import (
    BadName,
    ParsedName,
    applicable_sidecars,
    label_problem,
    parse_name,
    show,
)
from brainharmony.io import InputDataError

NA = "n/a"
#: Folders at the dataset root that hold no raw data (pybids skips them as well).
NON_DATA_FOLDERS = frozenset({"code", "derivatives", "sourcedata", "stimuli", "models"})
#: File names that are candidates for ingestion.
IMAGE_NAME = re.compile(r".*_(bold|T1w)\.nii(\.gz)?")


class Exclusion(NamedTuple):
    """One left-out file or folder (labels as found; ``n/a`` when not applicable)."""

    subject: str
    session: str
    run: str
    path: Path
    reason: str


@dataclass(frozen=True)
class Candidate:
    """A BOLD or T1w file found in a subject folder, before any check."""

    path: Path
    subject: str
    session: str


@dataclass(frozen=True)
class JsonFile:
    """A JSON file of the dataset: its parsed name (None if not BIDS) and content or error."""

    parsed: ParsedName | None
    content: dict[str, Any] | None
    error: str | None


@dataclass
class BidsTree:
    """What the walk found.

    Attributes
    ----------
    root : Path
        Absolute dataset root.
    subjects : dict of str to Path
        Valid subject label -> its folder.
    candidates : dict of str to list of Candidate
        Subject label -> its image files, in name order.
    json_files : dict of Path to JsonFile
        Every JSON file that pybids would read.
    json_by_folder : dict of Path to list of Path
        The same files grouped by folder (for inheritance look-ups).
    rejected : list of Exclusion
        Subject or session folders whose label is invalid (their content is skipped).
    """

    root: Path
    subjects: dict[str, Path] = field(default_factory=dict)
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    json_files: dict[Path, JsonFile] = field(default_factory=dict)
    rejected: list[Exclusion] = field(default_factory=list)
    json_by_folder: dict[Path, list[Path]] = field(default_factory=dict)

    def broken_json(self) -> list[Path]:
        """JSON files that cannot be parsed (or are not a JSON object)."""
        return [path for path, item in self.json_files.items() if item.error is not None]

    def sidecars_for(self, path: Path, parsed: ParsedName) -> list[tuple[Path, dict[str, Any]]]:
        """The sidecars that apply to ``path`` with their content, most general first.

        Raises
        ------
        Rejected
            When one of them cannot be parsed.
        """
        folders = [path.parent, *[p for p in path.parents if p.is_relative_to(self.root)]]
        nearby = {}
        for folder in folders:
            for p in self.json_by_folder.get(folder, ()):
                parsed_json = self.json_files[p].parsed
                if parsed_json is not None:
                    nearby[p] = parsed_json
        found = applicable_sidecars(path, parsed, nearby, self.root)
        for sidecar in found:
            error = self.json_files[sidecar].error
            if error is not None:
                raise Rejected(f"cannot parse sidecar {sidecar.name}: {error}")
        return [(p, self.json_files[p].content or {}) for p in found]


def printable(label: str) -> str:
    """A label as it can be written in a table cell (control characters escaped)."""
    return show(label)[1:-1]


def walk_dataset(root: Path) -> BidsTree:
    """Walk a BIDS dataset: subject/session folders, image candidates, JSON files.

    Parameters
    ----------
    root : Path
        Absolute dataset root.

    Returns
    -------
    BidsTree
        Everything is sorted by name, so the result does not depend on the
        file system's listing order.
    """
    tree = BidsTree(root=root)
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name in NON_DATA_FOLDERS:
            continue
        path = Path(entry.path)
        if entry.is_file() and entry.name.endswith(".json"):
            _add_json(tree, path)
        elif entry.is_dir() and entry.name.startswith("sub-"):
            _walk_subject(tree, path)
        elif entry.is_dir():
            _add_json_below(tree, path)
    return tree


def _walk_subject(tree: BidsTree, folder: Path) -> None:
    label = folder.name[4:]
    problem = label_problem("sub", label)
    if problem is not None:
        tree.rejected.append(Exclusion(printable(label), NA, NA, folder, problem))
        return
    tree.subjects[label] = folder
    found: list[Candidate] = []
    for here_text, dirs, files in os.walk(folder):
        here = Path(here_text)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if here == folder:
            for name in [d for d in dirs if d.startswith("ses-")]:
                problem = label_problem("ses", name[4:])
                if problem is not None:
                    tree.rejected.append(
                        Exclusion(label, printable(name[4:]), NA, here / name, problem)
                    )
                    dirs.remove(name)
        parts = here.relative_to(folder).parts
        session = parts[0][4:] if parts and parts[0].startswith("ses-") else NA
        for name in sorted(f for f in files if not f.startswith(".")):
            if name.endswith(".json"):
                _add_json(tree, here / name)
            elif IMAGE_NAME.fullmatch(name):
                found.append(Candidate(here / name, label, session))
    tree.candidates[label] = sorted(found, key=lambda c: str(c.path))


def _add_json_below(tree: BidsTree, folder: Path) -> None:
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".json") and not name.startswith("."):
                _add_json(tree, Path(here) / name)


def _add_json(tree: BidsTree, path: Path) -> None:
    tree.json_by_folder.setdefault(path.parent, []).append(path)
    try:
        parsed: ParsedName | None = parse_name(path.name)
    except BadName:
        parsed = None
    try:
        loaded = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        tree.json_files[path] = JsonFile(parsed, None, f"{type(err).__name__}: {err}")
        return
    if not isinstance(loaded, dict):
        error = f"top level is a JSON {type(loaded).__name__}, not an object"
        tree.json_files[path] = JsonFile(parsed, None, error)
        return
    tree.json_files[path] = JsonFile(parsed, loaded, None)


def index_with_pybids(root: Path, skip: Sequence[Path], context: str) -> Any:
    """The pybids layout of ``root`` (no validation), leaving out the paths in ``skip``.

    Parameters
    ----------
    root : Path
        Absolute dataset root.
    skip : sequence of Path
        Files or folders pybids must not index (broken JSON, rejected folders).
    context : str
        Prefix of the error message (e.g. ``"dataset 'demoA'"``).

    Raises
    ------
    InputDataError
        When pybids fails on the dataset anyway.
    """
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    ignore: list[Any] = [re.compile(r"^/(code|models|sourcedata|stimuli)(/|$)")]
    for path in skip:
        relative = path.relative_to(root).as_posix()
        ignore.append(re.compile("^/" + re.escape(relative) + "(/|$)"))
    try:
        return BIDSLayout(
            root, validate=False, indexer=BIDSLayoutIndexer(validate=False, ignore=ignore)
        )
    except Exception as err:  # pybids raises many types on malformed datasets
        raise InputDataError(
            root, f"{context}: pybids could not index it: {type(err).__name__}: {err}"
        ) from err


def indexed_files(layout: Any) -> set[str]:
    """Absolute paths of every file pybids indexed."""
    return {os.path.abspath(f) for f in layout.get(return_type="filename")}


def pybids_metadata(layout: Any, path: Path) -> dict[str, Any]:
    """Merged sidecar metadata of ``path`` (pybids ``get_metadata``); :class:`Rejected` on error."""
    try:
        return dict(layout.get_metadata(str(path)))
    except Exception as err:  # pybids raises several types
        raise Rejected(f"pybids could not read metadata: {type(err).__name__}: {err}") from err
