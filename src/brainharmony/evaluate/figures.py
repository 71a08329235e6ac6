"""Report figures: matplotlib (Agg, no pyplot state) to PNG bytes.

Every function returns the PNG's bytes; :func:`data_uri` turns them into the
``data:image/png;base64,...`` URI the self-contained report embeds. PNG metadata is
fixed so the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_PNG_META = {"Software": None}


def _figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=96, layout=layout)


def png_bytes(fig: Any) -> bytes:
    """Render a matplotlib Figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=_PNG_META)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """A confusion matrix with counts and row percentages.

    Parameters
    ----------
    cm : ndarray of shape (n_classes, n_classes)
        Rows: true class; columns: predicted class.
    classes : sequence of str
    title : str
    """
    n = len(classes)
    fig = _figure(1.3 + 0.7 * n, 1.1 + 0.7 * n)
    ax = fig.subplots()
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            colour = "white" if frac[i, j] > 0.6 else "black"
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{100 * frac[i, j]:.0f}%",
                ha="center",
                va="center",
                fontsize=8,
                color=colour,
            )
    ax.set_xticks(range(n), [str(c) for c in classes], fontsize=8)
    ax.set_yticks(range(n), [str(c) for c in classes], fontsize=8)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(title, fontsize=9)
    return png_bytes(fig)


def scatter_figure(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str, unit: str = ""
) -> bytes:
    """Predicted against true values, one panel per model, identity line drawn.

    Parameters
    ----------
    panels : mapping of str to (y_true, y_pred)
    title : str
    unit : str
        Axis unit label.
    """
    n = max(len(panels), 1)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig = _figure(2.6 * cols, 2.5 * rows + 0.3)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    values = [v for pair in panels.values() for v in pair if len(v)]
    lo = float(min(np.min(v) for v in values)) if values else 0.0
    hi = float(max(np.max(v) for v in values)) if values else 1.0
    pad = 0.05 * (hi - lo or 1.0)
    for ax, (name, (t, p)) in zip(axes, panels.items(), strict=False):
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=0.8)
        ax.scatter(t, p, s=9, alpha=0.7)
        r = np.corrcoef(t, p)[0, 1] if len(t) > 1 and np.ptp(t) > 0 and np.ptp(p) > 0 else np.nan
        mae = float(np.mean(np.abs(np.asarray(t) - np.asarray(p)))) if len(t) else np.nan
        ax.set_title(f"{name}\nMAE {mae:.2f}, r {r:.2f}", fontsize=8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel(f"true {unit}".strip(), fontsize=8)
        ax.set_ylabel(f"predicted {unit}".strip(), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)


def sweep_figure(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, str]],
    title: str,
    xlabel: str = "x",
    log_x: bool = False,
) -> bytes:
    """A metric's mean ± std against a value per model (e.g. the hub-token count), one
    panel per task.

    Parameters
    ----------
    panels : mapping of str to (x, mean, std, ylabel)
        Panel title -> the points (sorted by x here) and the metric's axis label.
    title : str
    xlabel : str
    log_x : bool
        Base-2 logarithmic x axis, ticks at the values.
    """
    n = max(len(panels), 1)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig = _figure(3.2 * cols, 2.7 * rows + 0.3)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (name, (x, mean, std, ylabel)) in zip(axes, panels.items(), strict=False):
        order = np.argsort(np.asarray(x, float), kind="stable")
        xs, ms, ss = (np.asarray(v, float)[order] for v in (x, mean, std))
        ax.errorbar(xs, ms, yerr=ss, marker="o", ms=4, lw=1.2, capsize=3)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.minorticks_off()
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)


def curves_figure(records: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """Training loss (and learning rate, right axis) against the step.

    Parameters
    ----------
    records : sequence of mapping
        ``metrics.jsonl`` objects with ``step`` and ``loss`` (``lr`` optional); other
        numeric keys ending in ``loss`` are drawn too.
    """
    fig = _figure(5.0, 2.8)
    ax = fig.subplots()
    steps = np.asarray([float(r.get("step", i)) for i, r in enumerate(records)])
    keys = sorted(
        {
            k
            for r in records
            for k, v in r.items()
            if k.endswith("loss") and isinstance(v, int | float)
        }
    )
    for key in keys or ["loss"]:
        vals = np.asarray([float(r.get(key, np.nan)) for r in records])
        ok = np.isfinite(vals)
        if ok.any():
            ax.plot(steps[ok], vals[ok], lw=1.2, label=key)
    positive = all(
        float(r.get(k, 1.0)) > 0 for r in records for k in keys if isinstance(r.get(k), int | float)
    )
    if positive and keys:
        ax.set_yscale("log")
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.tick_params(labelsize=7)
    if any("lr" in r for r in records):
        ax2 = ax.twinx()
        lr = np.asarray([float(r.get("lr", np.nan)) for r in records])
        ax2.plot(steps, lr, color="0.5", lw=0.8, ls="--", label="lr")
        ax2.set_ylabel("learning rate", fontsize=8, color="0.4")
        ax2.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    return png_bytes(fig)


def brain_figure(
    values: np.ndarray,
    centroids: np.ndarray | None,
    title: str,
    cmap: str = "RdBu_r",
    symmetric: bool = True,
) -> bytes:
    """Per-ROI values on the brain: parcel centroids seen from the left, top and back.

    Parameters
    ----------
    values : ndarray of shape (n_rois,)
    centroids : ndarray of shape (n_rois, 3) or None
        MNI coordinates (mm). Without them the values are drawn as a per-ROI profile.
    title : str
    cmap : str
    symmetric : bool
        Colour range symmetric around 0 (signed values) or from the minimum.
    """
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
    vmin = -vmax if symmetric else (float(finite.min()) if finite.size else 0.0)
    if not symmetric and finite.size:
        vmax = float(finite.max())
    if centroids is None or centroids.shape[0] != v.size:
        fig = _figure(6.0, 1.8)
        ax = fig.subplots()
        ax.plot(np.arange(1, v.size + 1), v, lw=0.8)
        ax.set_xlabel("ROI", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(title + " (per ROI; no centroids)", fontsize=9)
        return png_bytes(fig)
    fig = _figure(7.2, 2.5, layout=None)  # axes are off: a fixed layout is enough
    fig.subplots_adjust(left=0.01, right=0.88, bottom=0.02, top=0.82, wspace=0.05)
    axes = fig.subplots(1, 3)
    views = (("left", 1, 2), ("top", 0, 1), ("back", 0, 2))
    sc = None
    for ax, (name, a, b) in zip(axes, views, strict=True):
        depth = {"left": -centroids[:, 0], "top": centroids[:, 2], "back": -centroids[:, 1]}
        order = np.argsort(depth[name], kind="stable")  # nearest to the viewer drawn last
        xs = -centroids[order, a] if name == "left" else centroids[order, a]
        sc = ax.scatter(
            xs,
            centroids[order, b],
            c=v[order],
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            s=14,
            edgecolors="none",
        )
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(name, fontsize=8)
    if sc is not None:
        fig.colorbar(sc, cax=fig.add_axes((0.9, 0.15, 0.015, 0.6)))
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)


def expert_map_figure(weights: np.ndarray, title: str, roi_labels: Sequence[str] = ()) -> bytes:
    """ROI x expert weights as a heat map (experts in rows), and each ROI's top expert.

    Parameters
    ----------
    weights : ndarray of shape (n_rois, n_experts)
        Mean gate weight per ROI and expert (NaN: ROI without data, drawn blank).
    title : str
    roi_labels : sequence of str, optional
        Tick labels of the ROIs (only drawn for at most 40 ROIs).
    """
    w = np.asarray(weights, dtype=float)
    if w.ndim != 2:
        raise ValueError(f"weights must be (n_rois, n_experts); got shape {w.shape}")
    r, e = w.shape
    fig = _figure(7.2, 1.4 + 0.28 * e)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(e, 1))
    image = top.imshow(
        np.ma.masked_invalid(w.T), aspect="auto", cmap="viridis", vmin=0.0, interpolation="none"
    )
    top.set_ylabel("expert", fontsize=8)
    top.set_yticks(range(e))
    top.tick_params(labelsize=7)
    fig.colorbar(image, ax=top, label="mean gate weight", shrink=0.9)
    valid = np.isfinite(w).all(axis=1)
    dominant = np.where(valid, np.argmax(np.nan_to_num(w, nan=-1.0), axis=1), -1)
    bottom.imshow(
        np.ma.masked_less(dominant[None, :].astype(float), 0),
        aspect="auto",
        cmap="tab10" if e <= 10 else "tab20",
        vmin=0,
        vmax=max(e - 1, 1),
        interpolation="none",
    )
    bottom.set_yticks([0], ["top expert"], fontsize=7)
    bottom.set_xlabel("ROI", fontsize=8)
    if roi_labels and len(roi_labels) == r and r <= 40:
        bottom.set_xticks(range(r), list(roi_labels), rotation=90, fontsize=6)
    bottom.tick_params(labelsize=7)
    top.set_title(title, fontsize=9)
    return png_bytes(fig)
