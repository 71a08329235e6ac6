"""Embedding extraction: frozen encoders -> token files and pooled features.

``brainharmony embed encoders`` (the official "Stage 0")
    Loads a trained BrainHarmonix-F and BrainHarmonix-S model folder (``config.json`` +
    ``model.safetensors``), runs them frozen over one dataset's packed series shard (its
    native TR; robust scaling from the statistics file) and packed T1 volume shard, and
    writes

    * per subject and session one token file ``sub-<s>[_ses-<x>]_tokens.npz`` with
      ``f_tokens``, ``f_valid``, ``s_tokens`` and their ``index.tsv``
      (:mod:`brainharmony.models.harmonizer_data`), the Harmonizer's training data;
    * pooled features ``--out-f`` and ``--out-s`` (``results/embeddings/bh_f/<dataset>.npz``
      and ``.../bh_s/<dataset>.npz``): arrays ``subject``, ``session`` (strings; ``n/a``
      when the dataset has no sessions) and ``features`` (N, D) float32, each with a JSON
      sidecar (model folder, inputs, provenance). F features are the model's ``encode``
      averaged over the session's runs; S features are ``encode`` of the session's volume.

``brainharmony embed f``
    The F half of ``encoders`` alone, for a dataset without T1w (kind ``parcellated``):
    the pooled F features ``--out-f`` in the same layout, no token files.

``brainharmony embed harmonizer``
    Loads a trained Harmonizer and writes its pooled features (``encode``: LayerNorm of
    the mean hub token) for every row of a token index, in the same ``.npz`` layout
    (``results/embeddings/harmonizer/<dataset>.npz``).

``brainharmony embed roi-similarity``
    A second readout of the BrainHarmonix-F token files, in the same layout
    (``results/embeddings/bh_f_roisim/<dataset>.npz``): per row, the Fisher z of the
    correlations between the ROIs' token vectors (:func:`roi_similarity`).

Pairing and windows
    A session's token file uses its longest run (most frames; ties: the first run
    label) and the T1 volume of the same session, or of the subject's first session that
    has one (recorded as ``s_session``); sessions without any T1 volume get no token file
    (logged), but still get F features. Each series is read from its first frame for
    ``n_patches * k`` frames (``k = round(tau / TR)``): the F model's whole field of view;
    a longer series is cut there (TAPE's ``overflow`` is set to ``crop`` for extraction),
    a shorter one is padded and masked.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.io import (
    InputDataError,
    PathLike,
    atomic_path,
    provenance,
    sidecar_path,
    write_json,
    write_tsv,
)
from brainharmony.packing import PackedSeriesDataset, PackedVolumeDataset, read_index
from brainharmony.timeseries.scaling import load_stats

logger = logging.getLogger(__name__)

__all__ = [
    "add_arguments",
    "collate_rows",
    "embed_encoders",
    "embed_f",
    "embed_harmonizer",
    "embed_roi_similarity",
    "frozen_series_data",
    "load_frozen",
    "pair_sessions",
    "read_features",
    "roi_similarity",
    "run",
    "token_file_name",
    "write_features",
]

_SERIES_META = ("subject", "session", "run", "tr", "frames", "offset")


# --------------------------------------------------------------------------- models


def load_frozen(model_dir: PathLike, device: Any = "cpu") -> tuple[Any, str]:
    """Rebuild a trained model folder, frozen and in eval mode.

    BrainHarmonix-F, Brain-JEPA and BrainLM are rebuilt with ``tables_from_state`` (their
    position tables, BrainLM's parcel coordinates, come from the weights, so the geometry
    and coordinate files need not exist);
    BrainHarmonix-F with TAPE's ``overflow: crop``.

    Returns
    -------
    model : torch.nn.Module
    kind : str
        The model's kind (``bh_f``, ``bh_s``, ``harmonizer``, ...).
    """
    from brainharmony.models.registry import build_model
    from brainharmony.train.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_weights
    from brainharmony.train.config import load_config, thaw

    folder = Path(model_dir)
    cfg = load_config(folder / CONFIG_NAME)
    model_cfg = thaw(cfg.model)
    if cfg.kind in F_KINDS:
        model_cfg["tables_from_state"] = True
    if cfg.kind == "bh_f":
        model_cfg["overflow"] = "crop"
    model = build_model(cfg.kind, model_cfg)
    load_weights(model, folder / WEIGHTS_NAME, strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval(), cfg.kind


#: Series encoders whose pooled features ``embed f`` writes: BrainHarmonix-F, and
#: Brain-JEPA and BrainLM (a fixed number of frames per patch, no TAPE).
F_KINDS = ("bh_f", "brain_jepa", "brainlm")
#: How the log and the features' sidecar name each of :data:`F_KINDS`.
F_NAMES = {"bh_f": "BrainHarmonix-F", "brain_jepa": "Brain-JEPA", "brainlm": "BrainLM"}


def _expect_kind(kind: str, wanted: str | tuple[str, ...], folder: PathLike) -> None:
    allowed = (wanted,) if isinstance(wanted, str) else wanted
    if kind not in allowed:
        expected = " or ".join(repr(k) for k in allowed)
        raise InputDataError(Path(folder), f"is a {kind!r} model; expected {expected}")


# --------------------------------------------------------------------------- files


def token_file_name(subject: str, session: str) -> str:
    """``sub-<subject>[_ses-<session>]_tokens.npz``."""
    ses = "" if session in ("", "n/a") else f"_ses-{session}"
    return f"sub-{subject}{ses}_tokens.npz"


def write_features(
    path: PathLike,
    subjects: Sequence[str],
    sessions: Sequence[str],
    features: np.ndarray,
    sidecar: Mapping[str, Any],
) -> Path:
    """Write pooled features (``subject``, ``session``, ``features``) and a JSON sidecar."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != len(subjects) or len(sessions) != len(subjects):
        raise ValueError(
            f"features {features.shape} do not match {len(subjects)} subjects / "
            f"{len(sessions)} sessions"
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            subject=np.asarray(subjects, dtype=str),
            session=np.asarray(sessions, dtype=str),
            features=features,
        )
    write_json(sidecar_path(path), dict(sidecar))
    return Path(path)


def read_features(path: PathLike) -> dict[str, np.ndarray]:
    """Read a pooled-features ``.npz`` (``subject``, ``session``, ``features``)."""
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "features file not found")
    with np.load(p, allow_pickle=False) as data:
        missing = [k for k in ("subject", "session", "features") if k not in data.files]
        if missing:
            raise InputDataError(p, f"features file lacks array(s) {missing}")
        return {k: data[k] for k in ("subject", "session", "features")}


# --------------------------------------------------------------------------- pairing


def _label_key(value: str) -> tuple[int, Any]:
    try:
        return (0, int(value))
    except ValueError:
        return (1, value)


def pair_sessions(series_index: pd.DataFrame, volume_index: pd.DataFrame) -> pd.DataFrame:
    """Choose, per subject and session of the series, one run and one T1 volume.

    Returns
    -------
    pandas.DataFrame
        ``subject, session, series_row, volume_row`` (``-1`` when the subject has no
        volume), ``s_session``; one row per (subject, session), in index order.
    """
    for col in ("subject", "session", "run", "frames"):
        if col not in series_index.columns:
            raise InputDataError(None, f"the series index has no {col!r} column")
    for col in ("subject", "session"):
        if col not in volume_index.columns:
            raise InputDataError(None, f"the volume index has no {col!r} column")
    vols: dict[str, list[tuple[str, int]]] = {}
    for row, (sub, ses) in enumerate(
        zip(volume_index["subject"].astype(str), volume_index["session"].astype(str), strict=True)
    ):
        vols.setdefault(sub, []).append((ses, row))
    records = []
    series = series_index.assign(row_id=np.arange(len(series_index)))
    for (sub, ses), group in series.groupby(["subject", "session"], sort=False):
        ordered = sorted(
            group.itertuples(index=False),
            key=lambda r: (-int(r.frames), _label_key(str(r.run))),
        )
        chosen = int(ordered[0].row_id)
        candidates = vols.get(str(sub), [])
        same = [r for s, r in candidates if s == str(ses)]
        if same:
            v_row, v_ses = same[0], str(ses)
        elif candidates:
            v_ses, v_row = min(candidates, key=lambda c: _label_key(c[0]))
        else:
            v_row, v_ses = -1, "n/a"
        records.append(
            {
                "subject": str(sub),
                "session": str(ses),
                "series_row": chosen,
                "volume_row": int(v_row),
                "s_session": v_ses,
            }
        )
    return pd.DataFrame.from_records(
        records, columns=["subject", "session", "series_row", "volume_row", "s_session"]
    )


def _excluded_volumes(volume_shard: PathLike) -> dict[str, str]:
    """Subject -> reason of the T1ws packing left out (the shard sidecar's ``ExcludedSources``)."""
    side = sidecar_path(volume_shard)
    if not side.is_file():
        return {}
    try:
        doc = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    return {str(e.get("subject")): str(e.get("reason", "")) for e in doc.get("ExcludedSources", [])}


# --------------------------------------------------------------------------- running


def _batches(rows: Sequence[int], size: int) -> Iterable[list[int]]:
    rows = list(rows)
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def collate_rows(dataset: Any, rows: Iterable[int], device: Any) -> dict[str, Any]:
    """One batch of ``dataset[row]`` items (default collation), tensors on ``device``."""
    from torch.utils.data import default_collate

    batch = default_collate([dataset[int(r)] for r in rows])
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def _series_window(model: Any, trs: np.ndarray) -> int:
    from brainharmony.models.tape import patch_frames

    if not hasattr(model.encoder, "tape"):  # Brain-JEPA, BrainLM: a fixed number of frames
        return int(model.encoder.n_frames)
    tape = model.encoder.tape
    return max(tape.n_patches * patch_frames(float(tr), tape.tau) for tr in np.unique(trs))


def frozen_series_data(
    model: Any, shard: PathLike, index: PathLike, scaling: PathLike | None = None
) -> tuple[pd.DataFrame, Any]:
    """A packed series shard as a frozen BrainHarmonix-F model reads it for embedding.

    Each series from its first frame for the model's whole field of view (``n_patches *
    k`` frames, ``k = round(tau / TR)``, at the longest of the shard's TRs), robust-scaled
    with the statistics file when one is given.

    Returns
    -------
    index : pandas.DataFrame
        The shard's index (it must have a ``tr`` column).
    dataset : brainharmony.packing.PackedSeriesDataset
    """

    table = read_index(index)
    if "tr" not in table.columns:
        raise InputDataError(Path(index), "series index has no 'tr' column")
    stats = None
    if scaling is not None:
        stats = load_stats(scaling)
    data = PackedSeriesDataset(
        shard,
        table,
        window=_series_window(model, table["tr"].to_numpy(np.float64)),
        crop="start",
        scaling=stats,
    )
    return table, data


def embed_encoders(
    *,
    f_model: PathLike,
    s_model: PathLike,
    series_shard: PathLike,
    series_index: PathLike,
    volume_shard: PathLike,
    volume_index: PathLike,
    tokens_dir: PathLike,
    out_f: PathLike,
    out_s: PathLike,
    scaling: PathLike | None = None,
    batch_size: int = 8,
    dtype: str = "float16",
    device: str = "cpu",
) -> pd.DataFrame:
    """Token files and pooled F/S features of one dataset (module docstring).

    Returns
    -------
    pandas.DataFrame
        The token index (also written to ``tokens_dir/index.tsv``).
    """
    import torch

    from brainharmony.models.harmonizer_data import INDEX_COLUMNS, write_token_file

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    f_net, f_kind = load_frozen(f_model, device)
    _expect_kind(f_kind, "bh_f", f_model)
    s_net, s_kind = load_frozen(s_model, device)
    _expect_kind(s_kind, "bh_s", s_model)
    s_index = read_index(volume_index)
    f_index, f_data = frozen_series_data(f_net, series_shard, series_index, scaling)
    s_data = PackedVolumeDataset(volume_shard, s_index)
    pairs = pair_sessions(f_index, s_index)
    f_pooled: dict[int, np.ndarray] = {}
    s_pooled: dict[int, np.ndarray] = {}
    out_dir = Path(tokens_dir)
    extra = [c for c in f_index.columns if c not in _SERIES_META]
    records: list[dict[str, Any]] = []
    paired = pairs[pairs["volume_row"] >= 0]
    anat_excluded = _excluded_volumes(volume_shard)
    for missing in pairs.loc[pairs["volume_row"] < 0].itertuples(index=False):
        why = anat_excluded.get(str(missing.subject), "")
        logger.warning(
            "sub-%s ses-%s: no T1 volume%s; no token file",
            missing.subject,
            missing.session,
            f" (excluded by anat: {why})" if why else "",
        )
    with torch.no_grad():
        for chunk in _batches(range(len(paired)), batch_size):
            part = paired.iloc[chunk]
            f_rows = part["series_row"].tolist()
            s_rows = part["volume_row"].tolist()
            f_batch = collate_rows(f_data, f_rows, device)
            s_batch = collate_rows(s_data, s_rows, device)
            f_tok, f_val = f_net.encode_tokens(f_batch)
            s_tok, _ = s_net.encode_tokens(s_batch)
            for r, feat in zip(f_rows, f_net.encode(f_batch).cpu().numpy(), strict=True):
                f_pooled[r] = feat
            for r, feat in zip(s_rows, s_net.encode(s_batch).cpu().numpy(), strict=True):
                s_pooled[r] = feat
            for j, rec in enumerate(part.itertuples(index=False)):
                name = token_file_name(rec.subject, rec.session)
                write_token_file(
                    out_dir / name,
                    f_tokens=f_tok[j].float().cpu().numpy(),
                    f_valid=f_val[j].cpu().numpy(),
                    s_tokens=s_tok[j].float().cpu().numpy(),
                    dtype=np.dtype(dtype),
                )
                src = f_index.iloc[rec.series_row]
                records.append(
                    {
                        "subject": rec.subject,
                        "session": rec.session,
                        "path": name,
                        "f_run": str(src["run"]),
                        "f_tr": float(src["tr"]),
                        "f_valid_tokens": int(f_val[j].sum()),
                        "s_session": rec.s_session,
                        **{c: src[c] for c in extra},
                    }
                )
        rest_f = [r for r in range(len(f_index)) if r not in f_pooled]
        for chunk in _batches(rest_f, batch_size):
            feats = f_net.encode(collate_rows(f_data, chunk, device)).cpu().numpy()
            f_pooled.update(zip(chunk, feats, strict=True))
        rest_s = [r for r in range(len(s_index)) if r not in s_pooled]
        for chunk in _batches(rest_s, batch_size):
            feats = s_net.encode(collate_rows(s_data, chunk, device)).cpu().numpy()
            s_pooled.update(zip(chunk, feats, strict=True))

    index = pd.DataFrame.from_records(records, columns=[*INDEX_COLUMNS, *extra])
    write_tsv(out_dir / "index.tsv", index)
    inputs = [series_shard, series_index, volume_shard, volume_index]
    if scaling is not None:
        inputs.append(scaling)
    write_json(
        sidecar_path(out_dir / "index.tsv"),
        {
            "Description": "Frozen BrainHarmonix-F/-S tokens per subject and session",
            "FModel": str(f_model),
            "SModel": str(s_model),
            "TokenDType": dtype,
            "FGrid": list(f_net.grid),
            **provenance(step="embed-encoders", inputs=inputs),
        },
    )

    _write_f_features(out_f, f_index, f_pooled, f_model, series_shard, series_index)
    write_features(
        out_s,
        s_index["subject"].astype(str).tolist(),
        s_index["session"].astype(str).tolist(),
        np.stack([s_pooled[r] for r in range(len(s_index))]),
        {
            "Description": "BrainHarmonix-S pooled features (one per T1 volume)",
            "Model": str(s_model),
            **provenance(step="embed-encoders", inputs=[volume_shard, volume_index]),
        },
    )
    logger.info(
        "embedded %d series, %d volumes; %d token files", len(f_index), len(s_index), len(index)
    )
    return index


def _write_f_features(
    out_f: PathLike,
    f_index: pd.DataFrame,
    f_pooled: Mapping[int, np.ndarray],
    f_model: PathLike,
    series_shard: PathLike,
    series_index: PathLike,
    what: str = "BrainHarmonix-F",
) -> None:
    """Pooled F features: the mean over each session's runs, in index order of first
    appearance (``what``: the encoder's name in the sidecar)."""
    keys = list(dict.fromkeys(zip(f_index["subject"], f_index["session"], strict=True)))
    by_key: dict[tuple[str, str], list[np.ndarray]] = {}
    for r, key in enumerate(zip(f_index["subject"], f_index["session"], strict=True)):
        by_key.setdefault(key, []).append(f_pooled[r])
    write_features(
        out_f,
        [k[0] for k in keys],
        [k[1] for k in keys],
        np.stack([np.mean(by_key[k], axis=0) for k in keys]),
        {
            "Description": f"{what} pooled features (mean over each session's runs)",
            "Model": str(f_model),
            "Runs": [len(by_key[k]) for k in keys],
            **provenance(step="embed-encoders", inputs=[series_shard, series_index]),
        },
    )


def embed_f(
    *,
    f_model: PathLike,
    series_shard: PathLike,
    series_index: PathLike,
    out_f: PathLike,
    scaling: PathLike | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> None:
    """Pooled F features of one dataset without T1w (a ``parcellated`` dataset): the
    frozen BrainHarmonix-F part of :func:`embed_encoders`, in the same ``--out-f``
    layout (no token files: the Harmonizer needs the S tokens too). The model may also
    be a Brain-JEPA folder (kind ``brain_jepa``: ``encode``, the mean of its target
    encoder's tokens) or a BrainLM folder (kind ``brainlm``: ``encode``, its CLS token or
    mean token by its ``pool``), either over each series' first ``n_patches * patch``
    frames."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    f_net, f_kind = load_frozen(f_model, device)
    _expect_kind(f_kind, F_KINDS, f_model)
    f_index, f_data = frozen_series_data(f_net, series_shard, series_index, scaling)
    f_pooled: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for chunk in _batches(range(len(f_index)), batch_size):
            feats = f_net.encode(collate_rows(f_data, chunk, device)).cpu().numpy()
            f_pooled.update(zip(chunk, feats, strict=True))
    what = F_NAMES[f_kind]
    _write_f_features(out_f, f_index, f_pooled, f_model, series_shard, series_index, what)
    logger.info("embedded %d series with %s (F only, no T1w)", len(f_index), what)


def embed_harmonizer(
    *,
    model: PathLike,
    tokens_index: PathLike,
    out: PathLike,
    batch_size: int = 8,
    device: str = "cpu",
) -> np.ndarray:
    """Pooled Harmonizer features of every row of a token index.

    Returns
    -------
    ndarray of shape (N, D)
    """
    import torch

    from brainharmony.models.harmonizer_data import FusedDataset

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    net, kind = load_frozen(model, device)
    _expect_kind(kind, "harmonizer", model)
    data = FusedDataset(tokens_index)
    feats = []
    with torch.no_grad():
        for chunk in _batches(range(len(data)), batch_size):
            feats.append(net.encode(collate_rows(data, chunk, device)).float().cpu().numpy())
    if not feats:
        raise InputDataError(Path(tokens_index), "token index has no rows")
    features = np.concatenate(feats)
    write_features(
        out,
        data.index["subject"].astype(str).tolist(),
        data.index["session"].astype(str).tolist(),
        features,
        {
            "Description": "Harmonizer pooled features (LayerNorm of the mean hub token)",
            "Model": str(model),
            **provenance(step="embed-harmonizer", inputs=[tokens_index]),
        },
    )
    return features


# ------------------------------------------------------------- ROI-similarity readout


def roi_similarity(tokens: np.ndarray, valid: np.ndarray, n_rois: int) -> np.ndarray:
    """Second-order readout of BrainHarmonix-F tokens: similarity between ROI embeddings.

    The ROI x time-patch tokens of one item (ROI-major) give each ROI a vector: its
    tokens of the time patches valid for every covered ROI, concatenated. The readout
    is the Fisher z of the Pearson correlation of every ROI pair's vectors (upper
    triangle, ``n_rois * (n_rois - 1) / 2`` values). Where mean pooling keeps the first
    moment of the tokens only, this keeps how the encoder relates ROIs to one another,
    the information connectivity-based phenotypes live in. A ROI with no valid token
    gives 0 for all its pairs.

    Parameters
    ----------
    tokens : ndarray of shape (n_rois * P, D)
    valid : ndarray of shape (n_rois * P,), bool
    n_rois : int

    Returns
    -------
    ndarray of shape (n_rois * (n_rois - 1) // 2,), float32
    """
    tokens = np.asarray(tokens, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    if tokens.ndim != 2 or valid.shape != tokens.shape[:1] or tokens.shape[0] % n_rois:
        raise ValueError(
            f"tokens {tokens.shape} / valid {valid.shape} are not {n_rois} ROIs x patches"
        )
    grid = valid.reshape(n_rois, -1)
    covered = grid.any(axis=1)
    patches = grid[covered].all(axis=0) if covered.any() else np.zeros(grid.shape[1], bool)
    vectors = tokens.reshape(n_rois, grid.shape[1], -1)[:, patches].reshape(n_rois, -1)
    vectors = vectors - vectors.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(vectors, axis=1)
    usable = covered & (norms > 0)
    vectors[usable] /= norms[usable, None]
    vectors[~usable] = 0.0
    corr = np.clip(vectors @ vectors.T, -1 + 1e-7, 1 - 1e-7)
    upper = np.triu_indices(n_rois, k=1)
    return np.arctanh(corr[upper]).astype(np.float32)


def embed_roi_similarity(*, tokens_index: PathLike, out: PathLike) -> np.ndarray:
    """:func:`roi_similarity` of every row of a token index (``embed encoders`` output).

    Returns
    -------
    ndarray of shape (N, n_rois * (n_rois - 1) // 2)
    """
    from brainharmony.models.harmonizer_data import read_token_file, read_token_index

    index_path = Path(tokens_index)
    index = read_token_index(index_path)
    if not len(index):
        raise InputDataError(index_path, "token index has no rows")
    meta_path = sidecar_path(index_path)
    try:
        grid = json.loads(meta_path.read_text())["FGrid"]
        n_rois = int(grid[0])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise InputDataError(meta_path, f"no readable FGrid (ROIs x patches): {err}") from None
    feats = []
    for path in index["path"]:
        data = read_token_file(path)
        try:
            feats.append(roi_similarity(data["f_tokens"], data["f_valid"], n_rois))
        except ValueError as err:
            raise InputDataError(Path(path), str(err)) from None
    features = np.stack(feats)
    write_features(
        out,
        index["subject"].astype(str).tolist(),
        index["session"].astype(str).tolist(),
        features,
        {
            "Description": "BrainHarmonix-F ROI-similarity readout: Fisher z of the "
            "correlation between ROI token vectors (upper triangle, ROI-major pairs)",
            "NumberOfROIs": n_rois,
            **provenance(step="embed-roi-similarity", inputs=[tokens_index]),
        },
    )
    return features


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``brainharmony embed {encoders,harmonizer}``."""
    sub = parser.add_subparsers(dest="embed_command", metavar="WHAT", required=True)
    enc = sub.add_parser("encoders", help="frozen F and S -> token files + pooled features")
    enc.add_argument("--f-model", required=True, type=Path, help="trained bh_f model folder")
    enc.add_argument("--s-model", required=True, type=Path, help="trained bh_s model folder")
    enc.add_argument("--series-shard", required=True, type=Path, help="packed series .npy")
    enc.add_argument("--series-index", required=True, type=Path, help="its index .tsv")
    enc.add_argument("--scaling", type=Path, help="robust-scaling statistics (.json)")
    enc.add_argument("--volume-shard", required=True, type=Path, help="packed volumes .npy")
    enc.add_argument("--volume-index", required=True, type=Path, help="its index .tsv")
    enc.add_argument(
        "--tokens-dir", required=True, type=Path, help="output folder: token files + index.tsv"
    )
    enc.add_argument("--out-f", required=True, type=Path, help="pooled F features (.npz)")
    enc.add_argument("--out-s", required=True, type=Path, help="pooled S features (.npz)")
    enc.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    fonly = sub.add_parser(
        "f", help="frozen F -> pooled features only (a dataset without T1w: parcellated)"
    )
    fonly.add_argument(
        "--f-model",
        required=True,
        type=Path,
        help="trained bh_f (or brain_jepa, brainlm) model folder",
    )
    fonly.add_argument("--series-shard", required=True, type=Path, help="packed series .npy")
    fonly.add_argument("--series-index", required=True, type=Path, help="its index .tsv")
    fonly.add_argument("--scaling", type=Path, help="robust-scaling statistics (.json)")
    fonly.add_argument("--out-f", required=True, type=Path, help="pooled F features (.npz)")
    har = sub.add_parser("harmonizer", help="trained Harmonizer -> pooled features")
    har.add_argument("--model", required=True, type=Path, help="trained harmonizer folder")
    har.add_argument("--tokens-index", required=True, type=Path, help="token index.tsv")
    har.add_argument("--out", required=True, type=Path, help="pooled features (.npz)")
    sim = sub.add_parser(
        "roi-similarity", help="BrainHarmonix-F token files -> ROI-similarity features"
    )
    sim.add_argument("--tokens-index", required=True, type=Path, help="token index.tsv")
    sim.add_argument("--out", required=True, type=Path, help="features (.npz)")
    for p in (enc, fonly, har):
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
        p.add_argument("--threads", type=int, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    """Run ``brainharmony embed``."""
    if args.embed_command == "roi-similarity":
        embed_roi_similarity(tokens_index=args.tokens_index, out=args.out)
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.embed_command == "encoders":
        embed_encoders(
            f_model=args.f_model,
            s_model=args.s_model,
            series_shard=args.series_shard,
            series_index=args.series_index,
            volume_shard=args.volume_shard,
            volume_index=args.volume_index,
            tokens_dir=args.tokens_dir,
            out_f=args.out_f,
            out_s=args.out_s,
            scaling=args.scaling,
            batch_size=args.batch_size,
            dtype=args.dtype,
            device=device,
        )
    elif args.embed_command == "f":
        embed_f(
            f_model=args.f_model,
            series_shard=args.series_shard,
            series_index=args.series_index,
            out_f=args.out_f,
            scaling=args.scaling,
            batch_size=args.batch_size,
            device=device,
        )
    else:
        embed_harmonizer(
            model=args.model,
            tokens_index=args.tokens_index,
            out=args.out,
            batch_size=args.batch_size,
            device=device,
        )
    return 0
