"""Checks of one BOLD or T1w file and its metadata, as used by ingestion.

Each check either returns the facts the next stages need or raises
:class:`Rejected` with a short, specific reason that ends up in ``excluded.tsv``.
Problems that do not make a run unusable are returned as warnings.

Repetition time policy
----------------------
The sidecar's ``RepetitionTime`` (after BIDS inheritance) is authoritative, as
BIDS defines it. The NIfTI header's ``pixdim[4]`` (converted to seconds with the
header's time unit; an unknown unit counts as seconds) is only compared with it:
a header value of 0 or 1, or a non-finite or negative one, is a converter
placeholder and ignored; any other value that differs from the sidecar by more
than the relative tolerance is a conflict, which either warns (the sidecar value
is used) or rejects the run. A sidecar value outside ``tr_range`` (default
0.1-10 s, :data:`brainharmony.nifti_checks.DEFAULT_TR_RANGE`) rejects the run.

Image checks
------------
Shared with the later stages (:mod:`brainharmony.nifti_checks`): a known
orientation (qform or sform code non-zero, the affine in use finite and not
singular), a real voxel type (not complex or RGB), a gzip stream intact to its
end (CRC and length), voxel sizes of 0.1-20 mm and at most
:data:`~brainharmony.nifti_checks.MAX_VOLUMES` volumes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from brainharmony.nifti_checks import (
    DEFAULT_TR_RANGE,
    as_number,
    compressed_data_problem,
    image_problem,
    tr_range_problem,
    value_text,
    volume_count_problem,
    voxel_size_problem,
)

#: Header time units (``xyzt_units``) to seconds. "unknown" is read as seconds,
#: the NIfTI default most converters rely on.
TIME_UNIT_TO_SECONDS = {"sec": 1.0, "msec": 1.0e-3, "usec": 1.0e-6, "unknown": 1.0}
#: Header ``pixdim[4]`` values that converters write when they do not know the TR.
PLACEHOLDER_HEADER_TR = (0.0, 1.0)
#: A sidecar RepetitionTime above this many seconds is taken for milliseconds.
MAX_PLAUSIBLE_TR_S = 60.0
#: ``SliceEncodingDirection`` to array axis.
SLICE_DIRECTIONS = {"i": 0, "i-": 0, "j": 1, "j-": 1, "k": 2, "k-": 2}

TrConflict = Literal["warn", "exclude"]

Sidecars = Sequence[tuple[Path, Mapping[str, Any]]]


class Rejected(Exception):
    """A file that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class BoldFacts:
    """What ingestion records about a usable BOLD run.

    Attributes
    ----------
    shape : tuple of int
        Image shape ``(x, y, z, n_volumes)``.
    tr : float
        Repetition time in seconds (from the sidecar).
    header_tr : float or None
        The header's TR in seconds, None when the header has a placeholder.
    n_slices : int
        Number of slices along the slice-encoding axis.
    has_slice_timing : bool
        True when ``SliceTiming`` is present and passed the sanity checks.
    warnings : tuple of str
        Problems that did not make the run unusable.
    """

    shape: tuple[int, ...]
    tr: float
    header_tr: float | None
    n_slices: int
    has_slice_timing: bool
    warnings: tuple[str, ...] = field(default=())

    @property
    def n_volumes(self) -> int:
        """Number of volumes (the 4th dimension)."""
        return self.shape[3]


def shape_text(shape: Sequence[int]) -> str:
    """``(64, 64, 30)`` -> ``"64x64x30"``."""
    return "x".join(str(int(n)) for n in shape)


def load_nifti(path: Path) -> Any:
    """Load a NIfTI image header with nibabel; raise :class:`Rejected` when it fails."""
    import nibabel as nib

    try:
        return nib.load(path)
    except Exception as err:  # nibabel raises many types for damaged files
        raise Rejected(f"cannot read NIfTI: {_error_text(err)}") from err


def check_image(path: Path, img: Any) -> None:
    """Refuse an image whose voxels or orientation cannot be used, or whose compressed
    data is damaged; raise :class:`Rejected` naming the problem.

    For a gzip file the whole stream is read (CRC and length checked) and the
    decompressed size compared with what the header announces, which also proves the
    file complete; an uncompressed file's last frame is read for that.
    """
    problem = image_problem(img)
    if problem is None:
        problem = voxel_size_problem(img.affine)
    if problem is not None:
        raise Rejected(problem)
    problem = compressed_data_problem(path, img)
    if problem is not None:
        raise Rejected(f"cannot read NIfTI data: {problem}")
    if not path.name.endswith(".gz"):
        read_last_frame(img)


def read_last_frame(img: Any) -> np.ndarray:
    """Read the image's last 3D frame (or last slice of a 3D image) from disk.

    Reading the end of the data proves the file is complete (a truncated ``.nii.gz``
    fails here) while only decoding what is needed.
    """
    try:
        return np.asanyarray(img.dataobj[..., -1])
    except Exception as err:  # EOFError, ValueError, zlib.error, OSError...
        raise Rejected(f"cannot read NIfTI data: {_error_text(err)}") from err


def sidecar_value(sidecars: Sidecars, key: str) -> tuple[Path | None, Any]:
    """The most specific sidecar that sets ``key`` and its value, or ``(None, None)``."""
    for path, content in reversed(sidecars):
        if key in content:
            return path, content[key]
    return None, None


def describe_sidecars(sidecars: Sidecars, expected: str) -> str:
    """Name the sidecars consulted, for a message."""
    if not sidecars:
        return f"no JSON sidecar (expected {expected})"
    names = ", ".join(path.name for path, _ in reversed(sidecars))
    return f"sidecar{'s' if len(sidecars) > 1 else ''} {names}"


def repetition_time(
    metadata: Mapping[str, Any],
    sidecars: Sidecars,
    expected: str,
    tr_range: Sequence[float] = DEFAULT_TR_RANGE,
) -> float:
    """The sidecar RepetitionTime in seconds, checked.

    Parameters
    ----------
    metadata : mapping
        Merged metadata of the run (pybids ``get_metadata``).
    sidecars : sequence of (Path, mapping)
        The applicable sidecars with their content, most general first; used to
        name the file in messages.
    expected : str
        The file-level sidecar name, for the message when there is no sidecar.
    tr_range : (float, float)
        Plausible repetition times in seconds, inclusive.

    Raises
    ------
    Rejected
        When the value is missing, not a number, not finite, not positive,
        implausibly large for seconds (milliseconds?) or outside ``tr_range``.
    """
    value = metadata.get("RepetitionTime")
    source, _ = sidecar_value(sidecars, "RepetitionTime")
    where = f"sidecar {source.name}" if source is not None else None
    if value is None:
        if source is not None:
            raise Rejected(f"RepetitionTime is null in {where}")
        if sidecars:
            raise Rejected(f"RepetitionTime missing in {describe_sidecars(sidecars, expected)}")
        raise Rejected(f"RepetitionTime missing: {describe_sidecars(sidecars, expected)}")
    where = where or "metadata"
    tr = as_number(value)
    shown = value_text(value)
    if tr is None:
        raise Rejected(f"RepetitionTime {shown} in {where} is not a number")
    if not math.isfinite(tr) or tr <= 0:
        raise Rejected(f"RepetitionTime {shown} in {where} is not a positive finite number")
    if tr > MAX_PLAUSIBLE_TR_S and tr > tr_range[1]:
        raise Rejected(
            f"RepetitionTime {shown} in {where} is over {MAX_PLAUSIBLE_TR_S:g} s "
            "(milliseconds? BIDS requires seconds)"
        )
    problem = tr_range_problem(tr, tr_range)
    if problem is not None:
        raise Rejected(f"RepetitionTime {shown} in {where} {problem}")
    return tr


def header_repetition_time(header: Any) -> float | None:
    """The header's TR (``pixdim[4]``) in seconds, or None when it carries no TR.

    Placeholders (0 or 1 in any unit), non-finite or negative values, and
    non-time units (Hz, ppm, rad/s) give None.
    """
    zooms = header.get_zooms()
    if len(zooms) < 4:
        return None
    raw = float(zooms[3])
    unit = header.get_xyzt_units()[1]
    if not math.isfinite(raw) or raw < 0 or raw in PLACEHOLDER_HEADER_TR:
        return None
    scale = TIME_UNIT_TO_SECONDS.get(unit)
    return None if scale is None else raw * scale


def tr_conflict_text(sidecar_tr: float, header_tr: float | None, tolerance: float) -> str | None:
    """Describe a header/sidecar TR disagreement beyond ``tolerance``, or None."""
    if header_tr is None:
        return None
    relative = abs(header_tr - sidecar_tr) / sidecar_tr
    if relative <= tolerance:
        return None
    return (
        f"header TR {header_tr:g} s disagrees with sidecar RepetitionTime {sidecar_tr:g} s "
        f"({relative:.1%} apart, tolerance {tolerance:.1%})"
    )


def slice_axis(metadata: Mapping[str, Any], header: Any) -> int:
    """Slice-encoding axis: ``SliceEncodingDirection``, else the header's ``dim_info``, else 2."""
    direction = metadata.get("SliceEncodingDirection")
    if isinstance(direction, str) and direction in SLICE_DIRECTIONS:
        return SLICE_DIRECTIONS[direction]
    try:
        slice_dim = header.get_dim_info()[2]
    except AttributeError:  # pragma: no cover - non-NIfTI headers
        slice_dim = None
    return int(slice_dim) if slice_dim is not None else 2


def slice_timing_problem(values: Any, n_slices: int, tr: float) -> str | None:
    """Why ``SliceTiming`` cannot be used, or None when it is sane.

    Sane means: a list of ``n_slices`` finite numbers, all in ``[0, tr)``, not all
    equal (equal offsets carry no timing).
    """
    if not isinstance(values, list) or not values:
        return "SliceTiming is not a non-empty list"
    numbers = [as_number(v) for v in values]
    if any(v is None for v in numbers):
        return "SliceTiming has non-numeric values"
    times = np.asarray(numbers, dtype=float)
    if not np.all(np.isfinite(times)):
        return "SliceTiming has non-finite values"
    if times.size != n_slices:
        return f"SliceTiming has {times.size} values but the image has {n_slices} slices"
    if times.min() < 0 or times.max() >= tr:
        return (
            f"SliceTiming values span {times.min():g} to {times.max():g} s, "
            f"outside [0, TR={tr:g} s)"
        )
    if n_slices > 1 and np.all(times == times[0]):
        return f"all SliceTiming values are equal ({times[0]:g} s)"
    return None


def check_bold(
    path: Path,
    metadata: Mapping[str, Any],
    sidecars: Sidecars,
    *,
    min_volumes: int,
    tr_tolerance: float,
    tr_conflict: TrConflict,
    tr_range: Sequence[float] = DEFAULT_TR_RANGE,
) -> BoldFacts:
    """Check one BOLD run; return its facts or raise :class:`Rejected`.

    Parameters
    ----------
    path : Path
        The BOLD NIfTI file.
    metadata : mapping
        Its merged sidecar metadata (pybids ``get_metadata``).
    sidecars : sequence of (Path, mapping)
        Applicable sidecars with their content, most general first.
    min_volumes : int
        Fewer volumes than this rejects the run.
    tr_tolerance : float
        Relative header/sidecar TR difference tolerated.
    tr_conflict : {"warn", "exclude"}
        What a larger difference does.
    tr_range : (float, float)
        Plausible repetition times in seconds; a sidecar value outside rejects the run.
    """
    img = load_nifti(path)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) != 4:
        raise Rejected(f"BOLD is {len(shape)}D (shape {shape_text(shape)}); expected 4D")
    if shape[3] < min_volumes:
        raise Rejected(f"fewer volumes ({shape[3]}) than min_volumes ({min_volumes})")
    problem = volume_count_problem(shape[3])
    if problem is not None:
        raise Rejected(problem)
    check_image(path, img)

    expected = _json_name(path)
    tr = repetition_time(metadata, sidecars, expected, tr_range)
    header_tr = header_repetition_time(img.header)
    warnings: list[str] = []
    conflict = tr_conflict_text(tr, header_tr, tr_tolerance)
    if conflict is not None:
        if tr_conflict == "exclude":
            raise Rejected(f"{conflict}; tr_conflict=exclude")
        warnings.append(f"{path.name}: {conflict}; using the sidecar value")

    axis = slice_axis(metadata, img.header)
    n_slices = shape[axis]
    has_slice_timing = False
    if "SliceTiming" in metadata:
        problem = slice_timing_problem(metadata["SliceTiming"], n_slices, tr)
        if problem is None:
            has_slice_timing = True
        else:
            warnings.append(f"{path.name}: SliceTiming ignored ({problem})")
    return BoldFacts(
        shape=shape,
        tr=tr,
        header_tr=header_tr,
        n_slices=n_slices,
        has_slice_timing=has_slice_timing,
        warnings=tuple(warnings),
    )


def check_t1w(path: Path) -> tuple[int, ...]:
    """Check one T1w image is readable and 3D; return its shape or raise :class:`Rejected`.

    A 4D image with a single volume counts as 3D.
    """
    img = load_nifti(path)
    shape = tuple(int(n) for n in img.shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise Rejected(f"T1w is {len(shape)}D (shape {shape_text(shape)}); expected 3D")
    check_image(path, img)
    return shape[:3]


def _json_name(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)] + ".json"
    return path.with_suffix(".json").name


def _error_text(err: BaseException) -> str:
    text = str(err).strip() or "no message"
    return f"{type(err).__name__}: {text}"
