"""The result record every benchmark script writes, so one report can gather them.

Each ``bench_*.py`` keeps its own detailed JSON and adds, at the top level:

* ``benchmark`` (its registry name), ``schema_version`` and ``title``;
* ``comparisons``: one record per side-by-side comparison (:func:`comparison`): what
  was compared, our value and the peer's (seconds, or a rate), the ratio, the data size,
  the repeats and the statistic, the threads, the peer's package and version, and the
  accuracy agreement where the benchmark measures one;
* ``facts``: further measured figures (:func:`fact`), e.g. a peak memory;
* ``notes``: sentences about the method (no figures: figures go in facts);
* ``env``: the load average at the start and end of the script, versions.

Fair timing, the same for every benchmark: :func:`pin_threads` sets one thread count for
both sides (BLAS and OpenMP pools through threadpoolctl, torch's intra-op threads) and
records what the pools report; :func:`interleaved_times` gives every side the same
untimed warm-up calls and the same number of timed repeats, round by round with the
order rotated, so background load hits both alike. A comparison with a target names its
accuracy criterion, and its target is "met" only when the speed ratio and the accuracy
criterion both hold (:func:`comparison`).

``benchmarks/run_all.py`` runs the scripts and renders ``docs/performance.md`` from
these records only. The scripts run as files (``python benchmarks/bench_x.py``), so
they import this module as ``benchlib`` from their own folder.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
TARGET_OPS = (">=", "<=")
#: Environment variables that size the BLAS / OpenMP pools of a process at start-up
#: (``run_all.py`` sets them for each benchmark's subprocess; :func:`pin_threads` then
#: limits the pools that are loaded, which covers libraries that ignore them).
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_PINNED: list[Any] = []  # keeps the threadpoolctl limiter alive for the process


def thread_env(threads: int) -> dict[str, str]:
    """The environment variables that start a process's thread pools at ``threads``."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    return dict.fromkeys(THREAD_ENV_VARS, str(threads))


def pin_threads(threads: int, *, torch_threads: bool = True) -> dict[str, Any]:
    """Run every thread pool of this process with ``threads`` threads; what they report.

    Loads numpy, scipy's linear algebra and (when ``torch_threads`` and installed) torch
    first, so their BLAS and OpenMP pools exist, then limits them all with threadpoolctl
    and sets torch's intra-op threads. Pools loaded later (a peer imported afterwards)
    start from :data:`THREAD_ENV_VARS`, which ``run_all.py`` sets; call this again after
    importing a peer to limit its pools too. Returns ``{"threads", "torch", "pools"}``,
    the pools as threadpoolctl lists them (API, library, threads): the JSON records it.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    import numpy  # noqa: F401  (loads its BLAS)
    from threadpoolctl import threadpool_info, threadpool_limits

    try:
        import scipy.linalg  # noqa: F401  (loads scipy's BLAS / LAPACK)
    except ImportError:
        pass
    torch_n = None
    if torch_threads:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            torch.set_num_threads(threads)
            torch_n = torch.get_num_threads()
    _PINNED.append(threadpool_limits(limits=threads))
    pools = [
        {
            "user_api": p.get("user_api"),
            "internal_api": p.get("internal_api"),
            "library": Path(p.get("filepath", "")).name,
            "num_threads": p.get("num_threads"),
        }
        for p in threadpool_info()
    ]
    over = [p for p in pools if (p["num_threads"] or 0) > threads]
    if over:
        raise RuntimeError(f"thread pools still above {threads} thread(s) after pinning: {over}")
    return {"threads": threads, "torch": torch_n, "pools": pools}


def interleaved_times(
    funcs: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall times (s) of ``repeats`` calls of each function, interleaved, after warm-up.

    Every function first runs ``warmup`` untimed calls; then each of the ``repeats``
    rounds times one call of every function, the order rotated by one each round (so no
    side always runs first, right after the other evicted its data from the caches).
    Every side gets the same warm-up and the same number of repeats.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0; got {repeats}, {warmup}")
    names = list(funcs)
    for _ in range(warmup):
        for name in names:
            funcs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            funcs[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median_times(times: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The median of each side's times."""
    return {name: statistics.median(values) for name, values in times.items()}


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def loadavg() -> list[float]:
    """The 1-, 5- and 15-minute load averages of the machine."""
    return [float(x) for x in os.getloadavg()]


def environment(**extra: Any) -> dict[str, Any]:
    """The process's environment: python, numpy, torch, CPU count, load average now."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": package_version("numpy"),
        "torch": package_version("torch"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_start": loadavg(),
    }
    env.update(extra)
    return env


def _ratio(ours: float, peer: float, higher_is_better: bool) -> float:
    if not (ours > 0 and peer > 0):
        raise ValueError(f"values must be positive to form a ratio; got ours {ours}, peer {peer}")
    return ours / peer if higher_is_better else peer / ours


def comparison(
    *,
    key: str,
    what: str,
    ours_label: str,
    ours_value: float,
    unit: str,
    peer_label: str,
    peer_package: str,
    peer_version: str | None,
    peer_value: float | None,
    size: str,
    repeats: int,
    peer_repeats: int | None = None,
    statistic: str = "median",
    threads: str | int = "default",
    higher_is_better: bool = False,
    target: tuple[str, float] | None = None,
    target_source: str | None = None,
    agreement: Sequence[Mapping[str, Any]] = (),
    peer_status: str | None = None,
    accuracy_criterion: str | None = None,
    accuracy_ok: bool | None = None,
    warmup: int | None = None,
) -> dict[str, Any]:
    """One side-by-side comparison, with its ratio oriented so that > 1 favours ours.

    Parameters
    ----------
    key : str
        Short identifier, unique within the benchmark (``"parcellation_nilearn"``).
    what : str
        What was compared, in words (the report's "comparison" column).
    ours_label, peer_label : str
        The two things timed (function or tool and its settings).
    ours_value, peer_value : float
        The measured figures in ``unit``. ``peer_value`` is None when the peer could not
        run; ``peer_status`` then says why.
    unit : str
        ``"s"`` (lower is better) or a rate such as ``"GFLOP/s"`` (``higher_is_better``).
    peer_package, peer_version : str
        The peer's distribution and version (None when it is not installed).
    size : str
        The data the two ran on.
    repeats : int
        Timed repeats behind ``statistic`` (1 for a single run), ours.
    peer_repeats : int, optional
        The peer's, when it ran a different number of times (default: ``repeats``).
    threads : str or int
        Threads each tool was allowed (e.g. ``1``, ``"ours 2, peer 1"``).
    higher_is_better : bool
        True for rates: the ratio is then ours / peer, else peer / ours.
    target : (op, value), optional
        The stage issue's target on the ratio, e.g. ``(">=", 5.0)``.
    agreement : sequence of dict
        Accuracy figures (:func:`agreement_value`, :func:`agreement_pair`).
    peer_status : str, optional
        Why the peer is missing; required when ``peer_value`` is None.
    accuracy_criterion : str, optional
        What accuracy the comparison requires, in words (e.g. "ours within 1.5x of the
        peer's median error or below 0.05 mm"); required with a ``target``.
    accuracy_ok : bool, optional
        Whether the criterion held on this run (None: not measurable, e.g. no peer, or a
        criterion that says there is nothing to check).
    warmup : int, optional
        Untimed warm-up calls each side ran before the timed repeats.

    Returns
    -------
    dict
        The JSON-ready record, with ``ratio``, ``speed_ok`` and ``meets_target``
        computed: the target is met only when the speed ratio reaches it and the
        accuracy criterion did not fail.
    """
    if target is not None and target[0] not in TARGET_OPS:
        raise ValueError(f"target operator must be one of {TARGET_OPS}; got {target[0]!r}")
    if target is not None and not accuracy_criterion:
        raise ValueError(f"{key}: a target needs an accuracy criterion (accuracy_criterion)")
    if peer_value is None and not peer_status:
        raise ValueError(f"{key}: peer_status must say why the peer value is missing")
    ratio = None if peer_value is None else _ratio(ours_value, peer_value, higher_is_better)
    speed_ok = meets = None
    if target is not None and ratio is not None:
        speed_ok = ratio >= target[1] if target[0] == ">=" else ratio <= target[1]
        meets = speed_ok and accuracy_ok is not False
    return {
        "key": key,
        "what": what,
        "ours": {"label": ours_label, "value": float(ours_value)},
        "peer": {
            "label": peer_label,
            "package": peer_package,
            "version": peer_version,
            "value": None if peer_value is None else float(peer_value),
        },
        "peer_status": "ok" if peer_value is not None else f"not available: {peer_status}",
        "unit": unit,
        "higher_is_better": higher_is_better,
        "ratio": ratio,
        "size": size,
        "repeats": int(repeats),
        "peer_repeats": int(repeats if peer_repeats is None else peer_repeats),
        "statistic": statistic,
        "threads": threads,
        "target": None if target is None else {"op": target[0], "value": float(target[1])},
        "target_source": target_source,
        "speed_ok": speed_ok,
        "accuracy_criterion": accuracy_criterion,
        "accuracy_ok": None if accuracy_ok is None else bool(accuracy_ok),
        "meets_target": meets,
        "warmup": warmup,
        "agreement": [dict(a) for a in agreement],
    }


def agreement_value(label: str, value: float, unit: str = "") -> dict[str, Any]:
    """One accuracy figure about the pair (e.g. the largest relative difference)."""
    return {"label": label, "value": float(value), "unit": unit}


def agreement_pair(label: str, ours: float, peer: float | None, unit: str = "") -> dict[str, Any]:
    """One accuracy figure measured for each side (e.g. error against a known truth)."""
    return {
        "label": label,
        "ours": float(ours),
        "peer": None if peer is None else float(peer),
        "unit": unit,
    }


def fact(label: str, value: float, unit: str = "") -> dict[str, Any]:
    """A further measured figure of the benchmark (not a comparison)."""
    return {"label": label, "value": float(value), "unit": unit}


def result_document(
    *,
    benchmark: str,
    title: str,
    comparisons: Sequence[Mapping[str, Any]],
    env: Mapping[str, Any],
    facts: Sequence[Mapping[str, Any]] = (),
    notes: Sequence[str] = (),
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The common top level of a benchmark's JSON; ``details`` keeps its own fields."""
    doc: dict[str, Any] = dict(details or {})
    env_out = dict(env)
    env_out.setdefault("loadavg_end", loadavg())
    doc.update(
        {
            "benchmark": benchmark,
            "schema_version": SCHEMA_VERSION,
            "title": title,
            "comparisons": [dict(c) for c in comparisons],
            "facts": [dict(f) for f in facts],
            "notes": list(notes),
            "env": env_out,
        }
    )
    return doc


def write_result(path: Path | None, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` as JSON atomically (nothing when ``path`` is None)."""
    if path is None:
        return
    from brainharmony.io import write_json

    write_json(path, doc)


# ----------------------------------------------------------------------- formatting
def format_number(value: float) -> str:
    """A figure to three significant digits, without an exponent between 1e-3 and 1e4."""
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 1e4 or a < 1e-3:
        return f"{value:.1e}"
    if a >= 1000:
        return f"{value:,.0f}"
    text = f"{value:#.3g}"  # keeps trailing zeros: 4.00, 0.120
    return text[:-1] if text.endswith(".") else text


def format_value(value: float | None, unit: str) -> str:
    """A measured value with its unit; seconds under 0.1 are shown in ms."""
    if value is None:
        return "-"
    if unit == "s" and abs(value) < 0.1:
        return f"{format_number(1e3 * value)} ms"
    return f"{format_number(value)} {unit}".strip()


def format_ratio(record: Mapping[str, Any]) -> str:
    """The ratio cell: ``"45.6x"``, or why there is none."""
    if record.get("ratio") is None:
        return "peer not available"
    return f"{format_number(record['ratio'])}x"


def format_target(record: Mapping[str, Any]) -> str:
    """The target cell: ``">= 5x: met"``, or ``"-"`` without a target."""
    target = record.get("target")
    if not target:
        return "-"
    text = f"{target['op']} {target['value']:g}x"
    meets = record.get("meets_target")
    if meets is None:
        return text
    if meets:
        return f"{text}: met"
    why = [
        name
        for name, ok in (("speed", record.get("speed_ok")), ("accuracy", record.get("accuracy_ok")))
        if ok is False
    ]
    return f"{text}: **not met** ({', '.join(why)})"


def format_agreement(record: Mapping[str, Any]) -> str:
    """The agreement cell: each accuracy figure, ``"; "``-separated."""
    parts = []
    for a in record.get("agreement", []):
        unit = f" {a['unit']}" if a.get("unit") else ""
        if "value" in a:
            parts.append(f"{a['label']} {format_number(a['value'])}{unit}")
        else:
            peer = "-" if a.get("peer") is None else f"{format_number(a['peer'])}{unit}"
            parts.append(f"{a['label']}: ours {format_number(a['ours'])}{unit}, peer {peer}")
    return "; ".join(parts) or "-"


def format_peer(record: Mapping[str, Any]) -> str:
    """The peer's package and version, ``"nilearn 0.13.1"``."""
    peer = record["peer"]
    return f"{peer['package']} {peer['version'] or '(not installed)'}"


def _repeats(n: int, statistic: str) -> str:
    return "single run" if n == 1 else f"{statistic} of {n}"


def format_accuracy(record: Mapping[str, Any]) -> str:
    """The accuracy criterion and whether it held, ``"... (held)"``; ``""`` without one."""
    criterion = record.get("accuracy_criterion")
    if not criterion:
        return ""
    ok = record.get("accuracy_ok")
    verdict = "not checked" if ok is None else ("held" if ok else "**failed**")
    return f"{criterion} ({verdict})"


def format_data(record: Mapping[str, Any]) -> str:
    """The data cell: size, then the statistic over the repeats (the peer's if different)."""
    reps = record["repeats"]
    peer_reps = record.get("peer_repeats", reps)
    how = _repeats(reps, record["statistic"])
    if peer_reps != reps and record["peer"]["value"] is not None:
        how = f"ours {how}, peer {_repeats(peer_reps, record['statistic'])}"
    if record.get("warmup"):
        how += f" after {record['warmup']} warm-up"
    return f"{record['size']}; {how}"


def cell(text: object) -> str:
    """``text`` made safe for a Markdown table cell (pipes escaped, one line)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """The comparisons of one benchmark as a Markdown table (the scripts' printout)."""
    lines = [
        "| comparison | data | ours | peer | peer package | ratio (> 1: ours better) "
        "| target | agreement | threads |",
        "|---|---|---:|---:|---|---:|---|---|---|",
    ]
    for c in comparisons:
        cells = [
            c["what"],
            format_data(c),
            format_value(c["ours"]["value"], c["unit"]),
            format_value(c["peer"]["value"], c["unit"]),
            format_peer(c),
            format_ratio(c),
            format_target(c),
            format_agreement(c),
            c["threads"],
        ]
        lines.append("| " + " | ".join(cell(x) for x in cells) + " |")
    return "\n".join(lines)
