"""Cortical surfaces and per-vertex labels, from offline sources or user files.

Templates (``template=``):

``"fslr32k"`` (default)
    brainspace's Conte69 fsLR-32k surfaces (32,492 vertices per hemisphere, MNI
    mm, midthickness-like), its cortex mask (medial wall excluded) and the
    Schaefer parcellations it ships on those vertices (LH 1-N/2, RH N/2+1-N,
    0 = medial wall). This is the population surface of the BrainHarmonix line
    of work (Pang et al. 2023 used the fsLR-32k midthickness).
``"fsaverage5"``
    nilearn's fsaverage5 (10,242 vertices per hemisphere). No midthickness
    surface is shipped: it is built as the vertex-wise mean of the pial and
    white surfaces (same topology). No cortex mask and no Schaefer labels are
    available offline for fsaverage5 (the fsLR <-> fsaverage registration
    spheres are not in any installed package), so on fsaverage5 the labels must
    come from user files (:func:`read_label_file`: ``.annot``, ``.label.gii``,
    or a one-integer-per-line ``.csv``/``.tsv``/``.txt``), and the cortex is the
    set of labelled vertices.

User surfaces: :func:`read_surface_file` reads GIfTI (``.surf.gii``) and
FreeSurfer geometry files.

Label conventions: labels are integers per vertex; ``0`` (and any negative
value) means *unlabelled* (medial wall, unknown). Parcels are identified by
their label value within a hemisphere.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from brainharmony.io import InputDataError, PathLike

logger = logging.getLogger(__name__)

Hemisphere = Literal["lh", "rh"]
HEMISPHERES: tuple[Hemisphere, Hemisphere] = ("lh", "rh")
TEMPLATES = ("fslr32k", "fsaverage5")


@dataclass(frozen=True)
class Surface:
    """One hemisphere's triangle mesh.

    Attributes
    ----------
    vertices : ndarray of shape (n_vertices, 3), float64
    faces : ndarray of shape (n_faces, 3), int64
    name : str
        Where it came from (template and kind, or a file path).
    """

    vertices: np.ndarray
    faces: np.ndarray
    name: str


@dataclass(frozen=True)
class SurfaceLabels:
    """Per-vertex integer labels of one hemisphere, with optional names.

    Attributes
    ----------
    labels : ndarray of shape (n_vertices,), int64
        0 or negative = unlabelled.
    names : dict of int to str
        Names of label values where known (e.g. from an ``.annot`` colour table).
    source : str
    """

    labels: np.ndarray
    names: dict[int, str] = field(default_factory=dict)
    source: str = ""


def _check_hemi(hemi: str) -> None:
    if hemi not in HEMISPHERES:
        raise ValueError(f"hemi must be one of {HEMISPHERES}; got {hemi!r}")


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}; got {template!r}")


def icosphere(subdivisions: int) -> Surface:
    """A unit sphere from a subdivided icosahedron.

    Every subdivision splits each triangle into four at the edge midpoints,
    which are pushed back onto the sphere.

    Parameters
    ----------
    subdivisions : int
        0 gives the icosahedron (12 vertices); ``s`` gives ``10 * 4**s + 2``
        vertices (3: 642, 4: 2,562, 5: 10,242).

    Returns
    -------
    Surface
        Outward-oriented triangles.
    """
    if not isinstance(subdivisions, int) or subdivisions < 0:
        raise ValueError(f"subdivisions must be a non-negative integer; got {subdivisions!r}")
    g = (1.0 + 5.0**0.5) / 2.0
    verts = np.array(
        [
            [-1, g, 0], [1, g, 0], [-1, -g, 0], [1, -g, 0],
            [0, -1, g], [0, 1, g], [0, -1, -g], [0, 1, -g],
            [g, 0, -1], [g, 0, 1], [-g, 0, -1], [-g, 0, 1],
        ],
        dtype=np.float64,
    )  # fmt: skip
    faces = np.array(
        [
            [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
            [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
            [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
            [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
        ],
        dtype=np.int64,
    )  # fmt: skip
    verts /= np.linalg.norm(verts, axis=1, keepdims=True)
    for _ in range(subdivisions):
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        edges.sort(axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        mid = verts[unique[:, 0]] + verts[unique[:, 1]]
        mid /= np.linalg.norm(mid, axis=1, keepdims=True)
        n_old, n_faces = verts.shape[0], faces.shape[0]
        m = inverse.reshape(3, n_faces) + n_old  # midpoints of edges 01, 12, 20
        a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
        faces = np.concatenate(
            [
                np.stack([a, m[0], m[2]], axis=1),
                np.stack([b, m[1], m[0]], axis=1),
                np.stack([c, m[2], m[1]], axis=1),
                np.stack([m[0], m[1], m[2]], axis=1),
            ]
        )
        verts = np.vstack([verts, mid])
    return Surface(verts, faces, f"icosphere-{subdivisions}")


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def load_template_surface(template: str = "fslr32k", hemi: Hemisphere = "lh") -> Surface:
    """A template hemisphere surface, offline (cached; the arrays are read-only).

    Parameters
    ----------
    template : {"fslr32k", "fsaverage5"}
        See the module notes for what each one is.
    hemi : {"lh", "rh"}

    Returns
    -------
    Surface
        fsLR-32k: brainspace Conte69 (midthickness-like); fsaverage5: mean of
        nilearn's pial and white surfaces.
    """
    _check_template(template)
    _check_hemi(hemi)
    return _template_surface(template, hemi)


def _brainspace_data(*parts: str) -> Path:
    """A file of brainspace's bundled datasets, located without importing brainspace.

    ``brainspace.datasets`` imports VTK (seconds); the surfaces, masks and
    parcellations are plain GIfTI/CSV files that nibabel and numpy read directly
    (the same arrays ``load_conte69``/``load_mask``/``load_parcellation`` return).
    """
    import importlib.util

    spec = importlib.util.find_spec("brainspace")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("brainspace is not installed (needed for fsLR-32k data)")
    path = Path(next(iter(spec.submodule_search_locations)), "datasets", *parts)
    if not path.is_file():
        raise FileNotFoundError(f"brainspace has no bundled file {path}")
    return path


@functools.lru_cache(maxsize=4)
def _template_surface(template: str, hemi: str) -> Surface:
    if template == "fslr32k":
        import nibabel as nib

        img = nib.load(str(_brainspace_data("surfaces", f"conte69_32k_{hemi}.gii")))
        points = next(d.data for d in img.darrays if d.intent == 1008)
        tris = next(d.data for d in img.darrays if d.intent == 1009)
        return Surface(
            _frozen(np.asarray(points, dtype=np.float64)),
            _frozen(np.asarray(tris, dtype=np.int64)),
            f"fslr32k-conte69-{hemi}",
        )
    from nilearn.datasets import load_fsaverage

    fsavg = load_fsaverage("fsaverage5")
    part = "left" if hemi == "lh" else "right"
    pial = fsavg["pial"].parts[part]
    white = fsavg["white_matter"].parts[part]
    if not np.array_equal(pial.faces, white.faces):
        raise RuntimeError("nilearn's fsaverage5 pial and white meshes differ in topology")
    verts = 0.5 * (np.asarray(pial.coordinates, float) + np.asarray(white.coordinates, float))
    return Surface(
        _frozen(verts),
        _frozen(np.asarray(pial.faces, dtype=np.int64)),
        f"fsaverage5-midthickness-{hemi}",
    )


def template_cortex_mask(template: str = "fslr32k", hemi: Hemisphere = "lh") -> np.ndarray:
    """The template's cortex mask (True = cortex, False = medial wall).

    Only fsLR-32k has one offline (brainspace's Conte69 mask: 29,271 LH and
    29,287 RH vertices).

    Returns
    -------
    ndarray of shape (n_vertices,), bool
    """
    _check_template(template)
    _check_hemi(hemi)
    if template != "fslr32k":
        raise ValueError(
            f"no cortex mask is available offline for {template}; "
            "use cortex='labels' (labelled vertices) or give a mask file"
        )
    path = _brainspace_data("surfaces", f"conte69_32k_{hemi}_mask.csv")
    return np.loadtxt(path, dtype=np.float64).astype(bool)


def load_template_labels(
    atlas: str = "schaefer400", template: str = "fslr32k", hemi: Hemisphere = "lh"
) -> SurfaceLabels:
    """Parcellation labels shipped offline for a template hemisphere.

    Parameters
    ----------
    atlas : str
        ``schaefer<N>`` (N in 100, 200, 300, 400, 1000) or ``vosdewael<N>``
        (N in 100-400): brainspace's parcellations on Conte69 fsLR-32k.
    template : {"fslr32k"}
        Only fsLR-32k ships labels offline; for fsaverage5 use
        :func:`read_label_file`.
    hemi : {"lh", "rh"}

    Returns
    -------
    SurfaceLabels
        LH labels 1..N/2, RH labels N/2+1..N, 0 = medial wall.
    """
    _check_template(template)
    _check_hemi(hemi)
    if template != "fslr32k":
        raise ValueError(
            f"no {atlas} labels are available offline on {template}; "
            "pass label files (.annot, .label.gii or .csv) instead"
        )
    name = atlas.rstrip("0123456789")
    scale_txt = atlas[len(name) :]
    if name not in ("schaefer", "vosdewael") or not scale_txt:
        raise ValueError(f"atlas must look like 'schaefer400' or 'vosdewael200'; got {atlas!r}")
    try:
        path = _brainspace_data("parcellations", f"{name}_{scale_txt}_conte69.csv")
    except FileNotFoundError as err:
        raise ValueError(f"brainspace ships no {atlas} parcellation: {err}") from None
    both = np.loadtxt(path, dtype=np.int64)
    half = both.size // 2
    labels = both[:half] if hemi == "lh" else both[half:]
    return SurfaceLabels(labels, {}, f"brainspace:{atlas}:conte69:{hemi}")


def read_surface_file(path: PathLike) -> Surface:
    """Read a surface mesh: GIfTI (``.gii``) or FreeSurfer geometry (``lh.pial``...).

    Returns
    -------
    Surface

    Raises
    ------
    InputDataError
        Missing or unreadable file, or no triangle/point arrays in a GIfTI.
    """
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "surface file not found")
    import nibabel as nib

    try:
        if p.name.endswith(".gii"):
            img = nib.load(str(p))
            points = [d.data for d in img.darrays if d.intent == 1008]  # POINTSET
            tris = [d.data for d in img.darrays if d.intent == 1009]  # TRIANGLE
            if not points or not tris:
                raise InputDataError(p, "GIfTI has no POINTSET and TRIANGLE arrays")
            verts, faces = points[0], tris[0]
        else:
            verts, faces = nib.freesurfer.read_geometry(str(p))
    except InputDataError:
        raise
    except Exception as err:  # nibabel raises many types for corrupt files
        raise InputDataError(p, f"cannot read surface: {err}") from None
    return Surface(np.asarray(verts, np.float64), np.asarray(faces, np.int64), str(p))


def read_label_file(path: PathLike, n_vertices: int | None = None) -> SurfaceLabels:
    """Read per-vertex labels of one hemisphere from a file.

    Formats
    -------
    ``.annot``
        FreeSurfer annotation; values are the colour-table indices (as nibabel
        returns them), names from the colour table, ``-1`` (no label) becomes 0.
        Schaefer's annotations number each hemisphere 1..N/2 with index 0 the
        medial wall, which fits the convention here.
    ``.label.gii`` / ``.gii``
        GIfTI label array; names from its label table.
    ``.csv`` / ``.tsv`` / ``.txt``
        One integer per line, no header.

    Parameters
    ----------
    path : path-like
    n_vertices : int, optional
        Expected number of vertices; a mismatch is an error.

    Returns
    -------
    SurfaceLabels
    """
    p = Path(path)
    if not p.is_file():
        raise InputDataError(p, "label file not found")
    names: dict[int, str] = {}
    try:
        if p.suffix == ".annot":
            import nibabel as nib

            labels, _ctab, raw_names = nib.freesurfer.read_annot(str(p))
            labels = np.asarray(labels, dtype=np.int64)
            names = {
                i: (n.decode() if isinstance(n, bytes) else str(n)) for i, n in enumerate(raw_names)
            }
        elif p.name.endswith(".gii"):
            import nibabel as nib

            img = nib.load(str(p))
            if not img.darrays:
                raise InputDataError(p, "GIfTI has no data array")
            labels = np.asarray(img.darrays[0].data).astype(np.int64).ravel()
            names = {int(k): str(v) for k, v in img.labeltable.get_labels_as_dict().items()}
        elif p.suffix in (".csv", ".tsv", ".txt"):
            labels = np.loadtxt(p, dtype=np.float64, ndmin=1)
            if labels.ndim != 1:
                raise InputDataError(p, f"expected one label per line; got shape {labels.shape}")
            if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
                raise InputDataError(p, "labels must be integers")
            labels = labels.astype(np.int64)
        else:
            raise InputDataError(
                p, "unknown label format; use .annot, .label.gii, .csv, .tsv or .txt"
            )
    except InputDataError:
        raise
    except Exception as err:
        raise InputDataError(p, f"cannot read labels: {err}") from None
    labels = np.where(labels < 0, 0, labels)
    if n_vertices is not None and labels.shape[0] != n_vertices:
        raise InputDataError(
            p, f"has {labels.shape[0]} labels but the surface has {n_vertices} vertices"
        )
    return SurfaceLabels(labels, names, str(p))
