"""Which Schaefer-400 (7 networks) atlas the functional stage uses, found offline.

The parcellation must be in the template space of the BOLD it is applied to (the
native backend's ``anat.template``, fMRIPrep's ``func.fmriprep.space``). The
official Schaefer-2018 volume is preferred; nothing is ever downloaded. Order
(``func.atlas`` in the config):

1. ``func.atlas.path``: a file the config names (its space from ``func.atlas.space``,
   else from a ``tpl-<space>`` / ``space-<space>`` entity or ``FSLMNI152`` in its name;
   its label table beside it).
2. The TemplateFlow home (``$TEMPLATEFLOW_HOME``, else ``~/.cache/templateflow``):
   ``tpl-<space>/tpl-<space>_res-0<r>_atlas-Schaefer2018_desc-400Parcels7Networks_dseg
   .nii.gz`` with ``tpl-<space>[_res-0<r>]_atlas-Schaefer2018_desc-400Parcels7Networks
   _dseg.tsv``.
3. nilearn's data folders (``$NILEARN_SHARED_DATA``, ``$NILEARN_DATA``,
   ``~/nilearn_data``), where ``fetch_atlas_schaefer_2018`` keeps
   ``schaefer_2018/Schaefer2018_400Parcels_7Networks_order_FSLMNI152_<r>mm.nii.gz`` and
   ``..._order.txt``. That volume is in FSL's MNI152 (6th generation, TemplateFlow's
   ``MNI152NLin6Asym``), so it is used only for BOLD in that space.
4. ``auto`` (the default) falls back to the offline rebuild
   (:func:`brainharmony.atlas.schaefer400_volume`) on the space's grey matter: nilearn's
   for ``MNI152NLin2009aAsym``, TemplateFlow's ``tpl-<space>_res-01_label-GM_probseg
   .nii.gz`` for any other space. Without one the lookup refuses (no atlas in another
   space is ever put on the BOLD).

Official files exist at 1 and 2 mm only; other ``func.resolution_mm`` values use the
rebuild (or are refused with ``source: official``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: ``func.atlas.source`` values.
SOURCES: tuple[str, ...] = ("auto", "official", "rebuild")
#: TemplateFlow entities of the official atlas.
OFFICIAL_ATLAS = "Schaefer2018"
OFFICIAL_DESC = "400Parcels7Networks"
#: FSL's MNI152 (the space of CBIG's ``FSLMNI152`` volumes and nilearn's fetcher).
FSL_MNI152 = "MNI152NLin6Asym"
#: Resolutions (mm) the official volumes are published at.
OFFICIAL_RESOLUTIONS: tuple[int, ...] = (1, 2)
#: Where each origin's file came from, for the human-readable identity.
ORIGINS: tuple[str, ...] = ("config", "templateflow", "nilearn")
#: Space the rebuild needs no extra file for (nilearn ships its grey matter).
REBUILD_DEFAULT_SPACE = "MNI152NLin2009aAsym"

_NILEARN_STEM = "Schaefer2018_400Parcels_7Networks_order"


class AtlasUnavailableError(RuntimeError):
    """No usable atlas for the BOLD's space. The message says what was looked for."""


@dataclass(frozen=True)
class OfficialAtlas:
    """An official Schaefer-2018 400-parcel 7-network volume found on disk.

    Attributes
    ----------
    image : Path
        The label volume (``.nii.gz``).
    labels : Path
        Its label table (TemplateFlow ``.tsv`` or CBIG ``_order.txt`` / ``.lut``).
    space : str
        Template space (TemplateFlow name).
    origin : {"config", "templateflow", "nilearn"}
        Where it was found.
    """

    image: Path
    labels: Path
    space: str
    origin: str

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {self.origin!r}")

    def describe(self, resolution_mm: float) -> str:
        """Where the file comes from, e.g. ``TemplateFlow tpl-X res-02``."""
        res = f"res-{round(resolution_mm):02d}"
        if self.origin == "templateflow":
            return f"TemplateFlow tpl-{self.space} {res}"
        if self.origin == "nilearn":
            return (
                f"CBIG FSLMNI152 volume from nilearn's data folder, FSL MNI152 = "
                f"{self.space}, {resolution_mm:g} mm"
            )
        return f"func.atlas.path {self.image.name}, {self.space}"


@dataclass(frozen=True)
class AtlasChoice:
    """The atlas the functional stage uses for one space and resolution.

    Attributes
    ----------
    source : {"official", "rebuild"}
    space : str
        Template space of the BOLD (and of the atlas).
    resolution_mm : float
    official : OfficialAtlas or None
        The file, when ``source`` is ``official``.
    grey_matter : Path or None
        The rebuild's 1 mm grey-matter map (None: nilearn's, for
        ``MNI152NLin2009aAsym``).
    notes : tuple of str
        What the lookup saw and skipped (logged, and kept in the atlas sidecar).
    """

    source: str
    space: str
    resolution_mm: float
    official: OfficialAtlas | None = None
    grey_matter: Path | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.source not in ("official", "rebuild"):
            raise ValueError(f"source must be 'official' or 'rebuild', got {self.source!r}")
        if (self.source == "official") != (self.official is not None):
            raise ValueError("an official choice needs its file, a rebuild none")

    @property
    def identity(self) -> str:
        """Human-readable name of the atlas (the parcel-series sidecars' ``Atlas``)."""
        base = "Schaefer2018 400 parcels 7 networks"
        if self.official is not None:
            return f"{base} (official, {self.official.describe(self.resolution_mm)})"
        return (
            f"{base} (offline rebuild from surface labels on {self.space} grey matter; "
            "not the official volume)"
        )

    def cli_args(self) -> list[str]:
        """``brainharmony func atlas`` options that reproduce this choice exactly."""
        args = ["--space", self.space]
        if self.official is not None:
            return [
                *args,
                "--source",
                "official",
                "--path",
                str(self.official.image),
                "--labels",
                str(self.official.labels),
                "--path-space",
                self.official.space,
                "--origin",
                self.official.origin,
            ]
        args += ["--source", "rebuild"]
        if self.grey_matter is not None:
            args += ["--grey-matter", str(self.grey_matter)]
        return args


# --------------------------------------------------------------------------------------
# Where to look
# --------------------------------------------------------------------------------------
def templateflow_home() -> Path:
    """``$TEMPLATEFLOW_HOME``, else TemplateFlow's default ``~/.cache/templateflow``."""
    home = os.environ.get("TEMPLATEFLOW_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "templateflow"


def nilearn_data_dirs() -> list[Path]:
    """nilearn's data folders, in the order its fetchers search them.

    ``$NILEARN_SHARED_DATA`` and ``$NILEARN_DATA`` (each may list several folders),
    then ``~/nilearn_data`` (nilearn's ``get_data_dirs`` without importing nilearn).
    """
    dirs: list[Path] = []
    for var in ("NILEARN_SHARED_DATA", "NILEARN_DATA"):
        dirs += [Path(p).expanduser() for p in os.environ.get(var, "").split(os.pathsep) if p]
    dirs.append(Path.home() / "nilearn_data")
    return dirs


def templateflow_atlas_files(space: str, resolution_mm: int) -> tuple[Path, list[Path]]:
    """TemplateFlow paths of the official volume and its candidate label tables."""
    folder = templateflow_home() / f"tpl-{space}"
    ent = f"atlas-{OFFICIAL_ATLAS}_desc-{OFFICIAL_DESC}_dseg"
    res = f"res-{resolution_mm:02d}"
    return (
        folder / f"tpl-{space}_{res}_{ent}.nii.gz",
        [folder / f"tpl-{space}_{ent}.tsv", folder / f"tpl-{space}_{res}_{ent}.tsv"],
    )


def nilearn_atlas_files(resolution_mm: int) -> list[tuple[Path, Path]]:
    """nilearn data-folder paths of the CBIG volume and its label file, per folder."""
    return [
        (
            d / "schaefer_2018" / f"{_NILEARN_STEM}_FSLMNI152_{resolution_mm}mm.nii.gz",
            d / "schaefer_2018" / f"{_NILEARN_STEM}.txt",
        )
        for d in nilearn_data_dirs()
    ]


def templateflow_grey_matter(space: str) -> Path:
    """TemplateFlow path of a template's 1 mm grey-matter probability map."""
    return templateflow_home() / f"tpl-{space}" / f"tpl-{space}_res-01_label-GM_probseg.nii.gz"


def space_of_file(path: str | os.PathLike[str]) -> str | None:
    """The template space a file name states (``tpl-``/``space-`` entity, ``FSLMNI152``)."""
    name = Path(path).name
    m = re.search(r"(?:^|_)(?:tpl|space)-([A-Za-z0-9]+)", name)
    if m:
        return m.group(1)
    if "FSLMNI152" in name:
        return FSL_MNI152
    return None


def label_table_for(image: str | os.PathLike[str]) -> Path | None:
    """The label table beside an atlas volume, or None.

    Tried in order: the same stem with ``.tsv``; TemplateFlow's table without the
    ``res-`` entity; CBIG's ``<stem without _FSLMNI152_<r>mm>.txt`` / ``.lut``.
    """
    image = Path(image)
    stem = re.sub(r"\.nii(\.gz)?$", "", image.name)
    tries = [f"{stem}.tsv", re.sub(r"_res-[A-Za-z0-9]+", "", stem) + ".tsv"]
    cbig = re.sub(r"_FSLMNI152_\d+mm$", "", stem)
    tries += [f"{cbig}.txt", f"{cbig}.lut", f"{cbig}.tsv"]
    for name in dict.fromkeys(tries):
        if (image.parent / name).is_file():
            return image.parent / name
    return None


# --------------------------------------------------------------------------------------
# The lookup
# --------------------------------------------------------------------------------------
def _official_resolution(resolution_mm: float) -> int | None:
    r = float(resolution_mm)
    return int(r) if r in OFFICIAL_RESOLUTIONS else None


def config_atlas(
    path: str | os.PathLike[str],
    space: str,
    *,
    path_space: str | None = None,
    labels: str | os.PathLike[str] | None = None,
    origin: str = "config",
) -> OfficialAtlas:
    """The atlas file named by ``func.atlas.path`` (checked, not read).

    Raises
    ------
    AtlasUnavailableError
        Missing file or label table, unknown space, or a space other than ``space``.
    """
    image = Path(path).expanduser()
    if not image.is_file():
        raise AtlasUnavailableError(f"func.atlas.path {image} does not exist")
    file_space = path_space or space_of_file(image)
    if file_space is None:
        raise AtlasUnavailableError(
            f"func.atlas.path {image.name} does not say its template space (no tpl-/space- "
            f"entity); set func.atlas.space (the BOLD is in {space})"
        )
    if file_space != space:
        raise AtlasUnavailableError(
            f"func.atlas.path {image} is in {file_space} but the BOLD is in {space}: an "
            f"atlas is never moved between template spaces; give a {space} volume"
        )
    table = Path(labels).expanduser() if labels else label_table_for(image)
    if table is None or not table.is_file():
        raise AtlasUnavailableError(
            f"no label table beside func.atlas.path {image} (a .tsv with index and name "
            f"columns, or CBIG's _order.txt)"
        )
    return OfficialAtlas(image, table, file_space, origin)


def find_official(space: str, resolution_mm: float) -> tuple[OfficialAtlas | None, list[str]]:
    """The first official volume in ``space`` at ``resolution_mm`` found offline.

    Looks in the TemplateFlow home, then nilearn's data folders (only for
    :data:`FSL_MNI152`). Returns the file (or None) and notes on what was seen.
    """
    notes: list[str] = []
    res = _official_resolution(resolution_mm)
    if res is None:
        notes.append(
            f"official Schaefer2018 volumes exist at 1 and 2 mm only, not {resolution_mm:g} mm"
        )
        return None, notes
    image, tables = templateflow_atlas_files(space, res)
    if image.is_file():
        table = next((t for t in tables if t.is_file()), None)
        if table is not None:
            return OfficialAtlas(image, table, space, "templateflow"), notes
        notes.append(f"{image} has no label table ({tables[0].name})")
    else:
        notes.append(f"not in the TemplateFlow home: {image}")
    for nl_image, nl_labels in nilearn_atlas_files(res):
        if not nl_image.is_file():
            continue
        if space != FSL_MNI152:
            notes.append(f"{nl_image} is in FSL MNI152 ({FSL_MNI152}), not {space}: not used")
            continue
        if not nl_labels.is_file():
            notes.append(f"{nl_image} has no label file {nl_labels.name}")
            continue
        return OfficialAtlas(nl_image, nl_labels, FSL_MNI152, "nilearn"), notes
    if space == FSL_MNI152:
        notes.append(f"not in nilearn's data folders: {nilearn_atlas_files(res)[0][0].name}")
    return None, notes


def rebuild_grey_matter(space: str) -> tuple[bool, Path | None, str]:
    """Whether the rebuild can be made in ``space``: (possible, grey-matter file, note)."""
    if space == REBUILD_DEFAULT_SPACE:
        return True, None, "grey matter: nilearn's ICBM152 2009a map (ships offline)"
    gm = templateflow_grey_matter(space)
    if gm.is_file():
        return True, gm, f"grey matter: {gm}"
    return False, None, f"no 1 mm grey-matter map for {space}: {gm} does not exist"


def resolve_atlas(
    space: str,
    resolution_mm: float,
    *,
    source: str = "auto",
    path: str | os.PathLike[str] | None = None,
    path_space: str | None = None,
) -> AtlasChoice:
    """The atlas to use for BOLD in ``space`` on a ``resolution_mm`` grid.

    Parameters
    ----------
    space : str
        Template space of the BOLD.
    resolution_mm : float
    source : {"auto", "official", "rebuild"}
        ``auto``: the official volume when found (see the module docstring), else the
        rebuild; ``official``: the official volume or an error; ``rebuild``: the
        rebuild.
    path : path-like, optional
        ``func.atlas.path`` (not with ``rebuild``).
    path_space : str, optional
        ``func.atlas.space``: the space of ``path`` when its name does not say it.

    Returns
    -------
    AtlasChoice

    Raises
    ------
    ValueError
        An unknown ``source``, or ``path`` with ``rebuild``.
    AtlasUnavailableError
        Nothing usable in ``space`` (the message lists what was looked for).
    """
    if source not in SOURCES:
        raise ValueError(f"func.atlas.source must be one of {SOURCES}, got {source!r}")
    if path and source == "rebuild":
        raise ValueError("func.atlas.path is set but func.atlas.source is 'rebuild'")
    resolution_mm = float(resolution_mm)
    notes: list[str] = []
    if path:
        official = config_atlas(path, space, path_space=path_space)
        return AtlasChoice("official", space, resolution_mm, official, notes=tuple(notes))
    if source != "rebuild":
        found, notes = find_official(space, resolution_mm)
        if found is not None:
            choice = AtlasChoice("official", space, resolution_mm, found, notes=tuple(notes))
            logger.info("atlas: %s", choice.identity)
            return choice
        if source == "official":
            res = _official_resolution(resolution_mm) or 2
            raise AtlasUnavailableError(
                f"func.atlas.source is 'official' but no official Schaefer2018 "
                f"400-parcel 7-network volume in {space} at {resolution_mm:g} mm was found "
                f"offline ({'; '.join(notes)}). Put TemplateFlow's file there (e.g. "
                f"templateflow.api.get('{space}', atlas='Schaefer2018', "
                f"desc='400Parcels7Networks', resolution={res}) "
                f"where there is network), set func.atlas.path, or use source 'auto' / "
                f"'rebuild'"
            )
    ok, gm, note = rebuild_grey_matter(space)
    notes.append(note)
    if not ok:
        raise AtlasUnavailableError(
            f"no Schaefer-400 atlas in {space} is available offline: {'; '.join(notes)}. "
            f"Give TemplateFlow's tpl-{space}_res-0<r>_atlas-Schaefer2018_desc-"
            f"400Parcels7Networks_dseg.nii.gz (+ .tsv) or its "
            f"tpl-{space}_res-01_label-GM_probseg.nii.gz (for the rebuild) under "
            f"{templateflow_home()} ($TEMPLATEFLOW_HOME), or set func.atlas.path; an atlas "
            f"in another space is never put on {space} BOLD"
        )
    choice = AtlasChoice("rebuild", space, resolution_mm, grey_matter=gm, notes=tuple(notes))
    if source == "auto":
        logger.info("atlas: no official volume found, using the %s", choice.identity)
    return choice
