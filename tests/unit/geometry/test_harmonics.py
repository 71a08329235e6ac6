"""Geometric harmonics: parcel averaging, label readers, the fsLR/Schaefer-400 table, CLI."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainharmony.geometry import harmonics as hm
from brainharmony.geometry.lbo import submesh
from brainharmony.geometry.surfaces import (
    SurfaceLabels,
    icosphere,
    load_template_surface,
    read_label_file,
    read_surface_file,
)
from brainharmony.io import InputDataError
from brainharmony.pipelines import harmonics as harmonics_command

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated method:DeprecationWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    import scipy.sparse.linalg  # noqa: F401  (load scipy's BLAS before limiting it)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _octants(vertices: np.ndarray) -> np.ndarray:
    c = vertices - vertices.mean(axis=0)
    return (1 + (c[:, 0] > 0) + 2 * (c[:, 1] > 0) + 4 * (c[:, 2] > 0)).astype(np.int64)


def test_parcel_means_weighted():
    values = np.array([[1.0], [3.0], [10.0], [np.nan], [5.0]])
    labels = np.array([1, 1, 2, 2, 0])
    weights = np.array([3.0, 1.0, 2.0, 5.0, 1.0])
    parcels, means, total = hm.parcel_means(values, labels, weights)
    np.testing.assert_array_equal(parcels, [1, 2])
    np.testing.assert_allclose(means[:, 0], [(3 * 1 + 1 * 3) / 4, 10.0])  # NaN row skipped
    np.testing.assert_allclose(total, [4.0, 2.0])
    with pytest.raises(ValueError, match=r"parcels \[2\] have no vertex"):
        hm.parcel_means(np.array([[1.0], [np.nan]]), np.array([1, 2]), np.ones(2))
    with pytest.raises(ValueError, match="agree on the number of vertices"):
        hm.parcel_means(values, labels[:3], weights)


def test_area_weighting_differs_from_vertex_mean():
    """Mass weights give the surface integral mean: a linear function's centroid value."""
    sph = icosphere(3)
    v, f, _ = submesh(sph.vertices, sph.faces, sph.vertices[:, 2] > 0.0)
    x = v[:, 0].copy()
    # crowd vertices on one side by squeezing the mesh: the area-weighted mean stays put
    from brainharmony.geometry.lbo import fem_matrices

    _, mass = fem_matrices(v, f)
    area = np.asarray(mass.sum(axis=1)).ravel()
    labels = np.ones(len(v), dtype=np.int64)
    _, means, total = hm.parcel_means(x[:, None], labels, area)
    assert total[0] == pytest.approx(mass.sum())
    # by symmetry the exact integral of x over the cap is 0
    assert abs(means[0, 0]) < 1e-12


def test_hemisphere_harmonics_constant_first_mode():
    sph = icosphere(3)
    labels = SurfaceLabels(_octants(sph.vertices))
    labels.labels[sph.vertices[:, 2] > 0.9] = 0  # a "medial wall" cap, excluded
    h = hm.hemisphere_harmonics(sph, labels, 6)
    assert h.parcel_means.shape == (8, 6)
    np.testing.assert_allclose(h.parcel_means[:, 0], 1 / np.sqrt(h.modes.vertex_area.sum()))
    assert h.cortex_index.size == (labels.labels > 0).sum()
    full = h.vertex_modes()
    assert np.isnan(full[labels.labels == 0]).all()
    assert np.isfinite(full[labels.labels > 0]).all()


def test_disconnected_cortex_keeps_largest_component(caplog):
    sph = icosphere(3)
    z = sph.vertices[:, 2]
    lab = np.where(z < -0.5, 2, 1).astype(np.int64)
    lab[(z > -0.5) & (z < -0.3)] = 0  # a band cuts off a small southern cap
    h = hm.hemisphere_harmonics(sph, SurfaceLabels(np.where(lab == 2, 1, lab)), 3)
    assert "components" in caplog.text
    assert (z[h.cortex_index] > -0.3).all()  # the larger, northern part is kept
    with pytest.raises(ValueError, match=r"parcels \[2\] have no vertex inside"):
        hm.hemisphere_harmonics(sph, SurfaceLabels(lab), 3)


@pytest.fixture(scope="module")
def fslr_table():
    return hm.compute_harmonics(n_modes=6)


def test_fslr_schaefer400_table(fslr_table):
    table, hemis = fslr_table
    assert table.shape == (400, 6)
    assert list(table.columns) == [f"mode_{i}" for i in range(1, 7)]
    assert table.index[0] == "7Networks_LH_Vis_1"
    assert table.index[199].startswith("7Networks_LH_")
    assert table.index[200] == "7Networks_RH_Vis_1"
    assert table.notna().all().all()
    # mode 1 constant within each hemisphere (as in the official CSV), 1/sqrt(area)
    for rows, h in ((slice(0, 200), hemis[0]), (slice(200, 400), hemis[1])):
        m1 = table["mode_1"].to_numpy()[rows]
        np.testing.assert_allclose(m1, 1 / np.sqrt(h.modes.vertex_area.sum()), rtol=1e-9)
        # the cortex (brainspace mask) is ~50,000 mm2 per hemisphere: 1/sqrt ~ 0.0045
        assert 0.0043 < m1[0] < 0.0046
        # higher modes vary across parcels and average to ~0 over the cortex
        assert table.iloc[rows, 1:].std().min() > 1e-3
    lh = hemis[0]
    assert lh.cortex_index.size == 29271
    assert 1.8e-4 < lh.modes.eigenvalues[1] < 1.95e-4


def test_cortex_from_labels(fslr_table):
    """cortex='labels' meshes every Schaefer-labelled vertex (the mask leaves out ~1 %)."""
    from brainharmony.geometry.surfaces import load_template_labels

    labels = load_template_labels("schaefer400", "fslr32k", "lh")
    h = hm.hemisphere_harmonics(load_template_surface("fslr32k", "lh"), labels, 2)
    assert h.cortex_index.size == 29591
    assert h.parcels.size == 200
    masked = fslr_table[1][0]
    assert h.modes.vertex_area.sum() > masked.modes.vertex_area.sum()


def test_read_label_files_roundtrip(tmp_path):
    n = 50
    labels = np.arange(n) % 4
    csv = tmp_path / "l.csv"
    np.savetxt(csv, labels, fmt="%d")
    np.testing.assert_array_equal(read_label_file(csv, n).labels, labels)

    annot = tmp_path / "lh.test.annot"
    ctab = np.array([[25, 5, 25, 0, 0], [1, 2, 3, 0, 0], [4, 5, 6, 0, 0], [7, 8, 9, 0, 0]])
    names = [b"Medial_Wall", b"A", b"B", b"C"]
    nib.freesurfer.write_annot(str(annot), labels, ctab, names, fill_ctab=True)
    lab = read_label_file(annot, n)
    np.testing.assert_array_equal(lab.labels, labels)
    assert lab.names[2] == "B"

    gii = tmp_path / "rh.test.label.gii"
    table = nib.gifti.GiftiLabelTable()
    for key, name in enumerate(["???", "A", "B", "C"]):
        entry = nib.gifti.GiftiLabel(key=key)
        entry.label = name
        table.labels.append(entry)
    img = nib.gifti.GiftiImage(labeltable=table)
    img.add_gifti_data_array(
        nib.gifti.GiftiDataArray(labels.astype(np.int32), intent="NIFTI_INTENT_LABEL")
    )
    nib.save(img, str(gii))
    lab = read_label_file(gii, n)
    np.testing.assert_array_equal(lab.labels, labels)
    assert lab.names[3] == "C"

    with pytest.raises(InputDataError, match="has 50 labels but the surface has 60"):
        read_label_file(csv, 60)
    with pytest.raises(InputDataError, match="unknown label format"):
        (tmp_path / "x.nii").write_text("")
        read_label_file(tmp_path / "x.nii")
    with pytest.raises(InputDataError, match="not found"):
        read_label_file(tmp_path / "missing.csv")


def test_fsaverage5_with_user_labels_and_cli(tmp_path):
    """fsaverage5 has no offline labels: user files work the same way, through the CLI."""
    paths = []
    for hemi in ("lh", "rh"):
        surf = load_template_surface("fsaverage5", hemi)
        assert surf.vertices.shape == (10242, 3)
        p = tmp_path / f"{hemi}.labels.csv"
        np.savetxt(p, _octants(surf.vertices), fmt="%d")
        paths.append(p)
    parser = argparse.ArgumentParser()
    harmonics_command.add_arguments(parser)
    out = tmp_path / "geometry" / "atlas-test_harmonics.tsv"
    args = parser.parse_args(
        [
            "--out-table",
            str(out),
            "--n-modes",
            "4",
            "--template",
            "fsaverage5",
            "--labels",
            str(paths[0]),
            str(paths[1]),
            "--out-modes",
            str(tmp_path / "lh.npy"),
            str(tmp_path / "rh.npy"),
            "--qc-figure",
            str(tmp_path / "qc.png"),
            "--qc-modes",
            "2",
        ]
    )
    assert harmonics_command.run(args) == 0
    table = pd.read_csv(out, sep="\t", index_col="roi")
    assert table.shape == (16, 4)
    assert table.index[0] == "ROI_1" and table.index[8] == "ROI_9"
    np.testing.assert_allclose(table["mode_1"].iloc[:8], table["mode_1"].iloc[0], rtol=1e-10)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["Hemispheres"]["lh"]["n_vertices"] == 10242
    assert side["Parameters"]["cortex"] == "auto"
    assert len(side["Hemispheres"]["rh"]["eigenvalues"]) == 4
    modes = np.load(tmp_path / "lh.npy")
    assert modes.shape == (10242, 4) and modes.dtype == np.float32
    assert (tmp_path / "qc.png").stat().st_size > 10_000


def test_fsaverage5_has_no_offline_labels():
    with pytest.raises(ValueError, match="no schaefer400 labels are available offline"):
        hm.compute_harmonics(n_modes=2, template="fsaverage5")


def test_csv_output_and_read_surface(tmp_path):
    sph = icosphere(2)
    gii = tmp_path / "s.surf.gii"
    img = nib.gifti.GiftiImage()
    img.add_gifti_data_array(
        nib.gifti.GiftiDataArray(sph.vertices.astype(np.float32), intent="NIFTI_INTENT_POINTSET")
    )
    img.add_gifti_data_array(
        nib.gifti.GiftiDataArray(sph.faces.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE")
    )
    nib.save(img, str(gii))
    surf = read_surface_file(gii)
    np.testing.assert_allclose(surf.vertices, sph.vertices, atol=1e-6)
    lab = SurfaceLabels(_octants(surf.vertices))
    h = hm.hemisphere_harmonics(surf, lab, 3)
    table = hm.harmonics_table([h, h], [f"ROI_{i}" for i in range(1, 17)])
    path = hm.write_table(table, tmp_path / "t.csv")
    back = pd.read_csv(path, index_col=0)
    np.testing.assert_allclose(back.to_numpy(), table.to_numpy(), rtol=1e-11)
    assert back.index.name == "roi"


def test_template_files_equal_brainspace_loaders():
    """Reading brainspace's files directly gives what its (VTK-based) loaders give."""
    from brainspace.datasets import load_conte69, load_mask, load_parcellation

    from brainharmony.geometry.surfaces import load_template_labels, template_cortex_mask

    meshes = load_conte69(join=False)
    masks = load_mask(join=False)
    parcels = load_parcellation("schaefer", 400, join=False)
    for i, hemi in enumerate(("lh", "rh")):
        surf = load_template_surface("fslr32k", hemi)
        np.testing.assert_array_equal(surf.vertices, np.asarray(meshes[i].points, np.float64))
        np.testing.assert_array_equal(surf.faces, meshes[i].GetPolys2D())
        np.testing.assert_array_equal(template_cortex_mask("fslr32k", hemi), masks[i])
        np.testing.assert_array_equal(
            load_template_labels("schaefer400", "fslr32k", hemi).labels, parcels[i]
        )
    assert not surf.vertices.flags.writeable  # cached arrays are read-only


def test_render_view_colours_follow_the_values_and_the_nearest_face_wins():
    sphere = icosphere(3)
    z = sphere.vertices[:, 2]
    view = ("lateral", (-1.0, 0.0, 0.0), (0.0, -1.0, 0.0))  # looking at x < 0, z up
    image = hm.render_view(sphere, z, view, vmax=1.0, size=(120, 120)).astype(int)
    assert image.shape == (120, 120, 3)
    top, bottom, middle = image[15, 60], image[105, 60], image[60, 60]
    assert top[0] > top[2] + 60  # positive: red
    assert bottom[2] > bottom[0] + 60  # negative: blue
    assert abs(int(middle[0]) - int(middle[2])) < 40  # near zero: pale
    assert (image[2, 2] == 255).all() and (image[117, 117] == 255).all()  # background
    # Only the half facing the viewer is visible: values on the far side (x > 0) never
    # show, so a NaN there leaves the picture unchanged, and a NaN in front greys it.
    far = z.copy()
    far[sphere.vertices[:, 0] > 0.3] = np.nan
    np.testing.assert_array_equal(hm.render_view(sphere, far, view, 1.0, (120, 120)), image)
    near = z.copy()
    near[sphere.vertices[:, 0] < -0.3] = np.nan
    grey = hm.render_view(sphere, near, view, 1.0, (120, 120)).astype(int)[60, 60]
    assert abs(grey[0] - grey[2]) < 3 and grey[0] < 215  # shaded grey


def test_qc_figure_is_a_png_with_one_row_per_mode(tmp_path):
    from PIL import Image

    sphere = icosphere(2)
    hemis = [
        hm.hemisphere_harmonics(sphere, SurfaceLabels(_octants(sphere.vertices)), 3)
        for _ in range(2)
    ]
    out = hm.plot_harmonics_qc(hemis, tmp_path / "qc.png", modes=(2, 3))
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (4 * hm._PANEL_PX[0], 2 * (hm._PANEL_PX[1] + hm._TITLE_PX))
