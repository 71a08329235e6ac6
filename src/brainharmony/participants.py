"""Reading and typing a BIDS ``participants.tsv``.

A malformed table (not UTF-8 text, not tab-separated, no ``participant_id``
column, duplicate ids, not a regular file, over
:data:`~brainharmony.bids_tree.MAX_TABLE_BYTES`) is an error naming the file,
because phenotypes that are silently attached to the wrong subject are worse than
no run at all. Single bad cells are not: a value that is not a number in a numeric
column becomes missing, with a warning naming the file, subject, column and value.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from brainharmony.bids_names import label_problem, show
from brainharmony.bids_tree import MAX_TABLE_BYTES
from brainharmony.io import InputDataError, ReadRefused, read_capped

logger = logging.getLogger(__name__)

PhenotypeKind = Literal["number", "category"]
PHENOTYPE_KINDS: tuple[str, ...] = ("number", "category")
#: Cell values read as missing (BIDS writes ``n/a``).
MISSING_VALUES = frozenset({"", "n/a"})


@dataclass(frozen=True)
class Participants:
    """The typed content of ``participants.tsv``.

    Attributes
    ----------
    table : pandas.DataFrame
        Indexed by subject label (no ``sub-`` prefix); one column per requested
        phenotype (float64 for numbers, pandas ``string`` for categories) and a
        ``site`` column when a site column was requested.
    warnings : list of str
        Problems that did not make the table unusable.
    path : Path or None
        The file read, None when the dataset has none.
    """

    table: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    path: Path | None = None


def read_participants(
    path: Path,
    *,
    phenotypes: Mapping[str, PhenotypeKind],
    site_column: str | None = None,
) -> Participants:
    """Read and type ``participants.tsv``.

    Parameters
    ----------
    path : Path
        The file. When it does not exist, every phenotype is missing (a warning).
    phenotypes : mapping of str to {"number", "category"}
        Columns to keep and how to type them. A requested column the file lacks
        is all missing (a warning).
    site_column : str, optional
        Column holding the acquisition site; it must exist when requested.

    Returns
    -------
    Participants

    Raises
    ------
    InputDataError
        Naming the file: unreadable, not a TSV, no ``participant_id`` column,
        duplicate ids, or a requested ``site_column`` that is missing.
    """
    columns = list(phenotypes) + (["site"] if site_column is not None else [])
    if not path.exists():
        if site_column is not None:
            raise InputDataError(
                path, f"site_column {show(site_column)} was requested but the file is missing"
            )
        warning = f"{path.name} is missing; phenotypes are n/a for every subject"
        return Participants(_empty_table(phenotypes, columns), [warning], None)

    raw, line_numbers = _read_raw(path)
    warnings: list[str] = []
    labels: list[str] = []
    keep: list[int] = []
    for row, value in enumerate(raw["participant_id"]):
        label = value[4:] if value.startswith("sub-") else None
        problem = "does not start with 'sub-'" if label is None else label_problem("sub", label)
        if problem is not None:
            warnings.append(
                f"{path.name}: line {line_numbers[row]} participant_id {show(value)} "
                f"ignored ({problem})"
            )
            continue
        labels.append(str(label))
        keep.append(row)
    raw = raw.iloc[keep]
    duplicates = sorted(label for label, n in Counter(labels).items() if n > 1)
    if duplicates:
        listed = ", ".join(f"sub-{label}" for label in duplicates)
        raise InputDataError(path, f"duplicate participant_id values: {listed}")

    table = pd.DataFrame(index=pd.Index(labels, name="subject", dtype="string"))
    for name, kind in phenotypes.items():
        if name not in raw.columns:
            warnings.append(f"{path.name} has no column {show(name)}; it is n/a for every subject")
            table[name] = _missing_column(kind, table.index)
            continue
        cells = list(raw[name])
        if kind == "number":
            numbers, bad = _to_numbers(cells)
            for index in bad:
                warnings.append(
                    f"{path.name}: sub-{labels[index]} column {show(name)} value "
                    f"{show(cells[index])} is not a number; set to n/a"
                )
            table[name] = pd.Series(numbers, index=table.index, dtype="float64")
        else:
            table[name] = _to_strings(cells, table.index)
    if site_column is not None:
        if site_column not in raw.columns:
            raise InputDataError(
                path,
                f"site_column {show(site_column)} is not a column "
                f"(columns: {', '.join(raw.columns)})",
            )
        table["site"] = _to_strings(list(raw[site_column]), table.index)
    return Participants(table[columns], warnings, path)


def _read_raw(path: Path) -> tuple[pd.DataFrame, list[int]]:
    try:
        text = read_capped(path, MAX_TABLE_BYTES).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputDataError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from err
    except ReadRefused as err:
        raise InputDataError(path, err.reason) from err
    except OSError as err:
        raise InputDataError(path, f"cannot read: {err.strerror or err}") from err
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InputDataError(path, "is empty; expected a tab-separated header with participant_id")
    header = [name.strip() for name in lines[0].split("\t")]
    if len(set(header)) != len(header):
        raise InputDataError(path, "repeated column names in the header")
    rows = []
    line_numbers = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            raise InputDataError(
                path,
                f"not a valid tab-separated table: line {number} has {len(cells)} fields "
                f"but the header has {len(header)}",
            )
        rows.append([cell.strip() for cell in cells])
        line_numbers.append(number)
    raw = pd.DataFrame(rows, columns=header, dtype=object)
    if "participant_id" not in raw.columns:
        hint = " (the header has commas: BIDS requires tabs)" if "," in lines[0] else ""
        raise InputDataError(
            path,
            f"no participant_id column (columns: {', '.join(header)}){hint}",
        )
    return raw, line_numbers


def _to_numbers(cells: list[str]) -> tuple[list[float], list[int]]:
    numbers: list[float] = []
    bad: list[int] = []
    for index, cell in enumerate(cells):
        if cell in MISSING_VALUES:
            numbers.append(math.nan)
            continue
        try:
            value = float(cell) if "_" not in cell else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            bad.append(index)
            value = math.nan
        numbers.append(value)
    return numbers, bad


def _to_strings(cells: list[str], index: pd.Index) -> pd.Series:
    values = [pd.NA if cell in MISSING_VALUES else cell for cell in cells]
    return pd.Series(values, index=index, dtype="string")


def _missing_column(kind: str, index: pd.Index) -> pd.Series:
    fill = math.nan if kind == "number" else pd.NA
    return pd.Series([fill] * len(index), index=index, dtype=_dtype(kind))


def _dtype(kind: str) -> str:
    return "float64" if kind == "number" else "string"


def _empty_table(phenotypes: Mapping[str, PhenotypeKind], columns: list[str]) -> pd.DataFrame:
    table = pd.DataFrame(index=pd.Index([], name="subject", dtype="string"))
    for name, kind in phenotypes.items():
        table[name] = pd.Series([], dtype=_dtype(kind))
    return table[columns]
