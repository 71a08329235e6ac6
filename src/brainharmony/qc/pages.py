"""One HTML page per subject: its rows of the group QC table and its QC figures.

The pages live in ``results/qc/<dataset>/subjects/`` and link the figures the anatomy
and functional stages wrote by paths relative to the page, so the ``results/`` folder
can be moved or copied whole. Every value taken from the data (labels, reasons, file
names) is HTML-escaped; links are percent-encoded, then escaped.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from brainharmony.io import PathLike, write_text
from brainharmony.qc.group import NUMERIC, TABLE_NAME, GroupQC, page_name

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#23395d;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:20px}
main{padding:8px 28px 40px 28px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f3f7}
th.text,th.excluded{text-align:left}
tr.excluded td,td.excluded,th.excluded{background:#fde2e2}
td.text,td.excluded{text-align:left;max-width:420px}
.note{font-size:12px;color:#555}
.figs{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0}
figcaption{font-size:11px;color:#555;max-width:640px}
img{max-width:640px;height:auto;border:1px solid #eee}
"""


def esc(value: Any) -> str:
    """``value`` as HTML text, quotes included."""
    return html.escape(str(value), quote=True)


def href(target: PathLike, start: PathLike) -> str:
    """A relative link from folder ``start`` to ``target``, percent-encoded and escaped."""
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(start))
    return esc(quote(Path(rel).as_posix(), safe="/"))


def cell_text(column: str, value: Any) -> str:
    """How a table cell shows ``value`` (numbers to 4 significant digits, n/a)."""
    if column in NUMERIC:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return "n/a"
        if not np.isfinite(number):
            return "n/a"
        if column in ("n_volumes", "frames_kept") and number.is_integer():
            return str(int(number))
        return f"{number:.4g}"
    text = "" if value is None else str(value)
    return text or "n/a"


def table_html(frame: pd.DataFrame, subject_links: dict[str, str] | None = None) -> str:
    """A group QC table (or part of one) as HTML: every value escaped, excluded rows
    with ``class="excluded"``, the subject linked to ``subject_links[subject]`` (an
    already escaped href) when given."""
    links = subject_links or {}
    head = "".join(
        f'<th class="{"num" if c in NUMERIC else "text"}">{esc(c)}</th>' for c in frame.columns
    )
    body = []
    for rec in frame.to_dict(orient="records"):
        cells = []
        for col in frame.columns:
            text = esc(cell_text(col, rec[col]))
            if col == "subject" and str(rec[col]) in links:
                text = f'<a href="{links[str(rec[col])]}">{text}</a>'
            cells.append(f'<td class="{"num" if col in NUMERIC else "text"}">{text}</td>')
        klass = ' class="excluded"' if str(rec.get("excluded")) == "yes" else ""
        body.append(f"<tr{klass}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def transposed_table_html(frame: pd.DataFrame) -> str:
    """Rows of a group QC table as columns (one per run or exclusion, fields down the
    side): how a subject page shows its few rows. Excluded ones have ``class="excluded"``
    on every cell."""
    records = frame.to_dict(orient="records")
    marks = [
        ' class="excluded"' if str(r.get("excluded")) == "yes" else ' class="text"' for r in records
    ]
    head = '<th class="text">column</th>' + "".join(
        f"<th{m}>{esc(cell_text('source', r.get('source')))}</th>"
        for r, m in zip(records, marks, strict=True)
    )
    body = []
    for col in frame.columns:
        cells = "".join(
            f"<td{m}>{esc(cell_text(col, r[col]))}</td>"
            for r, m in zip(records, marks, strict=True)
        )
        body.append(f'<tr><th class="text">{esc(col)}</th>{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def subject_page(qc: GroupQC, subject: str, page_dir: PathLike) -> str:
    """The HTML page of one subject (figures linked relative to ``page_dir``)."""
    rows = qc.table[qc.table["subject"].astype(str) == subject]
    n_excluded = int((rows["excluded"] == "yes").sum())
    title = f"{qc.dataset}: sub-{subject}"
    table_link = href(Path(page_dir).parent / TABLE_NAME, page_dir)
    parts = [
        f'<p class="note">Group QC table of the dataset: <a href="{table_link}">'
        f"{esc(TABLE_NAME)}</a> (columns described in its JSON sidecar). "
        f"{len(rows)} row(s), {n_excluded} excluded (highlighted).</p>",
        transposed_table_html(rows),
    ]
    figures = qc.figures.get(subject, [])
    if figures:
        items = "".join(
            f'<figure><a href="{href(f.path, page_dir)}"><img src="{href(f.path, page_dir)}" '
            f'alt="{esc(f.path.name)}" loading="lazy"></a>'
            f"<figcaption>{esc(f.caption)}</figcaption></figure>"
            for f in figures
        )
        parts.append(f'<h2>Figures</h2><div class="figs">{items}</div>')
    else:
        parts.append('<p class="note">No QC figures (nothing of this subject was processed).</p>')
    absent = qc.missing_figures.get(subject, [])
    if absent:
        names = ", ".join(p.name for p in absent)
        parts.append(f'<p class="note">Figures not found: {esc(names)}.</p>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{esc(title)}</title><link rel="icon" href="data:,"><style>{CSS}</style>'
        f"</head><body><header><h1>{esc(title)}</h1></header><main>{''.join(parts)}</main>"
        "</body></html>\n"
    )


def write_subject_pages(qc: GroupQC, page_dir: PathLike) -> list[Path]:
    """Write one page per subject of ``qc`` into ``page_dir`` (:func:`.group.page_name`).

    Returns
    -------
    list of Path
        The pages, in subject order.
    """
    folder = Path(page_dir)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for subject in qc.subjects():
        out.append(write_text(folder / page_name(subject), subject_page(qc, subject, folder)))
    return out


def subject_links(subjects: Sequence[str], page_dir: PathLike, start: PathLike) -> dict[str, str]:
    """Subject -> escaped relative link from folder ``start`` to its page, for the
    subjects whose page exists in ``page_dir``."""
    out = {}
    for subject in subjects:
        page = Path(page_dir) / page_name(subject)
        if page.is_file():
            out[subject] = href(page, start)
    return out
