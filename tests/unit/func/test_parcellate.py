"""Parcel means: one pass, NaN for uncovered parcels, equal to NiftiLabelsMasker."""

import warnings

import numpy as np
import pytest

from brainharmony.func.parcellate import parcel_means, resample_labels


@pytest.fixture(scope="module")
def atlas6():
    from brainharmony.atlas import schaefer400_volume

    img, _ = schaefer400_volume(6.0)
    return img


def test_equals_nilearn_labels_masker(atlas6):
    import nibabel as nib
    from nilearn.maskers import NiftiLabelsMasker

    labels = np.asarray(atlas6.dataobj)
    rng = np.random.default_rng(0)
    data = np.asfortranarray(1000 + 10 * rng.standard_normal((*labels.shape, 30)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = NiftiLabelsMasker(atlas6, strategy="mean").fit_transform(
            nib.Nifti1Image(data, atlas6.affine)
        )
    for layout in (data, np.ascontiguousarray(data)):
        got = parcel_means(layout, labels, label_values=np.arange(1, 401))
        assert got.series.shape == ref.shape == (30, 400)
        np.testing.assert_allclose(got.series, ref, atol=1e-5, rtol=0)
    flat = parcel_means(np.ascontiguousarray(data).reshape(-1, 30), labels.reshape(-1))
    np.testing.assert_allclose(flat.series, ref, atol=1e-5, rtol=0)


def test_uncovered_parcels_are_nan_and_reported():
    labels = np.array([[[1, 1, 2, 2, 3]]])
    data = np.arange(5 * 4, dtype=float).reshape(1, 1, 5, 4)
    usable = np.array([[[True, True, True, False, False]]])
    out = parcel_means(data, labels, label_values=[1, 2, 3, 4], usable=usable, min_voxels=2)
    np.testing.assert_allclose(out.series[:, 0], data[0, 0, :2].mean(axis=0))
    assert np.isnan(out.series[:, 1:]).all()
    assert out.small == [2, 3, 4]
    assert out.counts.tolist() == [2, 1, 0, 0]
    assert out.atlas_counts.tolist() == [2, 2, 1, 0]


def test_non_finite_data_in_a_parcel_is_an_error():
    labels = np.array([[[1, 1]]])
    data = np.ones((1, 1, 2, 3))
    data[0, 0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        parcel_means(data, labels)
    # Outside the usable voxels it does not matter.
    out = parcel_means(data, labels, usable=np.array([[[True, False]]]))
    assert np.isfinite(out.series).all()


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="does not match"):
        parcel_means(np.zeros((2, 2, 2, 3)), np.zeros((2, 2, 3), dtype=int))


def test_resample_labels_identity_and_shift(atlas6):
    labels = np.asarray(atlas6.dataobj)
    same = resample_labels(labels, atlas6.affine, atlas6.affine, labels.shape)
    np.testing.assert_array_equal(same, labels)
    shifted = atlas6.affine.copy()
    shifted[:3, 3] += 6.0  # one voxel along each axis
    out = resample_labels(labels, atlas6.affine, shifted, labels.shape)
    np.testing.assert_array_equal(out[:-1, :-1, :-1], labels[1:, 1:, 1:])
