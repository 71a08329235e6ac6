"""Planning of the anatomy rules (``workflow/rules/anat.smk``): settings, paths, options.

The rules read the ``anat:`` config block, refuse unusable settings before any job
runs, take their output paths from :func:`.derivatives.anat_paths` (so the rule and
the package can never disagree) and expand over the T1ws listed in the ingest
checkpoint's ``scans.tsv``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from brainharmony.anat.settings import AnatSettings
from brainharmony.io import PathLike, sidecar_path

#: Scheduler hints per output resolution (measured: docs/anat.md).
MEM_MB: dict[int, int] = {1: 4000, 2: 2000}
RUNTIME_MIN: dict[int, int] = {1: 60, 2: 20}
#: The anat stage's output folder of a dataset.
OUT_DIR = "results/anat/{dataset}"
#: The sidecars written beside these outputs (declared as rule outputs too).
SIDECARS: tuple[str, ...] = ("preproc", "mask", "model", "native_preproc", "native_mask")


def settings_from_config(config: Mapping[str, Any]) -> AnatSettings:
    """The anat settings of a validated workflow config (schema defaults filled in).

    Parameters
    ----------
    config : mapping
        The whole workflow config; its ``anat`` block is read.

    Raises
    ------
    ValueError
        An invalid value (the message names it).
    """
    block = config["anat"]
    return AnatSettings(
        backend=str(block["backend"]),
        template=str(block["template"]),
        resolution_mm=int(block["resolution_mm"]),
        nonlinear=bool(block["nonlinear"]),
        model_box_mm=tuple(int(v) for v in block["model_box_mm"]),
        normalisation=str(block["normalisation"]),
        max_nonfinite_fraction=float(block["max_nonfinite_fraction"]),
        brain_extraction=str(block["brain_extraction"]),
        deepbet_shape=int(block["deepbet_shape"]),
        qc_min_ncc=float(block["qc_min_ncc"]),
        qc_min_dice=float(block["qc_min_dice"]),
        qc_brain_volume_ml=tuple(float(v) for v in block["qc_brain_volume_ml"]),
        qc_scale_range=tuple(float(v) for v in block["qc_scale_range"]),
    )


@dataclass(frozen=True)
class AnatPlan:
    """What the anat rules read: the settings, their output patterns and options."""

    settings: AnatSettings

    @property
    def template_outputs(self) -> dict[str, str]:
        return template_outputs(self.settings)

    def outputs(self, session: bool) -> dict[str, str]:
        return rule_outputs(self.settings, session)

    @property
    def options(self) -> str:
        return cli_options(self.settings)

    @property
    def out_dir(self) -> str:
        return OUT_DIR

    @property
    def mem_mb(self) -> int:
        return MEM_MB[self.settings.resolution_mm]

    @property
    def runtime_min(self) -> int:
        return RUNTIME_MIN[self.settings.resolution_mm]


def plan_from_config(config: Mapping[str, Any]) -> AnatPlan:
    """The anat plan of a validated workflow config; a non-native backend whose
    executables are missing is refused now (:func:`check_can_run`)."""
    plan = AnatPlan(settings_from_config(config))
    check_can_run(plan.settings)
    return plan


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
        OUT_DIR,
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
