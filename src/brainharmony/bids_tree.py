"""Finding the files of a raw BIDS dataset: our own walk plus the pybids index.

The walk is the ground truth of what is on disk: every ``sub-*`` folder and every
``*_bold.nii[.gz]`` / ``*_T1w.nii[.gz]`` file under it is either used or reported.
pybids (``validate=False``) supplies the metadata with BIDS inheritance; a file it
did not index is reported rather than silently dropped.

pybids aborts indexing at the first JSON file it cannot parse, so every JSON file
is parsed here first and the broken ones are kept out of its index (the runs they
apply to are then rejected with the parse error).

What is read and walked is bounded, because a dataset may be hostile or damaged:

- A symbolic link is followed only when its target lies inside the dataset (after
  resolving every link) and, for a folder, when that folder has not been walked
  already (no loops, no second walk). Other links are reported (a BOLD or T1w as an
  exclusion, a sidecar as unreadable, anything else as a warning) and kept out of the
  pybids index, which would otherwise follow them without end.
- A JSON file is read only when it is a regular file of at most
  :data:`MAX_JSON_BYTES`; named pipes and devices are refused without being opened
  for reading. A JSON file with an integer too large for a number, nesting deeper than
  :data:`MAX_JSON_DEPTH`, or invalid UTF-8 is broken, like one with a syntax error.
- An error while walking one subject's folder (an unreadable folder, anything else)
  is that subject's failure (:attr:`BidsTree.failed`), not the dataset's.
"""

from __future__ import annotations

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
from brainharmony.io import (
    MAX_JSON_BYTES,
    InputDataError,
    PathLike,
    ReadRefused,
    cut_reason,
    loads_json,
    read_capped,
    special_kind,
)

NA = "n/a"
#: Folders at the dataset root that hold no raw data (pybids skips them as well).
NON_DATA_FOLDERS = frozenset({"code", "derivatives", "sourcedata", "stimuli", "models"})
#: File names that are candidates for ingestion.
IMAGE_NAME = re.compile(r".*_(bold|T1w)\.nii(\.gz)?")
#: Largest table (``participants.tsv``) ingest reads: room for millions of rows.
MAX_TABLE_BYTES = 1024**3


def link_problem(path: PathLike, real_root: Path) -> str | None:
    """Why the symbolic link ``path`` must not be followed, or None.

    None when ``path`` is not a link or its fully resolved target lies inside
    ``real_root`` (the dataset root with its own links resolved).
    """
    if not os.path.islink(path):
        return None
    try:
        shown = os.readlink(path)
    except OSError:
        shown = "?"
    try:
        target = Path(path).resolve(strict=True)
    except FileNotFoundError:
        return f"broken symbolic link (its target {shown} does not exist)"
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13 on a loop
        return f"symbolic link loop ({shown} leads back to itself)"
    if not target.is_relative_to(real_root):
        return f"symbolic link to {target}, outside the dataset; not followed"
    return None


def error_text(err: BaseException) -> str:
    """``Type: message`` of an exception, cut to :data:`MAX_REASON_CHARS`."""
    return cut_reason(f"{type(err).__name__}: {err}")


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
    #: Why the file is not opened (a link not followed, not a regular file), or None.
    problem: str | None = None


@dataclass(frozen=True)
class JsonFile:
    """A JSON file of the dataset: its parsed name (None if not BIDS) and content or error."""

    parsed: ParsedName | None
    content: dict[str, Any] | None
    error: str | None
    #: True when the file was not even read (link out of the dataset, special file,
    #: over the size cap); False for a parse error.
    refused: bool = False


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
        Subject or session folders whose label is invalid (their content is skipped),
        and images or folders behind a symbolic link that is not followed.
    failed : dict of str to str
        Subject label -> why its folder could not be walked (the subject is left
        out with that reason; it is still in ``subjects``).
    unfollowed : list of Path
        Symbolic links not followed (out of the dataset, broken, loops).
    warnings : list of str
        Problems outside subject folders, and links not followed that no run needs.
    """

    root: Path
    subjects: dict[str, Path] = field(default_factory=dict)
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    json_files: dict[Path, JsonFile] = field(default_factory=dict)
    rejected: list[Exclusion] = field(default_factory=list)
    json_by_folder: dict[Path, list[Path]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    unfollowed: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    real_root: Path = field(init=False)
    _walked: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.real_root = Path(os.path.realpath(self.root))

    def broken_json(self) -> list[Path]:
        """JSON files that cannot be parsed (or are not a JSON object)."""
        return [path for path, item in self.json_files.items() if item.error is not None]

    def pybids_skip(self) -> list[Path]:
        """Everything pybids must not index: broken JSON, rejected files and folders,
        links not followed and the folders of subjects that failed."""
        skip = [
            *self.broken_json(),
            *(e.path for e in self.rejected),
            *(c.path for found in self.candidates.values() for c in found if c.problem),
            *self.unfollowed,
            *(self.subjects[label] for label in self.failed),
        ]
        return list(dict.fromkeys(skip))

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
            item = self.json_files[sidecar]
            if item.error is not None:
                verb = "cannot read" if item.refused else "cannot parse"
                raise Rejected(f"{verb} sidecar {sidecar.name}: {item.error}")
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

    Raises
    ------
    InputDataError
        When the dataset folder itself cannot be listed.
    """
    tree = BidsTree(root=root)
    tree._walked.add(str(tree.real_root))
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as err:
        raise InputDataError(root, f"cannot list the dataset folder: {error_text(err)}") from err
    for entry in entries:
        if entry.name.startswith(".") or entry.name in NON_DATA_FOLDERS:
            continue
        path = Path(entry.path)
        is_dir = _is_dir(entry)
        if entry.name.startswith("sub-") and (is_dir or entry.is_symlink()):
            _walk_subject(tree, path)
        elif entry.name.endswith(".json") and not is_dir:
            _add_json(tree, path)
        elif is_dir:
            _add_json_below(tree, path)
        else:
            _note_bad_link(tree, path)
    return tree


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _walk_subject(tree: BidsTree, folder: Path) -> None:
    label = folder.name[4:]
    problem = label_problem("sub", label)
    if problem is not None:
        tree.rejected.append(Exclusion(printable(label), NA, NA, folder, problem))
        return
    tree.subjects[label] = folder
    try:
        found = _subject_files(tree, label, folder)
    except _WalkFailed as err:
        tree.failed[label] = str(err)
        found = []
    except Exception as err:  # one subject's folder must not stop the dataset
        tree.failed[label] = f"error while walking the subject folder: {error_text(err)}"
        found = []
    tree.candidates[label] = sorted(found, key=lambda c: str(c.path))


class _WalkFailed(Exception):
    pass


def _subject_files(tree: BidsTree, label: str, folder: Path) -> list[Candidate]:
    problem = link_problem(folder, tree.real_root) if folder.is_symlink() else None
    if problem is None and folder.is_symlink():
        problem = _dir_seen(tree, folder)
    if problem is not None:
        tree.unfollowed.append(folder)
        raise _WalkFailed(f"subject folder is a {problem}")
    if not folder.is_symlink():
        tree._walked.add(os.path.realpath(folder))
    errors: list[OSError] = []
    found: list[Candidate] = []
    for here_text, dirs, files in os.walk(folder, onerror=errors.append, followlinks=True):
        if errors:
            break
        here = Path(here_text)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        parts = here.relative_to(folder).parts
        session = parts[0][4:] if parts and parts[0].startswith("ses-") else NA
        if here == folder:
            for name in [d for d in dirs if d.startswith("ses-")]:
                problem = label_problem("ses", name[4:])
                if problem is not None:
                    tree.rejected.append(
                        Exclusion(label, printable(name[4:]), NA, here / name, problem)
                    )
                    dirs.remove(name)
        for name in list(dirs):
            problem = _follow_problem(tree, here / name)
            if problem is not None:
                dirs.remove(name)
                tree.unfollowed.append(here / name)
                at_top = here == folder and name.startswith("ses-")
                where = printable(name[4:]) if at_top else session
                tree.rejected.append(Exclusion(label, where, NA, here / name, problem))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = here / name
            if name.endswith(".json"):
                _add_json(tree, path)
            elif IMAGE_NAME.fullmatch(name):
                problem = link_problem(path, tree.real_root) or _not_regular(path)
                if problem is not None:
                    tree.unfollowed.append(path)
                found.append(Candidate(path, label, session, problem))
            else:
                _note_bad_link(tree, path)
    if errors:
        err = errors[0]
        where = Path(err.filename) if err.filename else folder
        shown = where.relative_to(tree.root) if where.is_relative_to(tree.root) else where
        raise _WalkFailed(f"cannot read folder {shown}: {error_text(err)}")
    return found


def _follow_problem(tree: BidsTree, path: Path) -> str | None:
    """Why the folder ``path`` is not walked (a bad link, or already walked), or None."""
    if not os.path.islink(path):
        tree._walked.add(os.path.realpath(path))
        return None
    return link_problem(path, tree.real_root) or _dir_seen(tree, path)


def _dir_seen(tree: BidsTree, path: Path) -> str | None:
    """Why the in-dataset folder link ``path`` is not followed (its target is one of
    its own parents, or a folder walked anyway), or None (and the target is marked)."""
    real = os.path.realpath(path)
    if real in tree._walked:
        shown = Path(real).relative_to(tree.real_root).as_posix()
        shown = "the dataset root" if shown == "." else shown + "/"
        parent = os.path.realpath(path.parent)
        if parent == real or parent.startswith(real.rstrip(os.sep) + os.sep):
            return f"symbolic link loop: points back to {shown}, which contains it; not followed"
        return f"symbolic link to {shown}, a folder walked anyway; not followed"
    tree._walked.add(real)
    return None


def _not_regular(path: Path) -> str | None:
    try:
        kind = special_kind(os.stat(path).st_mode)
    except OSError as err:
        return f"cannot read: {error_text(err)}"
    return None if kind is None else f"{kind}, not a regular file; not read"


def _note_bad_link(tree: BidsTree, path: Path) -> None:
    """Warn about a link not followed in a file no run needs, and keep it from pybids."""
    problem = link_problem(path, tree.real_root) if os.path.islink(path) else None
    if problem is not None:
        tree.unfollowed.append(path)
        tree.warnings.append(f"{path.relative_to(tree.root).as_posix()}: {problem}")


def _add_json_below(tree: BidsTree, folder: Path) -> None:
    problem = _follow_problem(tree, folder)
    if problem is not None:
        tree.unfollowed.append(folder)
        tree.warnings.append(f"{folder.relative_to(tree.root).as_posix()}/: {problem}")
        return
    errors: list[OSError] = []
    for here_text, dirs, files in os.walk(folder, onerror=errors.append, followlinks=True):
        here = Path(here_text)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in list(dirs):
            problem = _follow_problem(tree, here / name)
            if problem is not None:
                dirs.remove(name)
                tree.unfollowed.append(here / name)
                shown = (here / name).relative_to(tree.root).as_posix()
                tree.warnings.append(f"{shown}/: {problem}")
        for name in sorted(files):
            if name.startswith("."):
                continue
            if name.endswith(".json"):
                _add_json(tree, here / name)
            else:
                _note_bad_link(tree, here / name)
    for err in errors:
        where = Path(err.filename) if err.filename else folder
        tree.unfollowed.append(where)
        tree.warnings.append(f"cannot read folder {where}: {error_text(err)}; skipped")


def _add_json(tree: BidsTree, path: Path) -> None:
    tree.json_by_folder.setdefault(path.parent, []).append(path)
    try:
        parsed: ParsedName | None = parse_name(path.name)
    except BadName:
        parsed = None
    problem = link_problem(path, tree.real_root)
    if problem is not None:
        tree.json_files[path] = JsonFile(parsed, None, problem, refused=True)
        return
    try:
        data = read_capped(path, MAX_JSON_BYTES)
    except ReadRefused as err:
        tree.json_files[path] = JsonFile(parsed, None, err.reason, refused=True)
        return
    except OSError as err:
        tree.json_files[path] = JsonFile(parsed, None, error_text(err), refused=True)
        return
    try:
        loaded = loads_json(data)
    except ValueError as err:
        tree.json_files[path] = JsonFile(parsed, None, str(err))
        return
    if not isinstance(loaded, dict):
        error = f"top level is a JSON {type(loaded).__name__}, not an object"
        tree.json_files[path] = JsonFile(parsed, None, error)
        return
    tree.json_files[path] = JsonFile(parsed, loaded, None)


class _PathsBelow:
    """A pybids ignore pattern (anything with ``search``) matching a set of paths and
    everything below them, in time proportional to the path depth: one regex per
    skipped path made indexing quadratic for a dataset with thousands of them (e.g.
    a DataLad clone whose annexed files were not fetched)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = frozenset(paths)

    def search(self, path: str) -> bool:
        if not self.paths:
            return False
        parts = path.split("/")
        return any("/".join(parts[:n]) in self.paths for n in range(2, len(parts) + 1))


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

    relative = ["/" + p.relative_to(root).as_posix() for p in skip if p.is_relative_to(root)]
    ignore: list[Any] = [
        re.compile(r"^/(code|models|sourcedata|stimuli)(/|$)"),
        _PathsBelow(relative),
    ]
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
