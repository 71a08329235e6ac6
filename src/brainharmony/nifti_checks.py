"""Checks that every stage reading a raw NIfTI applies: orientation, voxel type,
complete compressed data, plausible values.

Ingest (:mod:`brainharmony.bids_checks`), the functional stage
(:mod:`brainharmony.func.pipeline`, :mod:`brainharmony.func.fmriprep`) and the
anatomy stage (:mod:`brainharmony.anat.images`) use these functions, so an image is
refused for the same reason, in the same words, wherever it is read. Each check
returns a short text saying what is wrong (``None`` when nothing is); the caller
turns it into its own kind of refusal (an ingest exclusion, an
:class:`~brainharmony.io.InputDataError`).

Limits (module constants; docs/ingest.md, func.md and anat.md describe them)
--------------------------------------------------------------------------
* :data:`DEFAULT_TR_RANGE`: repetition times outside 0.1-10 s are refused
  (``ingest.tr_range`` in the config, ``--tr-range`` on the command lines).
* :data:`VOXEL_SIZE_RANGE_MM`: each voxel edge of a BOLD or T1w must be 0.1-20 mm.
* :data:`MAX_VOLUMES`: a BOLD run with more volumes is refused by ingest.
* :data:`MAX_ABS_VOXEL`: a voxel whose value exceeds this magnitude is corrupt,
  treated like NaN/Inf (excluded and counted against ``max_nonfinite_fraction``).
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainharmony.io import InputDataError, PathLike

#: Repetition times (s) accepted by default, inclusive. BIDS sidecars in
#: milliseconds (e.g. 2000) and placeholders (1e-6) fall outside.
DEFAULT_TR_RANGE: tuple[float, float] = (0.1, 10.0)
#: Smallest and largest voxel edge (mm, from the affine in use), inclusive.
VOXEL_SIZE_RANGE_MM: tuple[float, float] = (0.1, 20.0)
#: Most volumes a BOLD run may have (a header claiming more is corrupt or not a
#: single run; 100,000 volumes at TR 0.1 s are close to 3 hours).
MAX_VOLUMES = 100_000
#: Largest voxel magnitude taken as signal. Scanner data (int16, or float after
#: scaling) stay far below; values beyond are corrupt and handled like NaN/Inf.
MAX_ABS_VOXEL = 1.0e10
#: Chunk size of the streaming gzip check (bytes); memory stays at this.
GZIP_CHUNK = 1 << 22
#: Numpy dtype kinds a stage can represent as real numbers.
_REAL_KINDS = ("i", "u", "f")
#: A 3x3 matrix whose |det| / product of column norms is below this is singular.
_SINGULAR_RTOL = 1e-6


def orientation_problem(img: Any) -> str | None:
    """Why the voxel -> world mapping of ``img`` cannot be trusted, or None.

    For NIfTI images: the ``qform_code`` and ``sform_code`` are both 0 (nibabel then
    falls back to an affine built from the voxel sizes alone, which flips and shifts
    the image), or the affine in use (the sform when its code is non-zero, else the
    qform) has non-finite entries or is singular. Other formats: only the affine is
    checked.
    """
    header = img.header
    try:
        qcode = int(header["qform_code"])
        scode = int(header["sform_code"])
    except (KeyError, TypeError, ValueError):
        qcode = scode = None
    if qcode is not None and scode is not None:
        if qcode == 0 and scode == 0:
            return (
                "no orientation: qform_code and sform_code are both 0 "
                "(the voxel -> world mapping is unknown)"
            )
        name = f"sform (code {scode})" if scode != 0 else f"qform (code {qcode})"
        try:
            affine = header.get_sform() if scode != 0 else header.get_qform()
        except Exception as err:  # nibabel rejects impossible quaternions / pixdims
            return f"{name} cannot be read: {type(err).__name__}: {err}"
    else:
        name = "image affine"
        affine = img.affine
    return affine_problem(affine, name)


def affine_problem(affine: Any, name: str = "image affine") -> str | None:
    """Why a 4x4 voxel -> world affine is unusable (non-finite, singular), or None."""
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        return f"{name} has shape {matrix.shape}, not 4x4"
    if not np.all(np.isfinite(matrix)):
        return f"{name} has non-finite entries"
    lin = matrix[:3, :3]
    zooms = np.linalg.norm(lin, axis=0)
    if np.any(zooms == 0):
        return f"{name} is singular (a voxel axis has length 0; voxel sizes {_fmt(zooms)} mm)"
    if abs(float(np.linalg.det(lin))) / float(np.prod(zooms)) < _SINGULAR_RTOL:
        return f"{name} is singular (its voxel axes are not independent)"
    return None


def dtype_problem(dtype: Any) -> str | None:
    """Why voxels of ``dtype`` cannot be used as real numbers (complex, RGB), or None."""
    dt = np.dtype(dtype)
    if dt.fields is not None or dt.kind == "V":
        return f"voxel type {dt} (RGB or structured) cannot be used; a real-valued image is needed"
    if dt.kind == "c":
        return f"voxel type {dt} is complex; a real-valued image is needed (magnitude, not complex)"
    if dt.kind not in _REAL_KINDS:
        return f"voxel type {dt} cannot be used; a real-valued image is needed"
    return None


def image_problem(img: Any) -> str | None:
    """The first of :func:`dtype_problem` and :func:`orientation_problem`, or None."""
    return dtype_problem(img.get_data_dtype()) or orientation_problem(img)


def file_problem(path: PathLike, img: Any) -> str | None:
    """Everything a stage checks before reading the voxels of ``img`` (loaded from
    ``path``): :func:`image_problem`, then the whole gzip stream
    (:func:`compressed_data_problem`). None when the image is usable."""
    problem = image_problem(img)
    if problem is not None:
        return problem
    problem = compressed_data_problem(path, img)
    if problem is not None:
        return f"the compressed data is damaged ({problem})"
    return None


def load_checked(path: PathLike, what: str) -> Any:
    """Load an image with nibabel and apply :func:`image_problem` and
    :func:`compressed_data_problem`.

    Raises
    ------
    InputDataError
        Naming ``path`` and the problem (``what`` names the image in the message).
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputDataError(path, f"{what} file not found")
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types for broken files
        raise InputDataError(path, f"cannot read the {what}: {err}") from err
    problem = image_problem(img)
    if problem is not None:
        raise InputDataError(path, f"{what}: {problem}")
    problem = compressed_data_problem(path, img)
    if problem is not None:
        raise InputDataError(
            path, f"cannot read the {what}: the compressed data is damaged ({problem})"
        )
    return img


def is_gzip(path: PathLike) -> bool:
    """True when the file starts with the gzip magic bytes (or is named ``*.gz``)."""
    path = Path(path)
    if path.name.endswith(".gz"):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def gzip_problem(path: PathLike, chunk: int = GZIP_CHUNK) -> tuple[int, str | None]:
    """Decompress a gzip file to its end; return (bytes decompressed, problem or None).

    Reading every member to its end makes Python's :mod:`gzip` verify the CRC-32 and
    the length in each member's trailer, which a reader that stops after the bytes it
    needs (nibabel) never looks at. Memory stays at ``chunk`` bytes.
    """
    total = 0
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    try:
        with gzip.open(path, "rb") as stream:
            while True:
                n = stream.readinto(view)
                if not n:
                    break
                total += n
    except (OSError, EOFError, zlib.error) as err:
        # BadGzipFile (an OSError): CRC or length mismatch, bad header; EOFError:
        # truncated; zlib.error: corrupt deflate data.
        return total, f"{type(err).__name__}: {str(err).strip() or 'no message'}"
    return total, None


def compressed_data_problem(path: PathLike, img: Any | None = None) -> str | None:
    """For a gzip-compressed image: why its compressed data is damaged, or None.

    The text starts with the exception's type (``BadGzipFile: CRC check failed ...``,
    ``EOFError: Compressed file ended ...``, ``error: Error -3 while decompressing``).
    Checks the whole stream (:func:`gzip_problem`) and, when ``img`` is given, that
    the decompressed bytes hold all the voxel data its header announces.
    """
    if not is_gzip(path):
        return None
    total, problem = gzip_problem(path)
    if problem is not None:
        return problem
    if img is not None:
        needed = expected_nbytes(img)
        if needed is not None and total < needed:
            return (
                f"gzip data ends early: {total} bytes decompressed, the header announces {needed}"
            )
    return None


def expected_nbytes(img: Any) -> int | None:
    """Bytes from the file start to the end of the voxel data, or None when unknown."""
    header = img.header
    try:
        # nibabel keeps the file's vox_offset on the array proxy, not in the header.
        offset = int(getattr(img.dataobj, "offset", header.get_data_offset()))
        dtype = np.dtype(header.get_data_dtype())
        shape = header.get_data_shape()
    except Exception:
        return None
    return offset + math.prod(int(n) for n in shape) * dtype.itemsize


def voxel_sizes(affine: Any) -> np.ndarray:
    """Voxel edge lengths (mm) of a voxel -> world affine."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def voxel_size_problem(
    affine: Any, size_range: Sequence[float] = VOXEL_SIZE_RANGE_MM
) -> str | None:
    """Why the voxel sizes of ``affine`` are implausible, or None."""
    low, high = float(size_range[0]), float(size_range[1])
    zooms = voxel_sizes(affine)
    if np.all((zooms >= low) & (zooms <= high)):
        return None
    return f"voxel size {_fmt(zooms)} mm is outside {low:g}-{high:g} mm"


def volume_count_problem(n_volumes: int, max_volumes: int = MAX_VOLUMES) -> str | None:
    """Why ``n_volumes`` is implausibly many for one run, or None."""
    if n_volumes > max_volumes:
        return f"{n_volumes} volumes is more than the plausible maximum ({max_volumes})"
    return None


def check_tr_range(tr_range: Any) -> tuple[float, float]:
    """Validate a ``(min, max)`` TR range in seconds; return it as floats.

    Raises
    ------
    ValueError
        Unless both are finite numbers with ``0 < min < max``.
    """
    try:
        low, high = tr_range
    except (TypeError, ValueError):
        raise ValueError(f"tr_range must be two numbers [min, max]; got {tr_range!r}") from None
    for value in (low, high):
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
            raise ValueError(f"tr_range must be two numbers [min, max]; got {tr_range!r}")
    try:
        low, high = float(low), float(high)
    except OverflowError:
        raise ValueError(f"tr_range values are too large; got {tr_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise ValueError(f"tr_range must satisfy 0 < min < max (seconds); got {tr_range!r}")
    return low, high


def tr_range_problem(tr: float, tr_range: Sequence[float] = DEFAULT_TR_RANGE) -> str | None:
    """Why a repetition time (s) is outside ``tr_range``, or None."""
    low, high = float(tr_range[0]), float(tr_range[1])
    if low <= tr <= high:
        return None
    return f"is outside the plausible range {low:g}-{high:g} s (tr_range)"


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number (not bool), else None.

    Integers too large for a float (hundreds of digits) give ``inf`` instead of
    raising :class:`OverflowError`, so range checks can refuse them with a message.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def value_text(value: Any, limit: int = 40) -> str:
    """``repr(value)``, shortened for messages (a 400-digit integer stays readable)."""
    try:
        text = repr(value)
    except ValueError:  # int beyond sys.get_int_max_str_digits()
        return f"<integer of more than {limit} digits>"
    if len(text) > limit:
        if isinstance(value, int) and not isinstance(value, bool):
            return f"<integer of {len(text.lstrip('-'))} digits>"
        return text[: limit - 3] + "..."
    return text


def implausible_mask(data: np.ndarray, limit: float = MAX_ABS_VOXEL) -> np.ndarray:
    """Boolean mask of elements that are NaN, infinite or beyond ``limit`` in magnitude.

    Two comparisons, no float copy of ``data`` (NaN compares False).
    """
    ok = data <= limit
    ok &= data >= -limit
    return ~ok


def _fmt(values: np.ndarray) -> str:
    return "x".join(f"{float(v):.4g}" for v in values)
