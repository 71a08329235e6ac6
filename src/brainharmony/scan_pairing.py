"""Checking one subject's images and pairing each usable BOLD run with a T1w.

Pairing rule: a BOLD run takes the T1w of its own session; when that session has
none, the subject's first usable T1w in session order (``t1w_session`` records
which). When a session has several usable T1w images, the first in name order is
used and a warning says so. Two usable BOLD runs with the same subject, session
and run (e.g. ``acq-`` or ``echo-`` variants) cannot both be rows: the first in
name order is kept, the other is reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainharmony.bids_checks import BoldFacts, Rejected, TrConflict, check_bold, check_t1w
from brainharmony.bids_names import (
    BOLD_ENTITIES,
    T1W_ENTITIES,
    BadName,
    ParsedName,
    expected_folder,
    natural_key,
    parse_name,
)
from brainharmony.bids_tree import NA, BidsTree, Candidate, Exclusion, pybids_metadata
from brainharmony.nifti_checks import DEFAULT_TR_RANGE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckSettings:
    """The per-run rules (see :func:`brainharmony.ingest.ingest_dataset`)."""

    task: str = "rest"
    min_volumes: int = 50
    tr_tolerance: float = 0.01
    tr_conflict: TrConflict = "warn"
    tr_range: tuple[float, float] = DEFAULT_TR_RANGE


@dataclass
class SubjectOutcome:
    """One subject's usable runs (scans.tsv rows without dataset/site/phenotypes),
    exclusions and warnings."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[Exclusion] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Bold:
    candidate: Candidate
    parsed: ParsedName
    facts: BoldFacts
    sidecar: Path | None


def check_subject(
    subject: str,
    tree: BidsTree,
    layout: Any,
    indexed: set[str],
    settings: CheckSettings,
) -> SubjectOutcome:
    """Check every image of one subject and pair its usable BOLD runs with a T1w.

    Parameters
    ----------
    subject : str
        A valid subject label present in ``tree.subjects``.
    tree : BidsTree
        The walked dataset.
    layout : bids.BIDSLayout
        The pybids layout (for metadata with inheritance).
    indexed : set of str
        Absolute paths pybids indexed.
    settings : CheckSettings
        Task and per-run rules.

    Returns
    -------
    SubjectOutcome
        Rows in (session, run) order; one exclusion per rejected file, plus one
        subject-level exclusion when the subject has no BOLD for the task or no
        usable T1w.
    """
    folder = tree.subjects[subject]
    out = SubjectOutcome()
    t1ws: list[tuple[str, str, Path]] = []
    bolds: list[_Bold] = []
    n_t1w = n_bold = 0
    for cand in tree.candidates[subject]:
        is_bold = cand.path.name.endswith(("_bold.nii", "_bold.nii.gz"))
        try:
            parsed = parse_name(cand.path.name, allowed=BOLD_ENTITIES if is_bold else T1W_ENTITIES)
        except BadName as err:
            out.excluded.append(Exclusion(subject, cand.session, NA, cand.path, err.reason))
            n_bold += is_bold
            n_t1w += not is_bold
            continue
        session, run = parsed.get("ses") or NA, parsed.get("run") or NA
        if is_bold and parsed.get("task") != settings.task:
            if parsed.get("task") is None:
                reason = "BOLD file name has no task entity"
                out.excluded.append(Exclusion(subject, session, run, cand.path, reason))
                n_bold += 1
            else:
                logger.debug("%s: task is not %r; not considered", cand.path, settings.task)
                if cand.problem is not None:
                    out.warnings.append(f"{cand.path}: {cand.problem}")
            continue
        n_bold += is_bold
        n_t1w += not is_bold
        try:
            if cand.problem is not None:  # a link not followed, a named pipe, ...
                raise Rejected(cand.problem)
            _check_place(cand.path, parsed, "func" if is_bold else "anat", tree.root, indexed)
            sidecars = tree.sidecars_for(cand.path, parsed)
            if is_bold:
                facts = check_bold(
                    cand.path,
                    pybids_metadata(layout, cand.path),
                    sidecars,
                    min_volumes=settings.min_volumes,
                    tr_tolerance=settings.tr_tolerance,
                    tr_conflict=settings.tr_conflict,
                    tr_range=settings.tr_range,
                )
                out.warnings.extend(facts.warnings)
                nearest = sidecars[-1][0] if sidecars else None
                bolds.append(_Bold(cand, parsed, facts, nearest))
            else:
                check_t1w(cand.path)
                t1ws.append((session, run, cand.path))
        except Rejected as err:
            out.excluded.append(Exclusion(subject, session, run, cand.path, err.reason))

    if not bolds:
        if n_bold == 0:
            reason = f"no BOLD for task {settings.task!r}"
            out.excluded.append(Exclusion(subject, NA, NA, folder, reason))
        return out
    if not t1ws:
        reason = "no T1w for subject" if n_t1w == 0 else "no usable T1w for subject"
        out.excluded.append(Exclusion(subject, NA, NA, folder, reason))
        return out

    anat = choose_t1w(subject, t1ws, out.warnings)
    first_session = min(anat, key=natural_key)
    kept: dict[tuple[str, str], Path] = {}
    for bold in sorted(bolds, key=_bold_order):
        session = bold.parsed.get("ses") or NA
        run = bold.parsed.get("run") or NA
        path = bold.candidate.path
        if (session, run) in kept:
            reason = (
                f"same subject/session/run as {kept[(session, run)].name}, which is used "
                "(acq/ce/rec/dir/echo/part variants are not told apart)"
            )
            out.excluded.append(Exclusion(subject, session, run, path, reason))
            continue
        kept[(session, run)] = path
        t1w_session = session if session in anat else first_session
        out.rows.append(
            {
                "subject": subject,
                "session": session,
                "run": run,
                "t1w": str(anat[t1w_session]),
                "t1w_session": t1w_session,
                "bold": str(path),
                "bold_sidecar": str(bold.sidecar) if bold.sidecar is not None else None,
                "tr": bold.facts.tr,
                "n_volumes": bold.facts.n_volumes,
                "duration_s": round(bold.facts.tr * bold.facts.n_volumes, 6),
                "n_slices": bold.facts.n_slices,
                "has_slice_timing": bold.facts.has_slice_timing,
            }
        )
    return out


def choose_t1w(
    subject: str, t1ws: list[tuple[str, str, Path]], warnings: list[str]
) -> dict[str, Path]:
    """The T1w used per session: the first by run and name, with a warning when several.

    Parameters
    ----------
    subject : str
        Subject label (for the warning).
    t1ws : list of (session, run, path)
        The subject's usable T1w images.
    warnings : list of str
        Appended to.

    Returns
    -------
    dict of str to Path
        Session label (``n/a`` when none) -> T1w path.
    """
    by_session: dict[str, list[Path]] = {}
    for session, _run, path in sorted(
        t1ws, key=lambda t: (natural_key(t[0]), natural_key(t[1]), t[2].name)
    ):
        by_session.setdefault(session, []).append(path)
    for session, paths in by_session.items():
        if len(paths) > 1:
            where = f"sub-{subject}" + (f" ses-{session}" if session != NA else "")
            warnings.append(f"{where}: {len(paths)} usable T1w images; using {paths[0].name}")
    return {session: paths[0] for session, paths in by_session.items()}


def _check_place(
    path: Path, parsed: ParsedName, datatype: str, root: Path, indexed: set[str]
) -> None:
    actual = path.parent.relative_to(root).as_posix()
    expected = expected_folder(parsed, datatype).as_posix()
    if actual != expected:
        raise Rejected(f"file belongs in {expected}/ but is in {actual}/")
    if str(path) not in indexed:
        raise Rejected("not indexed by pybids")


def _bold_order(bold: _Bold) -> tuple[Any, ...]:
    return (
        natural_key(bold.parsed.get("ses") or NA),
        natural_key(bold.parsed.get("run") or NA),
        bold.candidate.path.name,
    )
