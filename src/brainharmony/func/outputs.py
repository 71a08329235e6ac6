"""Writers of a run's derivative files (shared by the native and fMRIPrep backends).

Every file is written atomically through :mod:`brainharmony.io`; every data file has a
JSON sidecar with the facts the next stage needs and a provenance block.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainharmony.bids_uri import link_uri, source_uris, write_dataset_description
from brainharmony.func import qc
from brainharmony.func.confounds import MOTION_OUTLIER_PREFIX, with_motion_outliers
from brainharmony.func.motion import PARAM_NAMES
from brainharmony.func.naming import BIDSIGNORE, PIPELINE, RunOutputs
from brainharmony.func.register import write_itk_affine
from brainharmony.io import (
    provenance,
    sidecar_path,
    write_json,
    write_nifti,
    write_npy,
    write_text,
    write_tsv,
)

logger = logging.getLogger(__name__)

CONFOUND_DESCRIPTIONS: dict[str, str] = {
    "global_signal": "mean over the template brain mask (within the run's coverage)",
    "csf": "mean over the eroded template CSF mask (ventricles)",
    "white_matter": "mean over the eroded template white-matter mask",
    "framewise_displacement": "Power et al. 2012, 50 mm sphere; first row n/a",
    "dvars": "RMS of the temporal difference over brain voxels (median scaled to 1000)",
    "std_dvars": "DVARS over its expected value (Nichols 2013), as nipype ComputeDVARS",
}
MOTION_CONVENTION = (
    "M_v maps the BOLD reference (boldref: mean of the realigned volumes) to volume v in "
    "scanner world coordinates (RAS+ mm): x_v = R (x_ref - c) + c + t, "
    "R = Rx(rot_x) @ Ry(rot_y) @ Rz(rot_z), c = MotionCenter (BOLD grid centre)."
)


def write_series_tsv(path: Path, series: np.ndarray, names: Sequence[str]) -> Path:
    """Write an (n_volumes, n_parcels) array as a TSV with parcel names as header.

    Values as ``%.8g``, NaN as ``n/a``: the bytes of ``pandas.DataFrame.to_csv`` (through
    :func:`~brainharmony.io.write_tsv`), formatted a row at a time (several times
    faster); names that the CSV writer would quote go through pandas itself.
    """
    x = np.asarray(series, dtype=np.float64)
    header = [str(n) for n in names]
    if (
        x.ndim != 2
        or x.shape[1] != len(header)
        or x.shape[1] == 0
        or any(c in n for n in header for c in '\t\n\r"')
    ):
        return write_tsv(path, pd.DataFrame(x, columns=header), float_format="%.8g")
    row_format = "\t".join(["%.8g"] * x.shape[1])
    lines = ["\t".join(header)]
    for row, gaps in zip(x.tolist(), np.isnan(x), strict=True):
        if gaps.any():
            fields = "\t".join("n/a" if gap else "%.8g" for gap in gaps)
            lines.append(fields % tuple(v for v, gap in zip(row, gaps, strict=True) if not gap))
        else:
            lines.append(row_format % tuple(row))
    return write_text(path, "\n".join(lines) + "\n")


def series_sidecar(
    *,
    t_r: float,
    start_time: float,
    keep: np.ndarray,
    small: Mapping[str, Any],
    space: str,
    atlas_json: Mapping[str, Any] | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Sidecar of a parcel time-series TSV.

    ``Atlas`` names the atlas actually used (official volume or offline rebuild, from
    the atlas resource's ``Identity``); ``AtlasSource`` is ``official``, ``rebuild`` or
    ``unknown`` (no atlas sidecar); ``AtlasFile`` the resource file name.
    """
    keep = np.asarray(keep, dtype=bool)
    atlas = dict(atlas_json or {})
    return {
        "RepetitionTime": float(t_r),
        "StartTime": float(start_time),
        "NumberOfVolumes": int(keep.size),
        "KeptVolumes": int(keep.sum()),
        "CensoredVolumes": np.flatnonzero(~keep).tolist(),
        "CensoredVolumesNote": "0-based row indices; those rows are n/a",
        "Space": space,
        "Atlas": atlas.get(
            "Identity", "Schaefer 400 parcels 7 networks (source unknown: no atlas sidecar)"
        ),
        "AtlasSource": atlas.get("AtlasSource", "unknown"),
        "AtlasFile": atlas.get("File"),
        "ParcelOrder": "columns in Schaefer order, parcels 1-400",
        "AtlasProvenance": atlas,
        "SmallParcels": dict(small),
        **dict(extra),
    }


def confounds_sidecar(table: pd.DataFrame, center: np.ndarray | None) -> dict[str, Any]:
    """Column descriptions of the confounds TSV."""
    out: dict[str, Any] = {}
    for col in table.columns:
        base, expansion = col, ""
        for suffix in ("_derivative1_power2", "_derivative1", "_power2"):
            if col.endswith(suffix):
                base, expansion = col[: -len(suffix)], suffix.lstrip("_")
                break
        if base.startswith("trans_"):
            text = f"translation along {base[-1]} (mm), reference -> volume (Convention)"
        elif base.startswith("rot_"):
            text = f"rotation about {base[-1]} (rad), reference -> volume (Convention)"
        else:
            text = CONFOUND_DESCRIPTIONS.get(base, "")
        if expansion:
            text = f"{expansion.replace('_', ' ')} of {base} (first row n/a for derivatives)"
        out[col] = {"Description": text}
    out["Convention"] = MOTION_CONVENTION
    if center is not None:
        out["MotionCenter"] = [float(c) for c in center]
    return out


def censoring_sidecar(
    table: pd.DataFrame,
    keep: np.ndarray,
    description: Mapping[str, Any],
    *,
    non_steady: np.ndarray | None = None,
    replaced: int = 0,
) -> dict[str, Any]:
    """Sidecar entries of the ``motion_outlierNN`` columns and the censoring behind them.

    Parameters
    ----------
    table : pandas.DataFrame
        The confounds table as written (:func:`~.confounds.with_motion_outliers`).
    keep : ndarray of bool, shape (n_volumes,)
    description : mapping
        :func:`~.denoise.describe` output (``FDThresholdMM``, ``CensorBefore``,
        ``CensorAfter``, ``MinSegment``).
    non_steady : ndarray of bool, optional
        Non-steady-state volumes (censored, in their own columns).
    replaced : int
        How many ``motion_outlier`` columns of the input table were dropped.
    """
    keep = np.asarray(keep, dtype=bool)
    fd = description.get("FDThresholdMM")
    rule = (
        f"framewise displacement > {fd} mm, {description.get('CensorBefore', 0)} frames "
        f"before and {description.get('CensorAfter', 0)} after, kept runs shorter than "
        f"{description.get('MinSegment')} frames"
        if fd is not None
        else "no displacement censoring; kept runs cut short by non-steady-state volumes "
        f"and shorter than {description.get('MinSegment')} frames"
    )
    out: dict[str, Any] = {}
    for col in (c for c in table.columns if str(c).startswith(MOTION_OUTLIER_PREFIX)):
        frame = int(np.flatnonzero(table[col].to_numpy() == 1)[0])
        out[col] = {"Description": f"one-hot: frame {frame} (0-based) censored ({rule})"}
    n_steady = 0 if non_steady is None else int(np.asarray(non_steady, dtype=bool).sum())
    out["Censoring"] = {
        "Rule": rule,
        "CensoredVolumes": int((~keep).sum()),
        "MotionOutlierColumns": len(out),
        "NonSteadyStateVolumes": n_steady,
        "ReplacedMotionOutlierColumns": int(replaced),
        "Note": (
            "the censored frames are the union of the motion_outlier* and "
            "non_steady_state_outlier* columns (fMRIPrep's convention); motion_outlier* "
            "columns of the input (fMRIPrep's own FD/DVARS outliers) are replaced by "
            "this package's censoring"
        ),
    }
    return out


def small_parcels(
    small: Sequence[int],
    counts: np.ndarray,
    atlas_counts: np.ndarray,
    names: Sequence[str],
    min_voxels: int,
) -> dict[str, Any]:
    """Report of parcels set to NaN for lack of coverage."""
    return {
        "MinVoxels": int(min_voxels),
        "Count": len(small),
        "Parcels": [
            {
                "index": int(i),
                "name": str(names[i - 1]),
                "voxels_covered": int(counts[i - 1]),
                "voxels_in_atlas": int(atlas_counts[i - 1]),
            }
            for i in small
        ],
    }


def write_parcel_series(
    result: Any,
    outputs: RunOutputs,
    names: Sequence[str],
    *,
    parameters: Mapping[str, Any],
    atlas_json: Mapping[str, Any] | None,
    prov: Mapping[str, Any],
    common: Mapping[str, Any],
    denoised_extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write the raw and the denoised parcel series of a run, each with its sidecar.

    Parameters
    ----------
    result : RunResult or DerivativeResult
        Carries ``raw_series``, ``denoised``, ``keep``, ``t_r``, ``start_time``, the
        small-parcel counts and ``report``.
    outputs : RunOutputs
    names : sequence of str
        Parcel names (TSV header).
    parameters : mapping
        Run parameters (``min_parcel_voxels``, ``scale``, ``denoise_description``).
    atlas_json : mapping or None
        Atlas provenance.
    prov : mapping
        Provenance block of every sidecar.
    common : mapping
        Sidecar fields of both series.
    denoised_extra : mapping, optional
        Further sidecar fields of the denoised series only.

    Returns
    -------
    list of Path
        The files written.
    """
    small = small_parcels(
        result.small_parcels,
        result.parcel_counts,
        result.atlas_counts,
        names,
        int(parameters.get("min_parcel_voxels", 1)),
    )
    denoised_fields = {
        "Units": "percent signal change"
        if parameters.get("scale", "psc") == "psc"
        else "scanner intensity",
        "Denoising": {
            **parameters.get("denoise_description", {}),
            **result.report.get("Denoising", {}),
        },
        **dict(denoised_extra or {}),
    }
    excluded = result.excluded
    if excluded:
        # The header row only: a reader that ignores the flag gets no frames, never
        # numbers that were not computed.
        denoised_fields.update(
            Excluded=True,
            ExclusionReason=excluded,
            ExclusionNote="the run is left out of the later stages; this file has no rows",
        )
    written: list[Path] = []
    for path, series, keep, extra in (
        (
            outputs.raw_timeseries,
            result.raw_series,
            np.ones(result.keep.size, dtype=bool),
            {"Units": "scanner intensity", "Denoised": False},
        ),
        (outputs.timeseries, result.denoised, result.keep, denoised_fields),
    ):
        written.append(write_series_tsv(path, series, names))
        written.append(
            write_json(
                sidecar_path(path),
                {
                    **series_sidecar(
                        t_r=result.t_r,
                        start_time=result.start_time,
                        keep=keep,
                        small=small,
                        space=outputs.space,
                        atlas_json=atlas_json,
                        extra={**common, **extra},
                    ),
                    "Provenance": prov,
                },
            )
        )
    return written


def write_native_outputs(
    result: Any,
    outputs: RunOutputs,
    atlas_table: pd.DataFrame,
    *,
    inputs: Sequence[Path],
    parameters: Mapping[str, Any],
    atlas_json: Mapping[str, Any] | None = None,
    keep_bold: bool = False,
    qc: bool = True,
    parcels: bool = True,
    config: Mapping[str, Any] | None = None,
    links: Mapping[str, Path] | None = None,
) -> list[Path]:
    """Write every output of a native run (:class:`~.pipeline.RunResult`).

    ``parcels=False`` writes the preprocessing outputs only (BOLD, mask, confounds,
    motion, transforms): the workflow then denoises and parcellates them in a
    separate job, exactly as it does fMRIPrep's outputs. ``links`` (dataset name ->
    root, e.g. ``raw``, ``anat``) turns the ``inputs`` into the sidecars' ``Sources``
    (BIDS URIs; :func:`~brainharmony.bids_uri.source_uris`).

    Returns
    -------
    list of Path
        The files written.
    """
    import nibabel as nib

    prov = provenance(step="func native", inputs=inputs, parameters=parameters, config=config)
    sources = source_uris(inputs, links or {})
    written: list[Path] = []
    names = atlas_table["name"].tolist()
    report = result.report

    # Confounds (with the censoring as motion_outlier columns when it was done) and motion.
    table = result.confounds
    censoring: dict[str, Any] = {}
    if parcels:
        table, _ = with_motion_outliers(table, result.keep)
        censoring = censoring_sidecar(table, result.keep, parameters.get("denoise_description", {}))
    written.append(write_tsv(outputs.confounds, table, float_format="%.8g"))
    written.append(
        write_json(
            sidecar_path(outputs.confounds),
            {
                **confounds_sidecar(result.confounds, result.motion_center),
                **censoring,
                "Sources": sources,
                "Provenance": prov,
            },
        )
    )
    motion = pd.DataFrame(result.params, columns=list(PARAM_NAMES))
    motion["framewise_displacement"] = np.nan_to_num(
        result.confounds["framewise_displacement"].to_numpy(), nan=0.0
    )
    written.append(write_tsv(outputs.motion, motion, float_format="%.8g"))
    written.append(
        write_json(
            sidecar_path(outputs.motion),
            {
                "Convention": MOTION_CONVENTION,
                "MotionCenter": [float(c) for c in result.motion_center],
                "Units": {"trans": "mm", "rot": "rad"},
                "Estimation": report.get("Motion", {}),
                "Sources": sources,
                "Provenance": prov,
            },
        )
    )
    written.append(write_npy(outputs.motion_xfm, result.matrices.astype(np.float64)))
    # T1w (fixed) -> boldref (moving) points: ITK convention of a from-boldref_to-T1w file.
    written.append(write_itk_affine(outputs.coreg_xfm, np.linalg.inv(result.bold_to_t1w)))
    written.append(
        write_json(
            sidecar_path(outputs.coreg_xfm),
            {
                "BoldToT1wWorldRAS": result.bold_to_t1w.tolist(),
                "Description": (
                    "ITK file: maps T1w points (fixed) to boldref points (moving), LPS; "
                    "BoldToT1wWorldRAS carries boldref world points to T1w world points"
                ),
                "Registration": report.get("Coregistration", {}),
                "Sources": sources,
                "Provenance": prov,
            },
        )
    )
    ref = nib.Nifti1Image(result.boldref.astype(np.float32), result.bold_affine)
    written.append(write_nifti(outputs.boldref, ref))

    # Coverage mask and (optionally) the 4-D preprocessed BOLD on the template grid.
    cov = np.zeros(result.grid_shape, dtype=np.uint8)
    cov[tuple(result.points[result.coverage].T)] = 1
    written.append(write_nifti(outputs.coverage_mask, _int_image(cov, result.grid_affine)))
    resolution = f"{outputs.res.replace('p', '.')} mm isotropic template grid"
    written.append(
        write_json(
            sidecar_path(outputs.coverage_mask),
            {
                "Type": "Brain",
                "Description": "template-grid voxels inside the run's field of view",
                "SpatialReference": outputs.space,
                "Resolution": resolution,
                "Sources": sources,
                "Provenance": prov,
            },
        )
    )
    if keep_bold:
        n_vol = result.samples.shape[1]
        vol = np.zeros((*result.grid_shape, n_vol), dtype=np.float32)
        vol[tuple(result.points.T)] = result.samples
        img = nib.Nifti1Image(vol, result.grid_affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = result.t_r
        written.append(write_nifti(outputs.preproc_bold, img, compresslevel=1))
        written.append(
            write_json(
                sidecar_path(outputs.preproc_bold),
                {
                    "RepetitionTime": result.t_r,
                    "StartTime": result.start_time,
                    "SliceTimingCorrected": result.slice_timing_corrected,
                    "SkullStripped": False,
                    "Resampling": "trilinear, once from native to template (motion, "
                    "BOLD->T1w and T1w->template composed)",
                    "Resolution": resolution,
                    "Sources": sources,
                    "Provenance": prov,
                },
            )
        )

    if not parcels:
        logger.info("wrote %d preprocessing files for %s", len(written), outputs.stem)
        return written
    written += write_parcel_series(
        result,
        outputs,
        names,
        parameters=parameters,
        atlas_json=atlas_json,
        prov=prov,
        common={
            "SliceTimingCorrected": result.slice_timing_corrected,
            "MotionCorrection": "rigid, batched inverse-compositional Gauss-Newton",
            "Coverage": report.get("Coverage", {}),
            "Bold": report.get("Bold", {}),
            "Sources": sources,
        },
    )
    if qc:
        rows = result.gm_points if result.gm_points.any() else result.coverage
        written += write_qc(
            outputs,
            fd=result.confounds["framewise_displacement"].to_numpy(),
            dvars=result.confounds["dvars"].to_numpy()
            if "dvars" in result.confounds
            else np.zeros(result.keep.size),
            t_r=result.t_r,
            threshold=parameters.get("fd_threshold"),
            keep=result.keep,
            carpet=result.samples[rows],
            carpet_key=_network_key(np.clip(result.point_labels[rows], 1, None), atlas_table),
            denoised=result.denoised,
            networks=atlas_table["network"].tolist(),
            excluded=result.excluded,
        )
    logger.info("wrote %d files for %s", len(written), outputs.stem)
    return written


def _int_image(data: np.ndarray, affine: np.ndarray) -> Any:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    return img


def _network_key(labels: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """Sort key: network order of first appearance, then label."""
    nets = table["network"].to_numpy()
    first: dict[str, int] = {}
    for n in nets:
        first.setdefault(n, len(first))
    rank = np.array([first[n] for n in nets])
    labels = np.asarray(labels, dtype=np.int64)
    return rank[labels - 1] * 1000 + labels


def write_qc(
    outputs: RunOutputs,
    *,
    fd: np.ndarray,
    dvars: np.ndarray,
    t_r: float,
    threshold: float | None,
    keep: np.ndarray,
    carpet: np.ndarray,
    carpet_key: np.ndarray,
    denoised: np.ndarray,
    networks: Sequence[str],
    excluded: str = "",
) -> list[Path]:
    """The three QC figures of a run (an excluded run's FC panel states the reason)."""

    title = outputs.stem
    out = [qc.plot_fd(fd, t_r, threshold, keep, outputs.fd_figure, title=title)]
    out.append(
        qc.plot_carpet(carpet, carpet_key, fd, dvars, t_r, outputs.carpet_figure, title=title)
    )
    fc_title = title
    if excluded:
        import textwrap

        fc_title += "\n" + textwrap.fill(f"excluded: {excluded}", 80)
    out.append(qc.plot_fc(denoised, networks, outputs.fc_figure, title=fc_title))
    return out


def write_derivative_outputs(
    result: Any,
    outputs: RunOutputs,
    atlas_table: pd.DataFrame,
    *,
    inputs: Sequence[Path],
    parameters: Mapping[str, Any],
    atlas_json: Mapping[str, Any] | None = None,
    qc: bool = True,
    copy_confounds: bool = True,
    config: Mapping[str, Any] | None = None,
    links: Mapping[str, Path] | None = None,
) -> list[Path]:
    """Write the outputs of an fMRIPrep-derivatives run (:class:`~.fmriprep.DerivativeResult`).

    The confounds table is fMRIPrep's own (copied), its ``motion_outlier*`` columns
    replaced by this package's censoring (:func:`~.confounds.with_motion_outliers`);
    the motion table holds its six parameters and framewise displacement.
    ``copy_confounds=False`` (native runs, whose confounds and motion files are already
    there) skips both. ``links`` (e.g. ``fmriprep`` -> its folder) turns the ``inputs``
    and the ``Source`` files into BIDS URIs (``Sources``).
    """

    prov = provenance(
        step="func fmriprep-derivatives", inputs=inputs, parameters=parameters, config=config
    )
    links = links or {}
    sources = source_uris(inputs, links)
    names = atlas_table["name"].tolist()
    table = result.confounds
    written: list[Path] = []
    if copy_confounds:
        copied, replaced = with_motion_outliers(table, result.keep, result.non_steady)
        written.append(write_tsv(outputs.confounds, copied, float_format="%.8g"))
        written.append(
            write_json(
                sidecar_path(outputs.confounds),
                {
                    "Source": "fMRIPrep desc-confounds_timeseries.tsv (copied)",
                    **censoring_sidecar(
                        copied,
                        result.keep,
                        parameters.get("denoise_description", {}),
                        non_steady=result.non_steady,
                        replaced=replaced,
                    ),
                    "Sources": sources,
                    "Provenance": prov,
                },
            )
        )
        present = [c for c in PARAM_NAMES if c in table.columns]
        motion = table[present].copy()
        if "framewise_displacement" in table.columns:
            motion["framewise_displacement"] = table["framewise_displacement"].fillna(0.0)
        written.append(write_tsv(outputs.motion, motion, float_format="%.8g"))
        written.append(
            write_json(
                sidecar_path(outputs.motion),
                {
                    "Convention": "fMRIPrep's (its confounds file)",
                    "Units": {"trans": "mm", "rot": "rad"},
                    "Sources": sources,
                    "Provenance": prov,
                },
            )
        )
    written += write_parcel_series(
        result,
        outputs,
        names,
        parameters=parameters,
        atlas_json=atlas_json,
        prov=prov,
        common={
            "Source": {
                k: v and (link_uri(v, links) or v)
                for k, v in result.report.get("Source", {}).items()
            },
            "Sources": sources,
            "Preprocessing": "fMRIPrep",
            "NonSteadyStateVolumes": result.report.get("NonSteadyStateVolumes", {}),
        },
        denoised_extra={
            "AtlasResampling": result.report.get("AtlasResampling"),
        },
    )
    if qc:
        fd = table["framewise_displacement"].to_numpy(dtype=float)
        dv = (
            table["dvars"].to_numpy(dtype=float)
            if "dvars" in table.columns
            else np.zeros(len(table))
        )
        written += write_qc(
            outputs,
            fd=fd,
            dvars=dv,
            t_r=result.t_r,
            threshold=parameters.get("fd_threshold"),
            keep=result.keep,
            carpet=result.carpet,
            carpet_key=_network_key(np.clip(result.carpet_labels, 1, None), atlas_table),
            denoised=result.denoised,
            networks=atlas_table["network"].tolist(),
            excluded=result.excluded,
        )
    return written


def write_description(root: Path, links: Mapping[str, Path | None]) -> Path:
    """Write ``dataset_description.json`` and ``.bidsignore`` of ``results/func/<dataset>``.

    Every run's job writes the same bytes (:func:`~brainharmony.bids_uri.
    write_dataset_description`); ``links`` names the datasets of its ``Sources``.
    """

    return write_dataset_description(
        root,
        pipeline=PIPELINE,
        description=(
            "Functional stage: each BOLD run preprocessed, denoised and parcellated "
            "(Schaefer-400 series, confounds, motion, QC; docs/func.md)"
        ),
        links=links,
        bidsignore=BIDSIGNORE,
    )
