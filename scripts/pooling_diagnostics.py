"""Why a mean-pooled probe of frozen tokens can miss connectivity effects: two checks.

``sign-split``
    Encodes every series of a packed shard with a frozen BrainHarmonix-F model (the
    first ``n_patches * k`` frames, robust-scaled, as ``brainharmony embed encoders``
    does) and again with the sign of the series flipped, and splits the pooled feature
    ``f(x)`` into its even part ``(f(x) + f(-x)) / 2`` and odd part ``(f(x) - f(-x)) / 2``.
    Denoised BOLD is zero-mean and its distribution does not change when the sign flips,
    so the odd part averages to zero whatever the covariance of the ROIs: a difference
    that lives in connectivity or amplitude can reach the pooled feature through its
    even part only. It prints how much of the between-series variance of ``f(x)`` each
    part carries and writes ``pooled.npz``, ``even.npz`` and ``odd.npz`` (one row per
    series, the layout of ``results/embeddings``) for ``scripts/offline_probe.py``.

``token-variance``
    For the token files of a token index (``embed encoders`` output), the share of each
    modality's token variance that lies *between items at the same grid position*
    (the part a subject can change) rather than between positions (the part the
    position embedding and anatomy template fix). A modality whose tokens hardly vary
    between subjects gives a fused model little to separate them by.

``network-amplitude``
    A reference point for what the same window holds: per series of a packed shard, the
    standard deviation over its first ``--frames`` uncensored frames of each Schaefer
    network's mean signal (7 features, written as an embedding ``.npz``). It is even in
    the signal and depends on within-network coupling, which is where the demo plants its
    diagnosis.

Usage (the numbers in ``docs/evaluation.md``)::

    .venv/bin/python scripts/pooling_diagnostics.py sign-split --model results/models/bh_f \\
        --shard results/multitr/demoB/demoB_tr-2000_series.npy \\
        --index results/multitr/demoB/demoB_tr-2000_index.tsv \\
        --scaling results/multitr/atlas-Schaefer400_desc-robust_scaling.json --out DIR
    .venv/bin/python scripts/offline_probe.py --phenotypes \\
        resources/demo/demoB-truth/phenotypes.tsv DIR/pooled.npz DIR/even.npz DIR/odd.npz
    .venv/bin/python scripts/pooling_diagnostics.py token-variance \\
        results/embeddings/tokens/demoB/index.tsv
    .venv/bin/python scripts/pooling_diagnostics.py network-amplitude --frames 72 \\
        --shard results/multitr/demoB/demoB_tr-2000_series.npy \\
        --index results/multitr/demoB/demoB_tr-2000_index.tsv --out DIR/amplitude.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def _rows(table: pd.DataFrame) -> pd.DataFrame:
    """``subject`` and ``session`` (``n/a`` without sessions) of each index row."""
    session = table["session"].astype(str) if "session" in table.columns else "n/a"
    return pd.DataFrame({"subject": table["subject"].astype(str), "session": session})


def between_variance(features: np.ndarray) -> float:
    """Summed over features, the variance of the rows (between items)."""
    x = np.asarray(features, dtype=np.float64)
    return float(x.var(axis=0).sum())


def sign_split(
    model: Path,
    shard: Path,
    index: Path,
    scaling: Path | None = None,
    batch_size: int = 8,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Pooled features of every series of a shard and of its sign-flipped copy.

    Returns
    -------
    rows : pandas.DataFrame
        ``subject``, ``session`` of each series (index order).
    plus, minus : ndarray of shape (n_series, D)
        ``encode`` of the series and of the negated series.
    """
    import torch

    from brainharmony.io import InputDataError
    from brainharmony.pipelines.embed import collate_rows, frozen_series_data, load_frozen

    net, kind = load_frozen(model)
    if kind != "bh_f":
        raise InputDataError(model, f"is a {kind!r} model; expected 'bh_f'")
    table, data = frozen_series_data(net, shard, index, scaling)
    plus, minus = [], []
    with torch.no_grad():
        for start in range(0, len(table), batch_size):
            batch = dict(
                collate_rows(data, range(start, min(start + batch_size, len(table))), "cpu")
            )
            plus.append(net.encode(batch).float().numpy())
            batch["x"] = -batch["x"]
            minus.append(net.encode(batch).float().numpy())
    return _rows(table), np.concatenate(plus), np.concatenate(minus)


def token_variance(tokens_index: Path) -> dict[str, float]:
    """Per modality, the share of token variance between items at the same position."""
    from brainharmony.models.harmonizer_data import read_token_file, read_token_index

    frame = read_token_index(tokens_index)
    if len(frame) < 2:
        raise SystemExit(f"{tokens_index}: need at least two token files, found {len(frame)}")
    files = [read_token_file(p) for p in frame["path"]]
    out = {}
    for name in ("f_tokens", "s_tokens"):
        x = np.stack([f[name].astype(np.float64) for f in files])  # items, positions, D
        if name == "f_tokens":
            valid = np.stack([f["f_valid"] for f in files])
            keep = valid.all(axis=0)  # positions valid in every item
            x = x[:, keep]
        total = x.reshape(-1, x.shape[-1]).var(axis=0).sum()
        between_items = x.var(axis=0).sum(axis=-1).mean()  # per position, then averaged
        out[name] = float(between_items / total) if total > 0 else float("nan")
    return out


def network_amplitude(shard: Path, index: Path, frames: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Per series, the SD of each Schaefer-400 network's mean signal over its first frames.

    Censored (non-finite) frames among the first ``frames`` are left out.

    Returns
    -------
    rows : pandas.DataFrame
        ``subject``, ``session`` of each series.
    features : ndarray of shape (n_series, n_networks)
    """
    from brainharmony.atlas import NETWORKS, schaefer400_centroids
    from brainharmony.io import InputDataError
    from brainharmony.packing import read_index

    if frames < 3:
        raise ValueError(f"frames must be >= 3; got {frames}")
    labels = schaefer400_centroids()["network"].to_numpy()
    table = read_index(index)
    data = np.load(shard, mmap_mode="r", allow_pickle=False)
    if data.ndim != 2 or data.shape[1] != labels.size:
        raise InputDataError(shard, f"shape {data.shape}; expected (frames, {labels.size})")
    out = []
    for row in table.itertuples(index=False):
        x = np.asarray(data[int(row.offset) : int(row.offset) + int(row.frames)], np.float64)
        x = x[:frames]
        x = x[np.isfinite(x).all(axis=1)]
        if len(x) < 3:
            raise InputDataError(shard, f"series of sub-{row.subject}: < 3 uncensored frames")
        out.append([x[:, labels == name].mean(axis=1).std() for name in NETWORKS])
    return _rows(table), np.asarray(out)


def _write(path: Path, rows: pd.DataFrame, features: np.ndarray, what: str) -> None:
    from brainharmony.pipelines.embed import write_features

    write_features(
        path,
        rows["subject"].tolist(),
        rows["session"].tolist(),
        features,
        {"Description": f"{what} (scripts/pooling_diagnostics.py)"},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("sign-split", help="even and odd parts of the pooled BH-F features")
    split.add_argument("--model", type=Path, required=True, help="trained bh_f model folder")
    split.add_argument("--shard", type=Path, required=True, help="packed series .npy")
    split.add_argument("--index", type=Path, required=True, help="its index .tsv")
    split.add_argument("--scaling", type=Path, help="robust-scaling statistics .json")
    split.add_argument("--out", type=Path, required=True, help="folder for the .npz files")
    split.add_argument("--batch-size", type=int, default=8)
    var = sub.add_parser("token-variance", help="between-item share of token variance")
    var.add_argument("tokens_index", type=Path, help="token index .tsv (embed encoders)")
    amp = sub.add_parser("network-amplitude", help="SD of each network's mean signal")
    amp.add_argument("--shard", type=Path, required=True, help="packed series .npy")
    amp.add_argument("--index", type=Path, required=True, help="its index .tsv")
    amp.add_argument("--frames", type=int, required=True, help="first frames of each series")
    amp.add_argument("--out", type=Path, required=True, help="embedding .npz to write")
    args = parser.parse_args(argv)

    if args.command == "network-amplitude":
        rows, features = network_amplitude(args.shard, args.index, args.frames)
        _write(args.out, rows, features, f"network amplitude over {args.frames} frames")
        print(f"{len(rows)} series x {features.shape[1]} networks -> {args.out}")
        return 0

    if args.command == "token-variance":
        for name, share in token_variance(args.tokens_index).items():
            print(f"{name}: {100 * share:.2f} % of the variance is between items")
        return 0
    rows, plus, minus = sign_split(
        args.model, args.shard, args.index, args.scaling, args.batch_size
    )
    even, odd = (plus + minus) / 2, (plus - minus) / 2
    total = between_variance(plus)
    print(
        f"{len(rows)} series x {plus.shape[1]} features; between-series variance of f(x) "
        f"{total:.4g}: even part {between_variance(even) / total:.1%}, odd part "
        f"{between_variance(odd) / total:.1%}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for name, features in (("pooled", plus), ("even", even), ("odd", odd)):
        _write(args.out / f"{name}.npz", rows, features, f"BrainHarmonix-F pooled, {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
