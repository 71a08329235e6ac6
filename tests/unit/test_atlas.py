"""The offline Schaefer-400 volume: labels, names, networks, grids, caching."""

from __future__ import annotations

import numpy as np
import pytest

from brainharmony import atlas


def _counts(resolution: float) -> np.ndarray:
    image, _ = atlas.schaefer400_volume(resolution)
    data = np.asarray(image.dataobj)
    return np.bincount(data.ravel(), minlength=atlas.N_PARCELS + 1)


def test_labels_table_follows_schaefer_order() -> None:
    table = atlas.schaefer400_labels()
    assert list(table.columns) == ["index", "name", "network", "hemisphere"]
    assert table["index"].tolist() == list(range(1, 401))
    assert table.loc[0, "name"] == "7Networks_LH_Vis_1"
    assert table.loc[30, "name"] == "7Networks_LH_Vis_31"
    assert table.loc[31, "name"] == "7Networks_LH_SomMot_1"
    assert table.loc[200, "name"] == "7Networks_RH_Vis_1"
    assert table.loc[399, "name"] == "7Networks_RH_Default_39"
    assert (table["hemisphere"].iloc[:200] == "LH").all()
    assert (table["hemisphere"].iloc[200:] == "RH").all()
    per_net = table.groupby("network").size()
    expected = {"Vis": 61, "SomMot": 77, "DorsAttn": 46, "SalVentAttn": 47}
    expected |= {"Limbic": 26, "Cont": 52, "Default": 91}
    assert per_net.to_dict() == expected
    # Each network is one contiguous run per hemisphere.
    for _, block in table.groupby(["hemisphere", "network"]):
        assert np.all(np.diff(block["index"].to_numpy()) == 1)


def test_surface_networks_sit_where_they_should() -> None:
    """The brainspace numbering is the 7-network order (checked by anatomy)."""
    cen = atlas.schaefer400_centroids().groupby(["hemisphere", "network"])[["x", "y", "z"]]
    mean = cen.mean()
    for hemi, sign in (("LH", -1), ("RH", 1)):
        assert (
            np.sign(atlas.schaefer400_centroids().query("hemisphere == @hemi")["x"]) == sign
        ).all()
        assert mean.loc[(hemi, "Vis"), "y"] < -55  # occipital
        assert mean.loc[(hemi, "Limbic"), "z"] < -15  # orbitofrontal / temporal pole
        assert mean.loc[(hemi, "SomMot"), "z"] > 25  # central sulcus, dorsal


@pytest.mark.parametrize("resolution", [2.0, 4.0, 5.0, 6.0])
def test_every_parcel_present(resolution: float) -> None:
    counts = _counts(resolution)[1:]
    assert (counts > 0).all(), (
        f"missing parcels at {resolution} mm: {np.flatnonzero(counts == 0) + 1}"
    )
    # Reasonable sizes: about (ribbon volume / 400) voxels each.
    expected = 650_000 / 400 / resolution**3
    assert np.median(counts) > 0.5 * expected
    if resolution <= 2.0:
        assert counts.min() >= 20


def test_grid_dtype_and_header() -> None:
    image, labels = atlas.schaefer400_volume(2.0)
    assert image.shape == (99, 117, 95)  # nilearn's 2 mm MNI152 grid
    np.testing.assert_allclose(image.affine[:3, 3], [-98, -134, -72])
    assert image.get_data_dtype() == np.int16
    assert int(image.header["sform_code"]) == 4
    data = np.asarray(image.dataobj)
    assert data.min() == 0 and data.max() == 400
    assert len(labels) == 400


def test_hemispheres_on_their_side() -> None:
    image, _ = atlas.schaefer400_volume(2.0)
    data = np.asarray(image.dataobj)
    x = np.arange(data.shape[0]) * 2.0 - 98.0
    xs = np.broadcast_to(x[:, None, None], data.shape)
    assert (xs[(data >= 1) & (data <= 200)] < 6).mean() > 0.99
    assert (xs[data > 200] > -6).mean() > 0.99


def test_file_cache_round_trip(tmp_path) -> None:
    first, _ = atlas.schaefer400_volume(5.0, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.nii.gz"))
    assert len(files) == 1
    second, _ = atlas.schaefer400_volume(5.0, cache_dir=tmp_path)
    np.testing.assert_array_equal(np.asarray(first.dataobj), np.asarray(second.dataobj))


def test_returned_arrays_are_independent_copies() -> None:
    image, _ = atlas.schaefer400_volume(4.0)
    np.asarray(image.dataobj)[...] = 0
    again, _ = atlas.schaefer400_volume(4.0)
    assert np.asarray(again.dataobj).max() == 400


@pytest.mark.parametrize("bad", [0.5, 9.0, float("nan"), "2"])
def test_bad_resolution_is_rejected(bad) -> None:
    with pytest.raises(ValueError, match="resolution_mm"):
        atlas.schaefer400_volume(bad)


def test_provenance_names_sources_space_and_method() -> None:
    prov = atlas.schaefer400_provenance(2.0)
    # nilearn's templates are the asymmetric ICBM152 2009a release: the atlas lies in the
    # space the anatomical stage registers to.
    from brainharmony.anat.templates import DEFAULT_TEMPLATE

    assert prov["Space"] == "MNI152NLin2009aAsym" == DEFAULT_TEMPLATE
    assert "brainspace" in prov["Sources"]["surface_labels"]
    assert "nilearn" in prov["Sources"]["grey_matter"]
    assert prov["Parameters"]["MAX_DISTANCE_MM"] == atlas.MAX_DISTANCE_MM
    assert "sub-region" in prov["LabelNames"]


def test_rebuild_is_named_and_described_as_a_rebuild(tmp_path) -> None:
    prov = atlas.schaefer400_provenance(2.0)
    assert prov["Official"] is False and "NOT the published" in prov["NotOfficial"]
    atlas.schaefer400_volume(5.0, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.nii.gz")
    assert "atlas-Schaefer400rebuilt" in cached.name and "Schaefer2018" not in cached.name


def test_another_space_needs_its_grey_matter() -> None:
    with pytest.raises(ValueError, match="needs that template's 1 mm grey-matter"):
        atlas.schaefer400_volume(4.0, space="MNI152NLin2009cAsym")
