"""BIDS URIs and the ``dataset_description.json`` of a derivative folder (BIDS-Derivatives 1.x).

A derivative file's sidecar names the files it was made from in ``Sources``, as BIDS
URIs: ``bids:raw:sub-01/anat/sub-01_T1w.nii.gz`` is a file of the dataset that the
derivative folder's ``dataset_description.json`` maps to the name ``raw`` in
``DatasetLinks``; ``bids::sub-01/anat/...`` (empty name) is a file of the derivative
folder itself. Paths are compared as written (made absolute, ``..`` folded, symbolic
links not followed), so a file that is a link into an annex keeps its dataset path.

Every job of a stage writes its dataset's description with identical bytes
(:func:`write_dataset_description`: deterministic content, atomic replace), so parallel
jobs cannot leave a partial or mixed file and no rule owns it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit
from urllib.request import pathname2url, url2pathname

from brainharmony._version import __version__
from brainharmony.io import PathLike, write_json, write_text

logger = logging.getLogger(__name__)

#: The name of the raw BIDS dataset in BIDS URIs (``bids:raw:...``).
RAW = "raw"
#: The BIDS version the derivative folders follow.
BIDS_VERSION = "1.10.0"
#: A dataset name in a BIDS URI: letters and digits (empty: this dataset).
_NAME = re.compile(r"[A-Za-z0-9]*")
#: Folder names of a BIDS file's place: ``sub-<label>[/ses-<label>]/<datatype>``.
_SUB = re.compile(r"sub-[A-Za-z0-9]+")
_SES = re.compile(r"ses-[A-Za-z0-9]+")
_DATATYPE = re.compile(r"[a-z]+")


class BidsUriError(ValueError):
    """A path that has no BIDS URI in the given dataset, or a URI that cannot be resolved."""


def _absolute(path: PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(path)))


def bids_uri(path: PathLike, root: PathLike, dataset: str = "") -> str:
    """The BIDS URI of ``path``, a file inside the dataset at ``root``.

    Parameters
    ----------
    path : path-like
        The file.
    root : path-like
        The root folder of the dataset holding it.
    dataset : str
        The dataset's name in ``DatasetLinks`` (e.g. :data:`RAW`); empty: the derivative
        dataset the URI is written in (``bids::...``).

    Returns
    -------
    str
        ``bids:<dataset>:<path relative to root>`` (POSIX separators; characters outside
        BIDS names percent-encoded).

    Raises
    ------
    BidsUriError
        ``path`` is not inside ``root`` (or is ``root`` itself), or ``dataset`` is not
        alphanumeric.
    """
    if not _NAME.fullmatch(dataset):
        raise BidsUriError(f"dataset name must be letters and digits, got {dataset!r}")
    file, base = _absolute(path), _absolute(root)
    if file == base or base not in file.parents:
        raise BidsUriError(
            f"{path} is not inside the dataset at {root}: it has no BIDS URI there "
            f"(dataset {dataset or '(this one)'!r})"
        )
    rel = PurePosixPath(*file.relative_to(base).parts).as_posix()
    return f"bids:{dataset}:{quote(rel, safe='/')}"


def parse_bids_uri(uri: str) -> tuple[str, str]:
    """Split a BIDS URI into its dataset name and its relative path.

    Raises
    ------
    BidsUriError
        Not ``bids:<name>:<relative path>``, or a path that leaves the dataset.
    """
    match = re.fullmatch(r"bids:([A-Za-z0-9]*):(.+)", uri)
    if match is None:
        raise BidsUriError(f"not a BIDS URI (bids:<dataset>:<path>): {uri!r}")
    name, rel = match.group(1), unquote(match.group(2))
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or ".." in parts:
        raise BidsUriError(f"a BIDS URI's path must stay inside its dataset: {uri!r}")
    return name, rel


def dataset_links(root: PathLike) -> dict[str, Path]:
    """``DatasetLinks`` of the dataset at ``root``, each resolved to a local folder.

    Relative links are relative to ``root``; ``file:`` URIs give their path.

    Raises
    ------
    BidsUriError
        No ``dataset_description.json`` at ``root``, or a link that is not local.
    """
    description = Path(root) / "dataset_description.json"
    if not description.is_file():
        raise BidsUriError(f"{description} not found: cannot resolve its BIDS URIs")
    links = json.loads(description.read_text(encoding="utf-8")).get("DatasetLinks", {})
    out = {}
    for name, value in links.items():
        parts = urlsplit(value)
        if parts.scheme == "file":
            out[name] = Path(url2pathname(parts.path))
        elif parts.scheme:
            raise BidsUriError(f"{description}: DatasetLinks[{name!r}] is not local: {value}")
        else:
            out[name] = Path(root) / value
    return out


def resolve_bids_uri(uri: str, root: PathLike) -> Path:
    """The local path a BIDS URI written in the dataset at ``root`` names.

    ``bids::<path>`` is ``root/<path>``; ``bids:<name>:<path>`` is under the folder that
    ``root``'s ``dataset_description.json`` links ``name`` to (:func:`dataset_links`).

    Raises
    ------
    BidsUriError
        A malformed URI, or a dataset name with no link.
    """
    name, rel = parse_bids_uri(uri)
    if not name:
        return Path(root) / rel
    links = dataset_links(root)
    if name not in links:
        raise BidsUriError(
            f"{uri}: dataset {name!r} is not in DatasetLinks of {root} (has: {sorted(links)})"
        )
    return links[name] / rel


def bids_root(path: PathLike) -> Path | None:
    """The root of the BIDS dataset a file sits in, from its place alone.

    A BIDS data file lives in ``<root>/sub-<label>/[ses-<label>/]<datatype>/``; the root
    is the folder above ``sub-<label>``, as written (not made absolute). None when the
    file is not in such a place (a loose file given on the command line).
    """
    folder = Path(path).parent
    if not _DATATYPE.fullmatch(folder.name):
        return None
    above = folder.parent
    if _SES.fullmatch(above.name):
        above = above.parent
    if not _SUB.fullmatch(above.name):
        return None
    return above.parent


def link_value(target: PathLike, root: PathLike) -> str:
    """The ``DatasetLinks`` value that points the dataset at ``root`` to ``target``.

    A target given as a relative path stays relative (to ``root``, POSIX separators);
    an absolute one becomes a ``file:`` URI. Either way the value depends only on the
    paths as given, so every job writes the same bytes.
    """
    if Path(target).is_absolute():
        return "file://" + pathname2url(os.path.normpath(target))
    rel = os.path.relpath(_absolute(target), _absolute(root))
    return PurePosixPath(*Path(rel).parts).as_posix()


def link_uri(path: PathLike, links: Mapping[str, PathLike]) -> str | None:
    """The BIDS URI of ``path`` in the linked dataset that holds it, or None if none does.

    ``links`` maps dataset names (``""`` for the derivative dataset itself) to their
    roots; a path in several (nested datasets) takes the innermost.
    """
    file = _absolute(path)
    inner = None
    for name, root in links.items():
        base = _absolute(root)
        if base in file.parents and (inner is None or len(base.parts) > len(inner[1].parts)):
            inner = (name, base)
    return None if inner is None else bids_uri(file, inner[1], inner[0])


def source_uris(paths: Iterable[PathLike | None], links: Mapping[str, PathLike]) -> list[str]:
    """``Sources``: BIDS URIs (:func:`link_uri`) of the ``paths`` in a linked dataset, in order.

    Paths in none (the atlas and template resources, recorded in the sidecar's
    ``Provenance``) and None entries are left out.
    """
    uris = (link_uri(p, links) for p in paths if p is not None)
    return [u for u in uris if u is not None]


def dataset_description(
    name: str,
    pipeline: str,
    description: str,
    links: Mapping[str, str],
) -> dict[str, object]:
    """The ``dataset_description.json`` content of a derivative folder.

    Parameters
    ----------
    name : str
        The dataset's ``Name``.
    pipeline : str
        ``GeneratedBy[0].Name`` (unique per stage: pybids keys derivatives by it).
    description : str
        ``GeneratedBy[0].Description``.
    links : mapping of str to str
        ``DatasetLinks`` (:func:`link_value`); each is also a ``SourceDatasets`` entry.
    """
    for key in links:
        if not key or not _NAME.fullmatch(key):
            raise BidsUriError(f"DatasetLinks names must be letters and digits, got {key!r}")
    return {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": pipeline, "Version": __version__, "Description": description}],
        "SourceDatasets": [{"URL": f"bids:{key}:"} for key in sorted(links)],
        "DatasetLinks": dict(sorted(links.items())),
    }


def write_dataset_description(
    root: PathLike,
    *,
    pipeline: str,
    description: str,
    links: Mapping[str, PathLike | None],
    bidsignore: Sequence[str] = (),
) -> Path:
    """Write ``dataset_description.json`` (and ``.bidsignore``) of the derivative folder ``root``.

    Each job of a stage calls this with the same arguments: the content has no time
    stamp and is written atomically, and an identical file is left untouched, so
    parallel jobs and reruns give the same bytes.

    Parameters
    ----------
    root : path-like
        The derivative folder (``results/<stage>/<dataset>``).
    pipeline, description : str
        See :func:`dataset_description`.
    links : mapping of str to path-like or None
        Name -> root of each dataset the stage's files come from (None entries dropped).
    bidsignore : sequence of str
        Patterns of the stage's files that BIDS 1.x has no name for (``.bidsignore``).

    Returns
    -------
    Path
        The ``dataset_description.json``.
    """
    root = Path(root)
    content = dataset_description(
        f"{pipeline}: {root.name}",
        pipeline,
        description,
        {k: link_value(v, root) for k, v in links.items() if v is not None},
    )
    path = root / "dataset_description.json"
    text = json.dumps(content, indent=2, sort_keys=True) + "\n"
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        write_json(path, content)
    ignore = root / ".bidsignore"
    if bidsignore:
        lines = "".join(f"{p}\n" for p in bidsignore)
        if not (ignore.is_file() and ignore.read_text(encoding="utf-8") == lines):
            write_text(ignore, lines)
    return path
