"""What the workflow's anat rules need at planning time (kept out of the .smk files).

The rules read the ``anat:`` config block, refuse unusable settings before any job
runs, take their output paths from :func:`.derivatives.anat_paths` (so the rule and
the package can never disagree) and expand over the T1ws listed in the ingest
checkpoint's ``scans.tsv``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from brainharmony.anat.settings import AnatSettings
from brainharmony.io import PathLike, sidecar_path

#: ``anat.resolution_mm`` when a workflow config omits it (the schema's default).
WORKFLOW_RESOLUTION_MM = 1

#: Scheduler hints per output resolution (measured: docs/anat.md).
MEM_MB: dict[int, int] = {1: 4000, 2: 2000}
RUNTIME_MIN: dict[int, int] = {1: 60, 2: 20}
#: The sidecars written beside these outputs (declared as rule outputs too).
SIDECARS: tuple[str, ...] = ("preproc", "mask", "model", "native_preproc", "native_mask")


def settings_from_config(config: Mapping[str, Any]) -> AnatSettings:
    """The anat settings of a workflow config (defaults where a key is absent).

    Parameters
    ----------
    config : mapping
        The whole workflow config; its ``anat`` block is read.

    Raises
    ------
    ValueError
        An invalid value (the message names it).
    """
    block = dict(config.get("anat") or {})
    d = AnatSettings
    return AnatSettings(
        backend=str(block.get("backend", d.backend)),
        template=str(block.get("template", d.template)),
        # The workflow's default grid is the paper's 1 mm (the library's is 2 mm).
        resolution_mm=int(block.get("resolution_mm", WORKFLOW_RESOLUTION_MM)),
        nonlinear=bool(block.get("nonlinear", d.nonlinear)),
        model_box_mm=tuple(int(v) for v in block.get("model_box_mm", d.model_box_mm)),
        normalisation=str(block.get("normalisation", d.normalisation)),
        max_nonfinite_fraction=float(block.get("max_nonfinite_fraction", d.max_nonfinite_fraction)),
        brain_extraction=str(block.get("brain_extraction", d.brain_extraction)),
        deepbet_shape=int(block.get("deepbet_shape", d.deepbet_shape)),
        qc_min_ncc=float(block.get("qc_min_ncc", d.qc_min_ncc)),
        qc_min_dice=float(block.get("qc_min_dice", d.qc_min_dice)),
        qc_brain_volume_ml=tuple(
            float(v) for v in block.get("qc_brain_volume_ml", d.qc_brain_volume_ml)
        ),
        qc_scale_range=tuple(float(v) for v in block.get("qc_scale_range", d.qc_scale_range)),
    )


def check_can_run(settings: AnatSettings, path: str | None = None) -> None:
    """Refuse, at planning time, a backend whose executables are not on PATH.

    Raises
    ------
    brainharmony.anat.nipype_backends.BackendUnavailableError
    """
    if settings.backend == "native":
        return
    from brainharmony.anat.nipype_backends import check_backend

    check_backend(settings.backend, settings.nonlinear, path=path)


def rule_outputs(settings: AnatSettings, session: bool) -> dict[str, str]:
    """Named output patterns of one anat job (wildcards ``dataset``, ``subject``, ``session``)."""
    from brainharmony.anat.derivatives import anat_paths

    paths = anat_paths(
        "results/anat/{dataset}",
        "{subject}",
        "{session}" if session else None,
        settings.template,
        settings.nonlinear,
        settings.backend,
    )
    out = {name: str(p) for name, p in vars(paths).items() if p is not None}
    for name in SIDECARS:
        out[f"{name}_json"] = str(sidecar_path(getattr(paths, name)))
    return out


#: Where the template resource files live (rule ``anat_templates``).
TEMPLATE_DIR = "resources/templates"


def template_outputs(settings: AnatSettings) -> dict[str, str]:
    """The template resource files every anat job reads (rule ``anat_templates``)."""
    from brainharmony.anat.templates import RESOLUTIONS_MM, resource_files

    out = {}
    for res in RESOLUTIONS_MM:
        path = resource_files(TEMPLATE_DIR, settings.template, res)
        out[f"res{res}"] = str(path)
        out[f"res{res}_json"] = str(sidecar_path(path))
    return out


def cli_options(settings: AnatSettings) -> str:
    """The ``brainharmony anat`` options that carry ``settings``."""
    opts = [
        f"--backend {settings.backend}",
        f"--template {settings.template}",
        f"--resolution-mm {settings.resolution_mm}",
        "--model-box-mm " + " ".join(str(v) for v in settings.model_box_mm),
        f"--normalisation {settings.normalisation}",
        f"--max-nonfinite-fraction {settings.max_nonfinite_fraction!r}",
        f"--brain-extraction {settings.brain_extraction}",
        f"--deepbet-shape {settings.deepbet_shape}",
        f"--qc-min-ncc {settings.qc_min_ncc!r}",
        f"--qc-min-dice {settings.qc_min_dice!r}",
        "--qc-brain-volume-ml " + " ".join(repr(float(v)) for v in settings.qc_brain_volume_ml),
        "--qc-scale-range " + " ".join(repr(float(v)) for v in settings.qc_scale_range),
    ]
    if settings.nonlinear:
        opts.append("--nonlinear")
    return " ".join(opts)


def t1w_rows(scans_tsv: PathLike) -> list[tuple[str, str | None, str]]:
    """The distinct T1ws of a ``scans.tsv``: ``(subject, session or None, path)``, sorted."""
    from brainharmony.ingest import read_scans

    scans = read_scans(scans_tsv)
    rows: dict[tuple[str, str], str] = {}
    for sub, ses, t1w in zip(scans["subject"], scans["t1w_session"], scans["t1w"], strict=True):
        label = "" if ses is None or str(ses) in ("", "n/a", "<NA>") else str(ses)
        rows[(str(sub), label)] = str(t1w)
    return [(sub, ses or None, path) for (sub, ses), path in sorted(rows.items())]


def t1w_for(scans_tsv: PathLike, dataset: str, subject: str, session: str | None) -> str:
    """The T1w path of one subject (and session) in a ``scans.tsv``.

    Raises
    ------
    ValueError
        When the subject/session has no T1w there.
    """
    for sub, ses, path in t1w_rows(scans_tsv):
        if sub == subject and ses == (session or None):
            return path
    where = f"sub-{subject}" + (f" ses-{session}" if session else "")
    raise ValueError(f"dataset '{dataset}': no T1w for {where} in {scans_tsv}")


def targets(datasets: Iterable[str], ingest_checkpoint: Any, settings: AnatSettings) -> list[str]:
    """Every anat output of every dataset (the ``anat_all`` target).

    Parameters
    ----------
    datasets : iterable of str
    ingest_checkpoint : snakemake checkpoint
        ``checkpoints.ingest``; ``.get(dataset=...)`` raises until ingestion has run,
        which is how Snakemake defers this list.
    settings : AnatSettings
    """
    out: list[str] = []
    for dataset in datasets:
        scans = ingest_checkpoint.get(dataset=dataset).output.scans
        for sub, ses, _ in t1w_rows(scans):
            fields = {"dataset": dataset, "subject": sub, "session": ses or ""}
            patterns = rule_outputs(settings, session=ses is not None)
            out.extend(p.format(**fields) for p in patterns.values())
    return out
