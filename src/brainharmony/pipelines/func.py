"""``brainharmony func ...``: the functional stage's command line.

Sub-commands:

* ``atlas``: write the Schaefer-400 atlas resource files for a resolution;
* ``native``: preprocess one BOLD run natively and write its derivatives;
* ``fmriprep``: run fMRIPrep (Docker wrapper or Apptainer/Singularity) on a participant;
* ``derivatives``: denoise and parcellate one run of an fMRIPrep output folder.

Registered in :mod:`brainharmony.cli` as ``func``; also runnable as
``python -m brainharmony.pipelines.func``. Option defaults come from the settings
dataclasses (:class:`~brainharmony.func.denoise.DenoiseSettings`,
:class:`~brainharmony.func.pipeline.NativeSettings`,
:class:`~brainharmony.func.fmriprep.FmriprepSettings`).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainharmony.bids_uri import RAW, bids_root
from brainharmony.cli_types import bids_label, output_dir
from brainharmony.func.atlas_lookup import (
    ORIGINS,
    SOURCES,
    AtlasChoice,
    AtlasUnavailableError,
    config_atlas,
    space_of_file,
)
from brainharmony.func.atlas_resource import build_atlas, read_atlas, read_tissue_masks
from brainharmony.func.defaults import COREG_ALIASES, COREG_METHODS
from brainharmony.func.denoise import ORDERS, STRATEGIES, DenoiseSettings, describe
from brainharmony.func.fmriprep import (
    DEFAULT_SPACE,
    FmriprepSettings,
    find_run_files,
    fmriprep_command,
    process_derivatives,
    run_fmriprep,
)
from brainharmony.func.naming import run_outputs, template_space
from brainharmony.func.outputs import (
    write_derivative_outputs,
    write_description,
    write_native_outputs,
)
from brainharmony.func.pipeline import (
    NativeSettings,
    RunInputs,
    bold_metadata,
    preprocess_run,
    resolve_repetition_time,
)
from brainharmony.func.register import read_itk_affine
from brainharmony.io import InputDataError, read_json, sidecar_path, write_text
from brainharmony.nifti_checks import DEFAULT_TR_RANGE, check_tr_range
from brainharmony.scan_pairing import CheckSettings

logger = logging.getLogger(__name__)


def _na(value: str | None) -> str | None:
    return None if value in (None, "", "n/a", "none", "None") else value


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "off", "") else float(text)


def _add_run(p: argparse.ArgumentParser) -> None:
    # Labels become output file names: BIDS characters only (cli_types).
    g = p.add_argument_group("run")
    g.add_argument("--subject", required=True, type=bids_label("sub"), help="label without sub-")
    g.add_argument(
        "--session",
        default=None,
        type=bids_label("ses", optional=True),
        help="label without ses- (n/a: none)",
    )
    g.add_argument("--task", default=CheckSettings.task, type=bids_label("task"))
    g.add_argument(
        "--run",
        default=None,
        type=bids_label("run", optional=True),
        help="index as in the file name (n/a: none)",
    )
    g.add_argument("--out-dir", required=True, type=output_dir, help="results/func/<dataset>")
    g.add_argument("--atlas", required=True, type=Path, help="atlas dseg .nii.gz")
    g.add_argument("--atlas-labels", required=True, type=Path, help="atlas dseg .tsv")
    g.add_argument("--tr", type=float, default=None, help="repetition time (s)")
    g.add_argument(
        "--tr-range",
        nargs=2,
        type=float,
        default=None,
        metavar=("MIN", "MAX"),
        help="plausible repetition time in seconds; a TR outside is refused "
        "(default: 0.1 10, as ingest.tr_range)",
    )
    g.add_argument("--no-qc", action="store_true", help="skip the QC figures")
    g.add_argument("--threads", type=int, default=1)


def _add_denoise(p: argparse.ArgumentParser) -> None:
    d = DenoiseSettings()
    g = p.add_argument_group("denoising")
    g.add_argument("--strategy", default=d.strategy, choices=sorted(STRATEGIES))
    g.add_argument(
        "--fd-threshold",
        type=_optional_float,
        default=d.fd_threshold,
        help="mm; 'none' disables censoring",
    )
    g.add_argument("--min-segment", type=int, default=d.min_segment)
    g.add_argument("--censor-before", type=int, default=d.censor_before)
    g.add_argument("--censor-after", type=int, default=d.censor_after)
    g.add_argument("--high-pass", type=_optional_float, default=d.high_pass, help="Hz or 'none'")
    g.add_argument("--low-pass", type=_optional_float, default=d.low_pass, help="Hz or 'none'")
    g.add_argument("--filter-order", type=int, default=d.filter_order)
    g.add_argument("--order", default=d.order, choices=ORDERS)
    g.add_argument("--no-detrend", action="store_true")
    g.add_argument("--edges", default=d.edges, choices=("nearest", "extrapolate", "trim"))
    g.add_argument("--min-kept", type=int, default=d.min_kept)
    g.add_argument("--min-parcel-voxels", type=int, default=NativeSettings.min_parcel_voxels)
    g.add_argument("--scale", default=NativeSettings.scale, choices=("psc", "none"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``func`` sub-commands to ``parser``."""

    sub = parser.add_subparsers(dest="func_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("atlas", help="write the Schaefer-400 atlas resource files")
    p.add_argument("--resolution", type=float, required=True, help="mm")
    p.add_argument("--out-dir", type=output_dir, required=True)
    p.add_argument("--space", default=None, help="template space of the BOLD")
    p.add_argument(
        "--source",
        default="auto",
        choices=SOURCES,
        help="auto: the official volume when found offline, else the rebuild",
    )
    p.add_argument("--path", type=Path, default=None, help="an official volume to use")
    p.add_argument("--labels", type=Path, default=None, help="its label table")
    p.add_argument("--path-space", default=None, help="its space (else from its name)")
    p.add_argument("--origin", default="config", choices=ORIGINS, help="where --path came from")
    p.add_argument(
        "--grey-matter", type=Path, default=None, help="1 mm GM map for the rebuild's space"
    )

    p = sub.add_parser("native", help="native preprocessing of one BOLD run")
    p.add_argument("--bold", required=True, type=Path)
    p.add_argument("--bold-sidecar", type=Path, default=None)
    p.add_argument(
        "--t1w", type=Path, default=None, help="raw T1w (registration target without --t1w-brain)"
    )
    p.add_argument(
        "--t1w-to-template",
        required=True,
        type=Path,
        help="anatomy-stage transform: preproc T1w JSON sidecar (T1wToTemplateRAS), "
        "an ITK from-T1w_to-<tpl> .txt, or a .npy/.txt 4x4 RAS matrix (T1w -> template)",
    )
    p.add_argument(
        "--t1w-brain",
        type=Path,
        default=None,
        help="anatomy-stage bias-corrected T1w in its own world (<p>_desc-preproc_T1w)",
    )
    p.add_argument(
        "--t1w-brain-mask",
        type=Path,
        default=None,
        help="anatomy-stage brain mask on that grid (<p>_desc-brain_mask)",
    )
    p.add_argument(
        "--anat-sidecar",
        type=Path,
        default=None,
        help="sidecar of the template-space T1w: Excluded there excludes the run",
    )
    native = NativeSettings()
    p.add_argument("--coreg", default=native.coreg, choices=(*COREG_METHODS, *COREG_ALIASES))
    p.add_argument("--coreg-min-dice", type=float, default=native.coreg_min_dice)
    p.add_argument("--coreg-max-bbr-cost", type=float, default=native.coreg_max_bbr_cost)
    p.add_argument("--coreg-min-nmi", type=float, default=native.coreg_min_nmi)
    p.add_argument("--stc-method", default=native.stc_method, choices=("fourier", "cubic"))
    p.add_argument("--stc-ref", type=float, default=native.stc_ref)
    p.add_argument("--no-slice-timing", action="store_true")
    p.add_argument("--keep-bold", action="store_true", help="write the 4-D template BOLD")
    p.add_argument(
        "--preproc-only",
        action="store_true",
        help="write the preprocessing outputs only (no parcel series, no denoising)",
    )
    p.add_argument(
        "--tissue-masks",
        type=Path,
        default=None,
        help="the atlas grid's tissue masks (written by 'func atlas'); computed when absent",
    )
    _add_run(p)
    _add_denoise(p)

    p = sub.add_parser("fmriprep", help="run fMRIPrep on one participant")
    p.add_argument("--bids-dir", required=True, type=Path)
    p.add_argument("--fmriprep-dir", required=True, type=Path, help="fMRIPrep output folder")
    p.add_argument("--work-dir", required=True, type=Path)
    p.add_argument("--participant-label", required=True, type=bids_label("sub"))
    p.add_argument(
        "--runner", default=FmriprepSettings.runner, choices=("docker", "apptainer", "singularity")
    )
    p.add_argument("--image", default=None)
    p.add_argument("--license", default=None, help="FreeSurfer license.txt")
    p.add_argument("--output-spaces", nargs="+", default=None)
    p.add_argument("--nthreads", type=int, default=FmriprepSettings.nthreads)
    p.add_argument("--mem-mb", type=int, default=None)
    p.add_argument("--with-reconall", action="store_true", help="do not pass --fs-no-reconall")
    p.add_argument("--extra", default="", help="extra fMRIPrep arguments (one string)")
    p.add_argument("--executable", default=None)
    p.add_argument("--print-only", action="store_true", help="print the command, run nothing")
    p.add_argument("--done", type=Path, default=None, help="flag file written on success")

    p = sub.add_parser("derivatives", help="denoise + parcellate one fMRIPrep run")
    p.add_argument("--fmriprep-dir", required=True, type=Path)
    p.add_argument("--space", default=DEFAULT_SPACE)
    p.add_argument("--res", default=None, help="res- entity of the fMRIPrep files")
    p.add_argument(
        "--no-copy-confounds",
        action="store_true",
        help="do not copy the confounds/motion tables (native runs already have them)",
    )
    _add_run(p)
    _add_denoise(p)


def _denoise_settings(args: argparse.Namespace) -> Any:

    return DenoiseSettings(
        strategy=args.strategy,
        fd_threshold=args.fd_threshold,
        min_segment=args.min_segment,
        censor_before=args.censor_before,
        censor_after=args.censor_after,
        high_pass=args.high_pass,
        low_pass=args.low_pass,
        filter_order=args.filter_order,
        detrend=not args.no_detrend,
        edges=args.edges,
        min_kept=args.min_kept,
        order=args.order,
    )


def read_t1w_to_template(path: Path) -> np.ndarray:
    """T1w world -> template world (RAS 4 x 4) from one of the accepted files."""

    path = Path(path)
    if not path.exists():
        raise InputDataError(path, "T1w -> template transform not found")
    try:
        if path.suffix == ".json":
            content = read_json(path, context="cannot read the transform")
            block = content.get("Transforms", content)
            found = [block[k] for k in ("T1wToTemplateRAS", "t1w_to_template") if k in block]
            if not found:
                raise InputDataError(path, "no Transforms.T1wToTemplateRAS matrix in the sidecar")
            matrix = np.asarray(found[0], dtype=np.float64)
        elif path.suffix == ".npy":
            matrix = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        elif path.read_text().startswith("#Insight Transform File"):
            # ITK from-T1w_to-<tpl>: maps template points to T1w points.
            matrix = np.linalg.inv(read_itk_affine(path))
        else:
            matrix = np.loadtxt(path)
    except InputDataError:
        raise
    except Exception as err:  # unparseable JSON/text/npy, a singular ITK matrix
        raise InputDataError(
            path, f"cannot read the transform: {type(err).__name__}: {err}"
        ) from None
    if matrix.shape != (4, 4):
        raise InputDataError(path, f"expected a 4 x 4 matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise InputDataError(path, "the transform holds NaN or infinite values")
    return matrix


def _set_threads(n: int) -> None:
    """Limit the BLAS/OpenMP pools to ``n`` threads, and torch's when torch is loaded.

    torch is not imported for this: a CPU run never needs it (motion estimation and
    resampling take their numpy backends there), and importing it costs about 1.7 s.
    """
    from threadpoolctl import threadpool_limits

    n = max(1, int(n))
    threadpool_limits(limits=n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def _atlas_json(atlas_path: Path) -> dict[str, Any]:
    """The atlas resource's identity and provenance (``File``, ``Identity``,
    ``AtlasSource``, ``Space`` and the sidecar's ``Atlas`` block)."""

    side = sidecar_path(atlas_path)
    if side.exists():
        content = read_json(side)
        keys = ("Identity", "AtlasSource", "Space")
        return {
            "File": atlas_path.name,
            **{k: content[k] for k in keys if k in content},
            **content.get("Atlas", {}),
        }
    return {"File": atlas_path.name}


def check_atlas_space(atlas_path: Path, space: str) -> None:
    """Refuse an atlas resource whose template space is not the BOLD's ``space``.

    The space is the atlas sidecar's ``Space``, else the file name's ``tpl-`` entity.

    Raises
    ------
    InputDataError
        Another space, or none stated.
    """

    atlas_space = _atlas_json(atlas_path).get("Space") or space_of_file(atlas_path)
    if atlas_space is None:
        raise InputDataError(atlas_path, "the atlas does not state its template space")
    if atlas_space != space:
        raise InputDataError(
            atlas_path,
            f"the atlas is in {atlas_space} but the BOLD is in {space}; an atlas is never "
            f"moved between template spaces: write one for {space} (func atlas --space "
            f"{space})",
        )


def _tr_range(args: argparse.Namespace) -> tuple[float, float]:

    if args.tr_range is None:
        return DEFAULT_TR_RANGE
    try:
        return check_tr_range(args.tr_range)
    except ValueError as err:
        raise InputDataError(None, f"--tr-range: {err}") from None


def _run_entities(args: argparse.Namespace) -> tuple[str, str | None, str, str | None]:
    """Subject, session, task and run named on the command line (``n/a``: None)."""
    return args.subject, _na(args.session), args.task, _na(args.run)


def _write_run(
    writer: Callable[..., list[Path]],
    args: argparse.Namespace,
    result: Any,
    outputs: Any,
    table: Any,
    denoise: Any,
    *,
    inputs: Sequence[Path | None],
    parameters: Mapping[str, Any],
    links: Mapping[str, Path | None],
    **options: Any,
) -> list[Path]:
    """Write a run's outputs with ``writer`` (:mod:`brainharmony.func.outputs`).

    Adds what every backend records: the denoising description to ``parameters``,
    the atlas provenance, the given ``inputs`` (absent ones dropped) and ``--no-qc``.
    ``--out-dir`` becomes a BIDS-Derivatives folder whose ``DatasetLinks`` are ``links``
    (name -> dataset root of the inputs; None: not in a BIDS tree), the inputs its
    sidecars' ``Sources``.
    """

    write_description(args.out_dir, links)
    return writer(
        result,
        outputs,
        table,
        inputs=[p for p in inputs if p],
        parameters={**parameters, "denoise_description": describe(denoise, [])},
        atlas_json=_atlas_json(args.atlas),
        qc=not args.no_qc,
        links={name: root for name, root in links.items() if root is not None},
        **options,
    )


def _run_native(args: argparse.Namespace) -> int:

    _set_threads(args.threads)
    tr_range = _tr_range(args)
    sources: dict[str, Path] = {}
    metadata = bold_metadata(args.bold, args.bold_sidecar, sources)
    t_r = resolve_repetition_time(
        args.bold, args.tr, metadata, sources.get("RepetitionTime"), tr_range
    )
    atlas, table = read_atlas(args.atlas, args.atlas_labels)
    tissues = read_tissue_masks(args.tissue_masks, atlas) if args.tissue_masks else None
    denoise = _denoise_settings(args)
    settings = NativeSettings(
        slice_timing=not args.no_slice_timing,
        stc_method=args.stc_method,
        stc_ref=args.stc_ref,
        coreg=args.coreg,
        coreg_min_dice=args.coreg_min_dice,
        coreg_max_bbr_cost=args.coreg_max_bbr_cost,
        coreg_min_nmi=args.coreg_min_nmi,
        min_parcel_voxels=args.min_parcel_voxels,
        scale=args.scale,
        denoise=denoise,
    )
    inputs = RunInputs(
        bold=args.bold,
        t_r=t_r,
        metadata=metadata,
        t1w_to_template=read_t1w_to_template(args.t1w_to_template),
        t1w=args.t1w,
        t1w_brain=args.t1w_brain,
        t1w_brain_mask=args.t1w_brain_mask,
        anat_sidecar=args.anat_sidecar,
    )
    result = preprocess_run(inputs, atlas, settings, parcels=not args.preproc_only, tissues=tissues)
    zooms = np.linalg.norm(np.asarray(atlas.affine)[:3, :3], axis=0)
    _write_run(
        write_native_outputs,
        args,
        result,
        run_outputs(args.out_dir, *_run_entities(args), resolution_mm=float(zooms[0])),
        table,
        denoise,
        inputs=(
            args.bold,
            args.t1w,
            args.t1w_brain,
            args.t1w_brain_mask,
            args.t1w_to_template,
            args.atlas,
        ),
        parameters={
            **settings.to_dict(),
            "fd_threshold": denoise.fd_threshold,
            "min_parcel_voxels": args.min_parcel_voxels,
        },
        links={
            RAW: bids_root(args.bold),
            "anat": bids_root(args.t1w_brain) if args.t1w_brain else None,
        },
        keep_bold=args.keep_bold,
        parcels=not args.preproc_only,
    )
    return 0


def _run_derivatives(args: argparse.Namespace) -> int:

    check_atlas_space(args.atlas, args.space)
    atlas, table = read_atlas(args.atlas, args.atlas_labels)
    files = find_run_files(
        args.fmriprep_dir, *_run_entities(args), space=args.space, res=_na(args.res)
    )
    denoise = _denoise_settings(args)
    result = process_derivatives(
        files,
        atlas,
        t_r=args.tr,
        tr_range=_tr_range(args),
        denoise_settings=denoise,
        min_parcel_voxels=args.min_parcel_voxels,
        scale=args.scale,
    )
    _write_run(
        write_derivative_outputs,
        args,
        result,
        run_outputs(args.out_dir, *_run_entities(args), space=args.space),
        table,
        denoise,
        inputs=(files.bold, files.confounds, files.mask, args.atlas),
        parameters={
            **denoise.to_dict(),
            "min_parcel_voxels": args.min_parcel_voxels,
            "scale": args.scale,
        },
        links={"fmriprep": args.fmriprep_dir},
    )
    return 0


def _run_fmriprep(args: argparse.Namespace) -> int:
    settings = FmriprepSettings(
        runner=args.runner,
        image=args.image or FmriprepSettings.image,
        license=args.license,
        output_spaces=tuple(args.output_spaces or FmriprepSettings.output_spaces),
        nthreads=args.nthreads,
        mem_mb=args.mem_mb,
        fs_no_reconall=not args.with_reconall,
        extra_args=tuple(shlex.split(args.extra)),
        executable=args.executable,
    )
    if args.print_only:
        print(
            shlex.join(
                fmriprep_command(
                    args.bids_dir,
                    args.fmriprep_dir,
                    args.work_dir,
                    args.participant_label,
                    settings,
                )
            )
        )
        return 0
    cmd = run_fmriprep(
        args.bids_dir, args.fmriprep_dir, args.work_dir, args.participant_label, settings
    )
    if args.done is not None:
        write_text(args.done, shlex.join(cmd) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch a ``func`` sub-command."""
    command = args.func_command
    if command == "atlas":
        choice = None
        space = args.space or template_space()
        if args.source == "official" and args.path is not None:
            # The workflow's resolved choice: use exactly this file.
            official = config_atlas(
                args.path, space, path_space=args.path_space, labels=args.labels, origin=args.origin
            )
            choice = AtlasChoice("official", space, float(args.resolution), official)
        elif args.source == "rebuild" and args.grey_matter is not None:
            choice = AtlasChoice(
                "rebuild", space, float(args.resolution), grey_matter=args.grey_matter
            )
        build_atlas(
            args.out_dir,
            args.resolution,
            source=args.source,
            space=space,
            path=args.path,
            path_space=args.path_space,
            choice=choice,
        )
        return 0
    if command == "native":
        return _run_native(args)
    if command == "derivatives":
        return _run_derivatives(args)
    if command == "fmriprep":
        return _run_fmriprep(args)
    raise ValueError(f"unknown func sub-command {command!r}")  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m brainharmony.pipelines.func`` (as ``brainharmony func``)."""
    parser = argparse.ArgumentParser(prog="brainharmony func")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    add_arguments(parser)
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        return run(args)
    except (InputDataError, AtlasUnavailableError) as err:
        print(f"brainharmony func {args.func_command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
