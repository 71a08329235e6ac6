"""The multi-TR stage: every denoised series of a dataset at each target TR, packed.

BrainHarmonix pretrains on each series at its own TR *and* at integer multiples of it
(UK Biobank 0.735 s -> 1.47 / 2.205 / 2.94 s; ABCD 0.8 s -> 1.6 / 2.4 s), so that the
model sees many sampling rates. Here the targets of a dataset are ``factor * TR`` for
each configured factor (1 = the source series itself) and each source TR present in
its ``scans.tsv`` (a dataset such as ABIDE has several), kept when not longer than
``max_tr``. One job per dataset and target TR resamples the series whose source TR
gives that target (:func:`brainharmony.timeseries.resample.resample_to_tr`:
anti-aliased polyphase by default, the paper's plain decimation as ``decimate``) and
packs them into one shard + index (:func:`brainharmony.packing.pack_series`), with the
ingest phenotypes copied into the index. File names carry the target TR in integer
milliseconds: ``<dataset>_tr-1470_series.npy``.

Command line: ``brainharmony multitr`` (:mod:`brainharmony.pipelines.multitr`).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.ingest import read_scans
from brainharmony.io import (
    InputDataError,
    PathLike,
    provenance,
    read_json,
    sidecar_path,
    write_json,
)
from brainharmony.packing import pack_series
from brainharmony.series_files import read_series, set_aside
from brainharmony.timeseries.resample import censored_volumes, resample_to_tr, tr_label

#: scans.tsv columns that describe files, not participants (left out of the index).
_FILE_COLUMNS = (
    "dataset",
    "t1w",
    "t1w_session",
    "bold",
    "bold_sidecar",
    "n_volumes",
    "duration_s",
    "n_slices",
    "has_slice_timing",
)
_ENTITY = re.compile(r"(?:^|_)(sub|ses|run)-([a-zA-Z0-9]+)")


def tr_ms(tr_seconds: float) -> int:
    """A TR in integer milliseconds (the ``tr-<ms>`` label)."""

    return tr_label(tr_seconds)


def target_trs(
    source_trs: Iterable[float], factors: Sequence[int], max_tr: float | None
) -> dict[int, list[float]]:
    """Target TRs (ms) of a dataset and the source TRs (s) that produce each.

    Parameters
    ----------
    source_trs : iterable of float
        TRs (seconds) of the dataset's runs; duplicates are fine.
    factors : sequence of int
        Output TR = factor x source TR; 1 keeps the source.
    max_tr : float or None
        Targets longer than this (seconds) are skipped; the source TR (factor 1) is
        always kept.

    Returns
    -------
    dict
        ``{target_ms: [source TR, ...]}``, sorted by target.

    Raises
    ------
    ValueError
        A factor below 1, or two source TRs that round to the same target while
        being different (one shard holds one TR).
    """
    if not factors or any(int(f) != f or f < 1 for f in factors):
        raise ValueError(f"multitr factors must be integers >= 1, got {list(factors)}")
    sources = sorted({round(float(t), 6) for t in source_trs})
    out: dict[int, list[float]] = {}
    exact: dict[int, float] = {}
    for tr in sources:
        for f in sorted(set(int(f) for f in factors)):
            target = f * tr
            if f > 1 and max_tr is not None and target > max_tr + 1e-9:
                continue
            ms = tr_ms(target)
            if ms in exact and abs(exact[ms] - target) > 1e-6:
                raise ValueError(
                    f"target TR {ms} ms arises from two different values "
                    f"({exact[ms]:.6g} s and {target:.6g} s); adjust multitr.factors"
                )
            exact[ms] = target
            out.setdefault(ms, []).append(tr)
    return dict(sorted(out.items()))


def _entities(path: Path) -> dict[str, str]:
    return {k: v for k, v in _ENTITY.findall(path.name)}


def _label(value: Any) -> str:
    text = str(value)
    return "n/a" if text in ("", "nan", "None", "n/a") else text


def build_manifest(
    scans: pd.DataFrame, files: Sequence[PathLike], kind: str = "series"
) -> pd.DataFrame:
    """Pair each file with its ``scans.tsv`` row by the sub/ses/run entities of its name.

    Parameters
    ----------
    scans : pandas.DataFrame
        An ingest ``scans.tsv``.
    files : sequence of path-like
        ``series``: one per BOLD run; ``volumes``: one model-ready T1w per subject (and
        T1w session), matched on ``subject`` and ``t1w_session``.
    kind : {"series", "volumes"}

    Returns
    -------
    pandas.DataFrame
        ``subject, session[, run, tr], path`` and the participant columns of scans.tsv.

    Raises
    ------
    InputDataError
        A file whose entities match no row, or two files for one row.
    """
    if kind not in ("series", "volumes"):
        raise ValueError(f"kind must be 'series' or 'volumes', got {kind!r}")
    series = kind == "series"
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for rec in scans.to_dict(orient="records"):
        if series:
            key: tuple[str, ...] = (
                str(rec["subject"]),
                _label(rec.get("session")),
                _label(rec.get("run")),
            )
        else:
            key = (str(rec["subject"]), _label(rec.get("t1w_session")))
        rows.setdefault(key, rec)  # volumes: the first run of a T1w gives its phenotypes
    out: list[dict[str, Any]] = []
    seen: dict[tuple[str, ...], Path] = {}
    for raw in files:
        p = Path(raw)
        ent = _entities(p)
        key = (ent.get("sub", ""), ent.get("ses", "n/a"))
        if series:
            key = (*key, ent.get("run", "n/a"))
        if key not in rows:
            raise InputDataError(p, f"no scans.tsv row for {'/'.join(key)}")
        if key in seen:
            raise InputDataError(p, f"a second file for {'/'.join(key)} (first: {seen[key]})")
        seen[key] = p
        rec = rows[key]
        item: dict[str, Any] = {"subject": key[0], "session": key[1]}
        if series:
            item.update(run=key[2], tr=float(rec["tr"]))
        drop = (*_FILE_COLUMNS, "subject", "session", "run", "tr")
        item.update({k: v for k, v in rec.items() if k not in drop})
        item["path"] = str(p)
        out.append(item)
    if not out:
        raise InputDataError(None, "no files given")
    return pd.DataFrame(out)


def resample_and_pack(
    manifest: pd.DataFrame,
    target_ms: int,
    shard: PathLike,
    index: PathLike,
    *,
    method: str = "polyphase",
    seed: int = 0,
) -> pd.DataFrame:
    """Resample every series of ``manifest`` whose TR yields ``target_ms``, then pack.

    Series whose source TR is not a divisor-compatible source of the target (i.e. not
    listed by :func:`target_trs` for it) are skipped, and so are runs the func stage
    excluded (listed in the shard sidecar's ``ExcludedSources``). With ``method="decimate"`` each
    series draws its start offset from ``seed`` and its position in the manifest, so
    reruns are identical.

    Returns
    -------
    pandas.DataFrame
        The written index.
    """

    target = target_ms / 1000.0
    rows = []
    excluded: list[dict[str, str]] = []
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="multitr-", dir=Path(shard).parent) as tmp:
        for i, rec in enumerate(manifest.to_dict(orient="records")):
            tr_in = float(rec["tr"])
            factor = target / tr_in
            if abs(factor - round(factor)) > 1e-3 * factor or round(factor) < 1:
                continue
            path = Path(rec["path"])
            series = read_series(path, require_finite=False)
            if set_aside(series, path, excluded):
                continue
            try:
                if round(factor) == 1:
                    data = series.data
                else:
                    res = resample_to_tr(
                        series.data,
                        tr_in,
                        target,
                        method,  # type: ignore[arg-type]
                        rng=np.random.default_rng([seed, i]) if method == "decimate" else None,
                        censored=censored_volumes(series.data, series.sidecar),
                    )
                    data = res.data
                    details[f"{tr_in:g}"] = {"method": res.method, **res.details}
            except ValueError as err:
                raise InputDataError(path, str(err)) from None
            out = Path(tmp) / f"{i:06d}.npy"
            np.save(out, data.astype(np.float32))
            write_json(sidecar_path(out), {"RepetitionTime": target, "ROINames": series.roi_names})
            rows.append({**rec, "tr": target, "source_tr": tr_in, "source": str(path), "path": out})
        if not rows:
            why = f" ({len(excluded)} excluded by func)" if excluded else ""
            raise InputDataError(
                None, f"no usable series has a source TR that gives {target_ms} ms{why}"
            )
        frame = pd.DataFrame(rows)
        idx = pack_series(frame, shard, index)
    write_json(
        sidecar_path(shard),
        {
            **read_json(sidecar_path(shard)),
            "TargetRepetitionTimeMs": int(target_ms),
            "ResamplingMethod": method,
            "ResamplingDetails": details,
            "Sources": [str(r["source"]) for r in rows],
            "ExcludedSources": excluded,
            **provenance(
                step="multitr",
                inputs=[r["source"] for r in rows],
                parameters={"target_ms": target_ms, "method": method, "seed": seed},
            ),
        },
    )
    return idx


def targets_of_scans(
    scans_tsv: PathLike, factors: Sequence[int], max_tr: float | None
) -> dict[int, list[float]]:
    """:func:`target_trs` of the TRs listed in an ingest ``scans.tsv``."""

    return target_trs(read_scans(scans_tsv)["tr"].astype(float), factors, max_tr)


def settings_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``multitr:`` block with defaults (the schema fills them in normally)."""
    block = dict(config.get("multitr") or {})
    return {
        "factors": [int(f) for f in block.get("factors", [1, 2, 3, 4])],
        "max_tr": block.get("max_tr", 3.0),
        "method": str(block.get("method", "polyphase")),
        "seed": int(block.get("seed", 0)),
    }
