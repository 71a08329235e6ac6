"""Planning of the functional rules (``workflow/rules/func.smk``): settings, paths, options.

The rules read the ``func:`` config block (:func:`settings_from_config`, of a config
that validation filled with the schema's defaults), expand over the BOLD runs of the
ingest checkpoint's ``scans.tsv`` (:func:`runs`), and take every path from
:mod:`.naming` and the anatomy stage's :func:`brainharmony.anat.derivatives.anat_paths`,
so rules and package agree.

Wildcards of the per-run rules: ``dataset``, ``fdir`` (``sub-<l>`` or
``sub-<l>/ses-<l>``) and ``fstem`` (``sub-<l>[_ses-<l>]_task-<t>[_run-<n>]``).
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Shared defaults live in the stage's leaf module (the stage never imports planning).
from brainharmony.func.defaults import (
    COREG_MAX_BBR_COST,
    COREG_MIN_DICE,
    COREG_MIN_NMI,
    DEFAULT_COREG,
    DEFAULT_STRATEGY,
    MIN_SEGMENT,
    canonical_coreg,
)
from brainharmony.planning.anat import OUT_DIR as ANAT_DIR

BACKENDS: tuple[str, ...] = ("native", "fmriprep", "fmriprep-derivatives")

FDIR = r"sub-[a-zA-Z0-9]+(/ses-[a-zA-Z0-9]+)?"
FSTEM = r"sub-[a-zA-Z0-9]+(_ses-[a-zA-Z0-9]+)?_task-[a-zA-Z0-9]+(_run-[a-zA-Z0-9]+)?"
#: The func stage's output folder of a dataset.
OUT_DIR = "results/func/{dataset}"
#: Scheduler hints (per run; measured on the demo and extrapolated, see docs/func.md).
MEM_MB = {"native": 6000, "denoise": 4000, "fmriprep": 16000}
RUNTIME_MIN = {"native": 30, "denoise": 15, "fmriprep": 720}


@dataclass(frozen=True)
class FuncPlan:
    """The ``func:`` config block with defaults filled in."""

    backend: str = "native"
    resolution_mm: float = 2.0
    strategy: str = DEFAULT_STRATEGY
    fd_threshold: float | None = 0.5
    min_segment: int = MIN_SEGMENT
    censor_before: int = 0
    censor_after: int = 0
    band: tuple[float | None, float | None] = (0.01, 0.1)
    filter_order: int = 2
    order: str = "regress-filter"
    detrend: bool = True
    edges: str = "nearest"
    min_kept: int = 20
    min_parcel_voxels: int = 3
    scale: str = "psc"
    slice_timing: bool = True
    stc_method: str = "fourier"
    coreg: str = DEFAULT_COREG
    coreg_min_dice: float = COREG_MIN_DICE
    coreg_max_bbr_cost: float = COREG_MAX_BBR_COST
    coreg_min_nmi: float = COREG_MIN_NMI
    keep_bold: bool = False
    atlas_source: str = "auto"
    atlas_path: str | None = None
    atlas_space: str | None = None
    anat_template: str = "MNI152NLin2009aAsym"
    fmriprep: Mapping[str, Any] = field(default_factory=dict)
    #: Datasets of kind ``parcellated``: their series come from the run table (rule
    #: ``parcel_series``), no func job is planned for them.
    parcellated: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"func.backend must be one of {BACKENDS}, got {self.backend!r}")
        self.denoise_settings()  # validates strategy, band, order...
        canonical_coreg(self.coreg)
        from brainharmony.func.atlas_lookup import SOURCES

        if self.atlas_source not in SOURCES:
            raise ValueError(
                f"func.atlas.source must be one of {SOURCES}, got {self.atlas_source!r}"
            )
        if self.atlas_path and self.atlas_source == "rebuild":
            raise ValueError("func.atlas.path is set but func.atlas.source is 'rebuild'")

    def denoise_settings(self) -> Any:
        from brainharmony.func.denoise import DenoiseSettings

        return DenoiseSettings(
            strategy=self.strategy,
            fd_threshold=self.fd_threshold,
            min_segment=self.min_segment,
            censor_before=self.censor_before,
            censor_after=self.censor_after,
            high_pass=self.band[0],
            low_pass=self.band[1],
            filter_order=self.filter_order,
            detrend=self.detrend,
            edges=self.edges,  # type: ignore[arg-type]
            min_kept=self.min_kept,
            order=self.order,  # type: ignore[arg-type]
        )

    @property
    def space(self) -> str:
        """Space entity of the denoised outputs."""
        if self.backend == "native":
            return self.anat_template
        return str(self.fmriprep["space"])

    @property
    def res(self) -> str:
        from brainharmony.func.naming import res_label

        return res_label(self.resolution_mm)

    # What the rules read (PLAN.func.<name>): path patterns, options, scheduler hints.
    @property
    def out_dir(self) -> str:
        return OUT_DIR

    @property
    def fdir(self) -> str:
        return FDIR

    @property
    def fstem(self) -> str:
        return FSTEM

    @property
    def mem_mb(self) -> Mapping[str, int]:
        return MEM_MB

    @property
    def runtime_min(self) -> Mapping[str, int]:
        return RUNTIME_MIN

    @property
    def atlas_inputs(self) -> dict[str, str]:
        return atlas_inputs(self)

    @property
    def atlas_outputs(self) -> dict[str, str]:
        return atlas_outputs(self)

    @property
    def atlas_options(self) -> str:
        return atlas_options(self)

    @property
    def native_outputs(self) -> dict[str, str]:
        return native_outputs(self)

    @property
    def denoise_outputs(self) -> dict[str, str]:
        return denoise_outputs(self)

    @property
    def native_options(self) -> str:
        return native_options(self)

    @property
    def denoise_options(self) -> str:
        return denoise_options(self)

    @property
    def fmriprep_options(self) -> str:
        return fmriprep_options(self)

    @property
    def fmriprep_done(self) -> str:
        """The flag file of one participant's fMRIPrep run (wildcards ``dataset``,
        ``subject``)."""
        return fmriprep_done(self, "{dataset}", "{subject}", {})


def settings_from_config(config: Mapping[str, Any]) -> FuncPlan:
    """The func settings of a validated workflow config (schema defaults filled in).

    Raises
    ------
    ValueError
        An invalid value (the message names it).
    """
    block = config["func"]
    band = block["band"]
    if not isinstance(band, list | tuple) or len(band) != 2:
        raise ValueError(f"func.band must be [high_pass, low_pass] in Hz, got {band!r}")
    fd = block["fd_threshold"]
    atlas = block["atlas"]
    return FuncPlan(
        backend=str(block["backend"]),
        resolution_mm=float(block["resolution_mm"]),
        strategy=str(block["strategy"]),
        fd_threshold=None if fd is None else float(fd),
        min_segment=int(block["min_segment"]),
        censor_before=int(block["censor_before"]),
        censor_after=int(block["censor_after"]),
        band=(
            None if band[0] is None else float(band[0]),
            None if band[1] is None else float(band[1]),
        ),
        filter_order=int(block["filter_order"]),
        order=str(block["order"]),
        detrend=bool(block["detrend"]),
        edges=str(block["edges"]),
        min_kept=int(block["min_kept"]),
        min_parcel_voxels=int(block["min_parcel_voxels"]),
        scale=str(block["scale"]),
        slice_timing=bool(block["slice_timing"]),
        stc_method=str(block["stc_method"]),
        coreg=canonical_coreg(str(block["coreg"])),
        coreg_min_dice=float(block["coreg_min_dice"]),
        coreg_max_bbr_cost=float(block["coreg_max_bbr_cost"]),
        coreg_min_nmi=float(block["coreg_min_nmi"]),
        keep_bold=bool(block["keep_bold"]),
        atlas_source=str(atlas["source"]),
        atlas_path=None if atlas["path"] is None else str(atlas["path"]),
        atlas_space=None if atlas["space"] is None else str(atlas["space"]),
        anat_template=str(config["anat"]["template"]),
        fmriprep=dict(block["fmriprep"]),
        parcellated=tuple(
            sorted(n for n, ds in config["datasets"].items() if ds.get("kind") == "parcellated")
        ),
    )


# --------------------------------------------------------------------------------------
# Runs of the ingest checkpoint
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRow:
    """One BOLD run of ``scans.tsv``."""

    subject: str
    session: str | None
    run: str | None
    task: str
    bold: str
    bold_sidecar: str | None
    t1w: str
    t1w_session: str | None
    tr: float

    @property
    def fdir(self) -> str:
        return f"sub-{self.subject}" + (f"/ses-{self.session}" if self.session else "")

    @property
    def fstem(self) -> str:
        from brainharmony.func.naming import run_stem

        return run_stem(self.subject, self.session, self.task, self.run)


def _label(value: Any) -> str | None:
    text = "" if value is None else str(value)
    return None if text in ("", "n/a", "<NA>", "nan", "None") else text


def runs(scans_tsv: str | Path, task: str = "rest") -> list[RunRow]:
    """The BOLD runs listed in a ``scans.tsv`` (cached per file version)."""
    path = Path(scans_tsv)
    stat = path.stat()
    return list(_runs_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size, task))


@functools.lru_cache(maxsize=64)
def _runs_cached(path: str, _mtime: int, _size: int, task: str) -> tuple[RunRow, ...]:
    from brainharmony.ingest import read_scans

    scans = read_scans(path)
    out = []
    for row in scans.to_dict(orient="records"):
        out.append(
            RunRow(
                subject=str(row["subject"]),
                session=_label(row.get("session")),
                run=_label(row.get("run")),
                task=task,
                bold=str(row["bold"]),
                bold_sidecar=_label(row.get("bold_sidecar")),
                t1w=str(row["t1w"]),
                t1w_session=_label(row.get("t1w_session")),
                tr=float(row["tr"]),
            )
        )
    return tuple(out)


def run_for(scans_tsv: str | Path, fstem: str, task: str = "rest") -> RunRow:
    """The run of ``scans.tsv`` whose stem is ``fstem``.

    Raises
    ------
    ValueError
        When no row matches.
    """
    for row in runs(scans_tsv, task):
        if row.fstem == fstem:
            return row
    raise ValueError(f"no BOLD run {fstem} in {scans_tsv}")


# --------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------
def _outputs(plan: FuncPlan, space: str | None = None) -> Any:
    from brainharmony.func.naming import RunOutputs

    return RunOutputs(
        folder=Path(OUT_DIR) / "{fdir}" / "func",
        stem="{fstem}",
        space=space or plan.space,
        res=plan.res,
    )


def atlas_choice(plan: FuncPlan) -> Any:
    """The atlas for the BOLD's space (:attr:`FuncPlan.space`), looked up offline now.

    The official Schaefer-2018 volume when found, else the offline rebuild
    (:func:`brainharmony.func.atlas_lookup.resolve_atlas`, ``func.atlas``).

    Raises
    ------
    brainharmony.func.atlas_lookup.AtlasUnavailableError
        Nothing usable in that space (the message says what to provide).
    """
    from brainharmony.func.atlas_lookup import resolve_atlas

    return resolve_atlas(
        plan.space,
        plan.resolution_mm,
        source=plan.atlas_source,
        path=plan.atlas_path,
        path_space=plan.atlas_space,
    )


def atlas_options(plan: FuncPlan) -> str:
    """``brainharmony func atlas`` options that write :func:`atlas_choice`'s atlas."""
    return shlex.join(atlas_choice(plan).cli_args())


def atlas_inputs(plan: FuncPlan) -> dict[str, str]:
    """Files outside the workflow that :func:`atlas_choice`'s atlas is made from.

    The official volume and its label table, or the rebuild's grey-matter map when it
    is not nilearn's (so the atlas is rebuilt when they change).
    """
    choice = atlas_choice(plan)
    if choice.official is not None:
        return {
            "official": str(choice.official.image),
            "official_labels": str(choice.official.labels),
        }
    return {} if choice.grey_matter is None else {"grey_matter": str(choice.grey_matter)}


def atlas_outputs(plan: FuncPlan) -> dict[str, str]:
    """The atlas resource files of the configured space, resolution and atlas.

    Named for what :func:`atlas_choice` found: ``atlas-Schaefer2018_desc-
    400Parcels7Networks`` (official) or ``atlas-Schaefer400rebuilt_desc-7Networks``.
    """
    from brainharmony.func.atlas_resource import atlas_files

    choice = atlas_choice(plan)
    files = atlas_files("resources/atlas", plan.resolution_mm, choice.space, choice.source)
    return {
        "image": str(files.image),
        "labels": str(files.labels),
        "sidecar": str(files.sidecar),
        "tissues": str(files.tissues),
        "tissues_json": str(files.tissues_sidecar),
    }


def native_outputs(plan: FuncPlan) -> dict[str, str]:
    """Named preprocessing outputs of the native rule (patterns with the run wildcards).

    The rule also writes :func:`denoise_outputs`. The 4-D template-space BOLD (``bold``,
    ``bold_json``) is an output only with ``func.keep_bold``: the rule denoises and
    parcellates in memory, so nothing downstream reads it.
    """
    from brainharmony.io import sidecar_path

    o = _outputs(plan, plan.anat_template)
    bold = (
        {"bold": str(o.preproc_bold), "bold_json": str(sidecar_path(o.preproc_bold))}
        if plan.keep_bold
        else {}
    )
    return {
        **bold,
        "mask": str(o.coverage_mask),
        "mask_json": str(sidecar_path(o.coverage_mask)),
        "confounds": str(o.confounds),
        "confounds_json": str(sidecar_path(o.confounds)),
        "motion": str(o.motion),
        "motion_json": str(sidecar_path(o.motion)),
        "motion_xfm": str(o.motion_xfm),
        "coreg_xfm": str(o.coreg_xfm),
        "coreg_json": str(sidecar_path(o.coreg_xfm)),
        "boldref": str(o.boldref),
    }


def denoise_outputs(plan: FuncPlan) -> dict[str, str]:
    """Named outputs of the denoise/parcellate rule."""
    from brainharmony.io import sidecar_path

    o = _outputs(plan)
    out = {
        "timeseries": str(o.timeseries),
        "timeseries_json": str(sidecar_path(o.timeseries)),
        "raw": str(o.raw_timeseries),
        "raw_json": str(sidecar_path(o.raw_timeseries)),
        "fd_figure": str(o.fd_figure),
        "carpet_figure": str(o.carpet_figure),
        "fc_figure": str(o.fc_figure),
    }
    if plan.backend != "native":
        out.update(
            confounds=str(o.confounds),
            confounds_json=str(sidecar_path(o.confounds)),
            motion=str(o.motion),
            motion_json=str(sidecar_path(o.motion)),
        )
    return out


def anat_inputs(plan: FuncPlan, dataset: str, row: RunRow) -> dict[str, str]:
    """The anatomy-stage files a native run needs (its paired T1w's outputs).

    ``t1w_brain`` and ``t1w_brain_mask`` (the bias-corrected T1w and its brain mask in
    the T1w's own world) are the coregistration target; ``anat_sidecar`` (the sidecar
    of the template-space T1w) says whether the anatomy stage excluded the T1w.
    """
    from brainharmony.anat.derivatives import anat_paths
    from brainharmony.io import sidecar_path

    paths = anat_paths(
        ANAT_DIR.format(dataset=dataset), row.subject, row.t1w_session, plan.anat_template
    )
    return {
        "t1w_to_template": str(paths.xfm_to_template),
        "t1w_brain": str(paths.native_preproc),
        "t1w_brain_mask": str(paths.native_mask),
        "anat_sidecar": str(sidecar_path(paths.preproc)),
    }


def fmriprep_root(plan: FuncPlan, dataset: str, datasets: Mapping[str, Any]) -> str:
    """fMRIPrep output folder of a dataset.

    ``fmriprep`` backend: ``<func.fmriprep.output_root>/<dataset>``. Derivatives mode:
    ``func.fmriprep.derivatives[<dataset>]`` when given, else the same default.
    """
    if plan.backend == "fmriprep-derivatives":
        given = dict(plan.fmriprep.get("derivatives") or {})
        if dataset in given:
            return str(given[dataset])
    root = str(plan.fmriprep["output_root"])
    return f"{root}/{dataset}"


def fmriprep_work_dir(plan: FuncPlan, dataset: str, subject: str) -> str:
    """fMRIPrep's working folder of one participant (``func.fmriprep.work_root``)."""
    return f"{plan.fmriprep['work_root']}/{dataset}/sub-{subject}"


def fmriprep_inputs(
    plan: FuncPlan, dataset: str, row: RunRow, datasets: Mapping[str, Any]
) -> dict[str, str]:
    """fMRIPrep files of one run (derivatives mode: they must exist at planning time)."""
    from brainharmony.func.naming import run_stem

    root = Path(fmriprep_root(plan, dataset, datasets))
    space = plan.space
    res = plan.fmriprep["res"]
    sp = f"space-{space}" + (f"_res-{res}" if res else "")
    folder = root / row.fdir / "func"
    stem = run_stem(row.subject, row.session, row.task, row.run)
    return {
        "bold": str(folder / f"{stem}_{sp}_desc-preproc_bold.nii.gz"),
        "confounds": str(folder / f"{stem}_desc-confounds_timeseries.tsv"),
    }


def fmriprep_done(plan: FuncPlan, dataset: str, subject: str, datasets: Mapping[str, Any]) -> str:
    """Flag file of one participant's fMRIPrep run."""
    return f"{fmriprep_root(plan, dataset, datasets)}/.done/sub-{subject}.txt"


# --------------------------------------------------------------------------------------
# Command-line options
# --------------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    return "none" if value is None else repr(float(value))


def denoise_options(plan: FuncPlan) -> str:
    """``brainharmony func`` options that carry the denoising settings."""
    opts = [
        f"--strategy {shlex.quote(plan.strategy)}",
        f"--fd-threshold {_fmt(plan.fd_threshold)}",
        f"--min-segment {plan.min_segment}",
        f"--censor-before {plan.censor_before}",
        f"--censor-after {plan.censor_after}",
        f"--high-pass {_fmt(plan.band[0])}",
        f"--low-pass {_fmt(plan.band[1])}",
        f"--filter-order {plan.filter_order}",
        f"--order {plan.order}",
        f"--edges {plan.edges}",
        f"--min-kept {plan.min_kept}",
        f"--min-parcel-voxels {plan.min_parcel_voxels}",
        f"--scale {plan.scale}",
    ]
    if not plan.detrend:
        opts.append("--no-detrend")
    return " ".join(opts)


def native_options(plan: FuncPlan) -> str:
    """``brainharmony func native`` options of the preprocessing settings."""
    opts = [
        f"--coreg {plan.coreg}",
        f"--coreg-min-dice {plan.coreg_min_dice!r}",
        f"--coreg-max-bbr-cost {plan.coreg_max_bbr_cost!r}",
        f"--coreg-min-nmi {plan.coreg_min_nmi!r}",
        f"--stc-method {plan.stc_method}",
    ]
    if not plan.slice_timing:
        opts.append("--no-slice-timing")
    return " ".join(opts)


def fmriprep_options(plan: FuncPlan) -> str:
    """``brainharmony func fmriprep`` options of the ``func.fmriprep`` block."""
    f = plan.fmriprep
    opts = [f"--runner {f['runner']}"]
    if f.get("image"):
        opts.append(f"--image {shlex.quote(str(f['image']))}")
    if f.get("license"):
        opts.append(f"--license {shlex.quote(str(f['license']))}")
    spaces = f.get("output_spaces") or [f"{plan.space}:res-{f['res']}"]
    opts.append("--output-spaces " + " ".join(shlex.quote(str(s)) for s in spaces))
    if f.get("mem_mb"):
        opts.append(f"--mem-mb {int(f['mem_mb'])}")
    if not f["fs_no_reconall"]:
        opts.append("--with-reconall")
    if f.get("extra_args"):
        opts.append(f"--extra {shlex.quote(str(f['extra_args']))}")
    if f.get("executable"):
        opts.append(f"--executable {shlex.quote(str(f['executable']))}")
    return " ".join(opts)


# --------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------
def targets(
    datasets: Iterable[str], ingest_checkpoint: Any, plan: FuncPlan, tasks: Mapping[str, str]
) -> list[str]:
    """Every func output of every dataset (the ``func_all`` target).

    Parameters
    ----------
    datasets : iterable of str
    ingest_checkpoint : snakemake checkpoint
        ``checkpoints.ingest``; ``.get(dataset=...)`` defers this list until ingestion.
    plan : FuncPlan
    tasks : mapping of dataset -> task label
    """
    out: list[str] = []
    patterns = list(denoise_outputs(plan).values())
    if plan.backend == "native":
        patterns += list(native_outputs(plan).values())
    for dataset in datasets:
        if dataset in plan.parcellated:  # released series: nothing for the func stage
            continue
        scans = ingest_checkpoint.get(dataset=dataset).output.scans
        for row in runs(scans, tasks[dataset]):
            fields = {"dataset": dataset, "fdir": row.fdir, "fstem": row.fstem}
            out.extend(p.format(**fields) for p in patterns)
    return out


# --------------------------------------------------------------------------------------
# Helpers of the workflow's input functions (wildcards in, strings out)
# --------------------------------------------------------------------------------------
def row(ingest_checkpoint: Any, wildcards: Any, tasks: Mapping[str, str]) -> RunRow:
    """The scans.tsv row of a job's run (``dataset`` and ``fstem`` wildcards)."""
    scans = ingest_checkpoint.get(dataset=wildcards.dataset).output.scans
    return run_for(scans, wildcards.fstem, tasks[wildcards.dataset])


def run_options(r: RunRow, tr_range: Sequence[float] | None = None) -> str:
    """``--subject ... --session ... --task ... --run ... --tr ...`` of a run, and
    ``--tr-range MIN MAX`` when given (the config's ``ingest.tr_range``, so that the
    func stage accepts every TR that ingest accepted)."""
    args = [
        "--subject", r.subject, "--session", r.session or "n/a", "--task", r.task,
        "--run", r.run or "n/a", "--tr", repr(r.tr),
    ]  # fmt: skip
    if tr_range is not None:
        args += ["--tr-range", *(repr(float(v)) for v in tr_range)]
    return shlex.join(args)


def sidecar_option(r: RunRow) -> str:
    """``--bold-sidecar PATH`` (shell-quoted) of a run, or nothing when it has none."""
    return "" if not r.bold_sidecar else f"--bold-sidecar {shlex.quote(r.bold_sidecar)}"


def source_inputs(
    plan: FuncPlan,
    ingest_checkpoint: Any,
    wildcards: Any,
    tasks: Mapping[str, str],
    datasets: Mapping[str, Any],
) -> dict[str, str]:
    """Inputs of the denoise rule for the fMRIPrep backends (flag file or its files)."""
    r = row(ingest_checkpoint, wildcards, tasks)
    if plan.backend == "fmriprep":
        return {"done": fmriprep_done(plan, wildcards.dataset, r.subject, datasets)}
    return fmriprep_inputs(plan, wildcards.dataset, r, datasets)


def source_options(plan: FuncPlan, dataset: str, datasets: Mapping[str, Any]) -> str:
    """``--fmriprep-dir ... --space ... --res ...`` of the denoise rule."""
    if plan.backend == "native":
        return (
            f"--fmriprep-dir {shlex.quote(OUT_DIR.format(dataset=dataset))} --space {plan.space} "
            f"--res {plan.res} --no-copy-confounds"
        )
    res = plan.fmriprep["res"] or "n/a"
    root = shlex.quote(fmriprep_root(plan, dataset, datasets))
    return f"--fmriprep-dir {root} --space {plan.space} --res {res}"
