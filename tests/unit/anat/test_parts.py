"""Anatomy building blocks: templates, masks, N4, model box, tool conventions, planning."""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from brainharmony.anat.bias import N4Settings, n4_correct
from brainharmony.anat.gate import qc_failures
from brainharmony.anat.images import nib_to_sitk, sitk_to_nib
from brainharmony.anat.model_input import box_shape, box_start, crop, model_ready, normalise
from brainharmony.anat.nipype_backends import flirt_to_world, read_lta, world_to_flirt
from brainharmony.anat.settings import AnatSettings
from brainharmony.anat.skullstrip import head_mask_array, otsu_threshold
from brainharmony.anat.templates import (
    TemplateUnavailableError,
    check_template_available,
    load_template,
)
from brainharmony.pipelines import anat as anat_cli
from brainharmony.planning import anat as anat_planning
from brainharmony.planning.anat import cli_options, rule_outputs, t1w_rows
from tests.workflow_config import with_schema_defaults


def settings_from_config(partial):
    """The anat settings of a partial config (the schema's defaults filled in)."""
    return anat_planning.settings_from_config(with_schema_defaults(partial))


# --- templates ------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[3]


def test_nilearn_template_and_mask_at_2mm():
    tpl = load_template("MNI152NLin2009aAsym", 2)
    assert tpl.shape == (99, 117, 95)
    data = np.asarray(tpl.image.dataobj)
    mask = np.asarray(tpl.mask.dataobj)
    np.testing.assert_array_equal(mask, data > 0.2)
    lo, hi = tpl.brain_bbox_mm()
    assert np.all(lo < [-60, -90, -50]) and np.all(hi > [60, 60, 70])
    assert int(tpl.mask.header["sform_code"]) == 4


def test_templateflow_template_needs_its_files(tmp_path, monkeypatch):
    monkeypatch.delenv("TEMPLATEFLOW_HOME", raising=False)
    with pytest.raises(TemplateUnavailableError, match="TEMPLATEFLOW_HOME is not set"):
        check_template_available("MNI152NLin2009cAsym", 1)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    with pytest.raises(TemplateUnavailableError, match=r"tpl-MNI152NLin2009cAsym_res-01_T1w"):
        check_template_available("MNI152NLin2009cAsym", 1)
    with pytest.raises(ValueError, match="resolution_mm must be one of 1, 2; got 3"):
        check_template_available("MNI152NLin2009aAsym", 3)


# --- masks ----------------------------------------------------------------------------


def test_otsu_separates_two_classes():
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(10, 2, 5000), rng.normal(100, 10, 3000)]
    assert 20 < otsu_threshold(values) < 80


def test_head_mask_keeps_the_head_fills_holes_and_drops_specks():
    rng = np.random.default_rng(1)
    shape = (60, 64, 58)
    ijk = np.indices(shape) - np.array([30, 32, 29])[:, None, None, None]
    r = np.sqrt((ijk**2).sum(0))
    data = np.where(r < 22, 100.0, 0.0) + rng.normal(0, 3, shape)
    data[r < 8] = 2.0  # a dark "ventricle": inside the head, must be kept
    data[2:4, 2:4, 2:4] = 120.0  # a bright speck far away: must be dropped
    mask, threshold = head_mask_array(data.astype(np.float32), np.array([2.0, 2.0, 2.0]))
    assert 10 < threshold < 90
    assert mask[r < 21].all()
    assert not mask[r > 24].any()


# --- bias correction ------------------------------------------------------------------


def test_n4_removes_a_smooth_multiplicative_bias():
    rng = np.random.default_rng(2)
    shape = (48, 52, 46)
    ijk = np.indices(shape).astype(float)
    r = np.sqrt(((ijk - np.array(shape)[:, None, None, None] / 2) ** 2).sum(0))
    tissue = np.where(r < 18, 100.0, 0.0) + np.where(r < 10, 60.0, 0.0)
    field = np.exp(0.35 * (ijk[0] / shape[0] - 0.5) - 0.25 * (ijk[2] / shape[2] - 0.5))
    data = (tissue * field + rng.normal(0, 1, shape)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    image = nib_to_sitk(img)
    mask = sitk.Cast(
        nib_to_sitk(nib.Nifti1Image((r < 19).astype(np.uint8), img.affine), np.uint8),
        sitk.sitkUInt8,
    )
    corrected, log_bias, report = n4_correct(image, mask, N4Settings(shrink_mm=6.0))
    out = sitk_to_nib(corrected).get_fdata()
    outer = (r > 11) & (r < 17)  # one tissue class spread across the field
    before = data[outer].std() / data[outer].mean()
    after = out[outer].std() / out[outer].mean()
    assert after < 0.5 * before, (before, after)
    # The field's offset is removed: the intensity scale is kept.
    assert (
        abs(np.mean(sitk.GetArrayViewFromImage(log_bias)[sitk.GetArrayViewFromImage(mask) > 0]))
        < 1e-4
    )
    assert report["ShrinkFactors"] == [2, 2, 2]


# --- model box ------------------------------------------------------------------------


def test_box_shapes_follow_the_physical_box():
    assert box_shape((160, 192, 160), 1) == (160, 192, 160)
    assert box_shape((160, 192, 160), 2) == (80, 96, 80)
    with pytest.raises(ValueError, match="not a whole number"):
        box_shape((161, 192, 160), 2)


def test_crop_pads_outside_the_grid_with_zeros():
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    out = crop(data, (-1, 1, 2), (6, 3, 3))
    assert out.shape == (6, 3, 3)
    np.testing.assert_array_equal(out[1:5], data[:, 1:4, 2:5])
    assert not out[0].any() and not out[5].any()


def test_normalisations():
    rng = np.random.default_rng(3)
    box = rng.normal(50, 5, (10, 10, 10)).astype(np.float32)
    mask = np.zeros(box.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    brain = normalise(box, mask, "zscore_brain")
    assert abs(brain[mask].mean()) < 1e-5 and brain[mask].std() == pytest.approx(1, abs=1e-5)
    assert not brain[~mask].any()
    whole = normalise(box, mask, "zscore_volume")
    assert abs(whole.mean()) < 1e-5 and whole.std() == pytest.approx(1, abs=1e-5)
    assert np.allclose(whole[~mask], whole[~mask][0])  # background: one value, not 0
    raw = normalise(box, mask, "none")
    np.testing.assert_array_equal(raw[mask], box[mask])
    with pytest.raises(ValueError, match="normalisation must be one of"):
        normalise(box, mask, "minmax")


def test_model_box_is_centred_on_the_template_brain():
    tpl = load_template("MNI152NLin2009aAsym", 2)
    lo, hi = tpl.brain_bbox_mm()
    centre = (lo + hi) / 2
    out = model_ready(tpl.image, tpl.mask, centre, (160, 192, 160), "zscore_brain")
    assert out.shape == (80, 96, 80) and out.get_data_dtype() == np.float32
    box_centre = nib.affines.apply_affine(out.affine, (np.array(out.shape) - 1) / 2)
    assert np.all(np.abs(box_centre - centre) <= 1.0 + 1e-6)  # within half a 2 mm voxel
    # The box holds the whole brain.
    assert (np.asarray(out.dataobj) != 0).sum() == int(np.asarray(tpl.mask.dataobj).sum())
    # The box overhangs the template grid at the bottom (z) and is padded there.
    assert box_start(tpl.affine, centre, (80, 96, 80))[2] < 0


# --- external tools' conventions --------------------------------------------------------


def test_flirt_matrix_between_ras_and_las_copies_of_a_grid_is_identity():
    """FSL's scaled-voxel frame flips x for neurological (RAS) storage: the same grid
    stored RAS or LAS has the same FSL coordinates, so FLIRT reports the identity."""
    ras = nib.Nifti1Image(np.zeros((20, 22, 18), np.float32), np.diag([2.0, 2.5, 3.0, 1.0]))
    las = ras.as_reoriented(np.array([[0, -1], [1, 1], [2, 1]]))
    np.testing.assert_allclose(world_to_flirt(np.eye(4), ras, las), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(world_to_flirt(np.eye(4), las, las), np.eye(4), atol=1e-12)
    # Scaled voxels are mm: a world shift of 4 mm along y is a 4 mm FLIRT translation.
    shift = np.eye(4)
    shift[1, 3] = 4.0
    np.testing.assert_allclose(world_to_flirt(shift, las, las)[1, 3], 4.0)
    rng = np.random.default_rng(4)
    world = np.eye(4)
    world[:3, :3] += 0.05 * rng.normal(size=(3, 3))
    world[:3, 3] = rng.normal(size=3) * 5
    np.testing.assert_allclose(flirt_to_world(world_to_flirt(world, ras, las), ras, las), world)


def _lta(kind: int, matrix: np.ndarray, src: nib.Nifti1Image, dst: nib.Nifti1Image) -> str:
    def info(img):
        a = img.affine
        z = np.linalg.norm(a[:3, :3], axis=0)
        c = a[:3, :3] @ (np.array(img.shape) / 2) + a[:3, 3]

        def vec(v):
            return " ".join(f"{x:.9g}" for x in v)

        lines = ["valid = 1", f"volume = {vec(img.shape)}", f"voxelsize = {vec(z)}"]
        lines += [f"{k}ras = {vec(a[:3, i] / z[i])}" for i, k in enumerate("xyz")]
        return "\n".join([*lines, f"cras = {vec(c)}"])

    rows = "\n".join(" ".join(f"{v:.10f}" for v in r) for r in matrix)
    return (
        f"type = {kind} # x\nnxforms = 1\nmean = 0 0 0\nsigma = 1\n1 4 4\n{rows}\n"
        f"src volume info\n{info(src)}\ndst volume info\n{info(dst)}\n"
    )


def test_lta_ras_and_voxel_forms_give_the_same_world_mapping(tmp_path):
    src = nib.Nifti1Image(np.zeros((40, 44, 36), np.float32), np.diag([-2.0, 2.0, 2.0, 1.0]))
    dst = nib.Nifti1Image(np.zeros((30, 32, 28), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    world = np.eye(4)
    world[:3, 3] = [3.0, -4.0, 5.0]
    world[:3, :3] = [[0.99, -0.05, 0.0], [0.05, 0.99, 0.02], [0.0, -0.02, 1.01]]
    vox = np.linalg.inv(dst.affine) @ world @ src.affine
    (tmp_path / "ras.lta").write_text(_lta(1, world, src, dst))
    (tmp_path / "vox.lta").write_text(_lta(0, vox, src, dst))
    np.testing.assert_allclose(read_lta(tmp_path / "ras.lta"), world, atol=1e-8)
    np.testing.assert_allclose(read_lta(tmp_path / "vox.lta"), world, atol=1e-5)
    (tmp_path / "bad.lta").write_text(_lta(14, world, src, dst))
    with pytest.raises(ValueError, match="LTA type 14 is not supported"):
        read_lta(tmp_path / "bad.lta")


# --- planning -------------------------------------------------------------------------


def test_settings_from_config_defaults_and_refusals():
    s = settings_from_config({"datasets": {}})
    assert (s.backend, s.template, s.resolution_mm, s.nonlinear) == (
        "native",
        "MNI152NLin2009aAsym",
        1,
        False,
    )
    assert s.model_box_mm == (160, 192, 160) and s.normalisation == "zscore_brain"
    with pytest.raises(ValueError, match="backend must be one of native, fsl, freesurfer"):
        settings_from_config({"anat": {"backend": "ants"}})
    with pytest.raises(ValueError, match="not a whole number of 2 mm voxels"):
        settings_from_config({"anat": {"resolution_mm": 2, "model_box_mm": [161, 192, 160]}})


def test_rule_outputs_and_options_match_the_package():
    s = AnatSettings(resolution_mm=2, nonlinear=True)
    outs = rule_outputs(s, session=True)
    stem = "results/anat/{dataset}/sub-{subject}/ses-{session}/anat/sub-{subject}_ses-{session}"
    assert outs["preproc"] == f"{stem}_space-MNI152NLin2009aAsym_desc-preproc_T1w.nii.gz"
    assert outs["preproc_json"] == f"{stem}_space-MNI152NLin2009aAsym_desc-preproc_T1w.json"
    assert outs["xfm_to_template"] == f"{stem}_from-T1w_to-MNI152NLin2009aAsym_mode-image_xfm.txt"
    assert outs["nonlinear_from_template"].endswith("_desc-nonlinear_xfm.h5")
    assert (
        outs["figure"]
        == "results/anat/{dataset}/figures/sub-{subject}_ses-{session}_desc-reg_T1w.png"
    )
    assert "{session}" not in "".join(rule_outputs(s, session=False).values())
    assert cli_options(s) == (
        "--backend native --template MNI152NLin2009aAsym --resolution-mm 2 "
        "--model-box-mm 160 192 160 --normalisation zscore_brain "
        "--max-nonfinite-fraction 0.02 --brain-extraction deepbet --deepbet-shape 256 "
        "--qc-min-ncc 0.8 --qc-min-dice 0.85 --qc-brain-volume-ml 600.0 2600.0 "
        "--qc-scale-range 0.67 1.5 --nonlinear"
    )
    # The options parse back into the same settings.
    parser = argparse.ArgumentParser()
    anat_cli.add_arguments(parser)
    args = parser.parse_args(
        ["--t1w", "t", "--out-dir", "o", "--subject", "01", *cli_options(s).split()]
    )
    assert anat_cli.settings_from_args(args) == s


def test_workflow_defaults_give_the_library_settings():
    """A config with no ``anat:`` keys plans the library's settings (the schema's defaults
    equal the dataclass's, key by key: tests/unit/test_schema_defaults.py)."""
    assert settings_from_config({}) == AnatSettings()


def test_qc_gate_fails_each_metric_with_a_reason():
    s = AnatSettings()
    good = {
        "NCCWithTemplateInBrain": 0.93,
        "MaskDiceWithTemplateMask": 0.95,
        "NativeBrainVolumeML": 1400.0,
        "TransformScaleFactors": [1.1, 1.05, 0.98],
    }
    assert qc_failures(good, s) == []
    cases = {
        "NCCWithTemplateInBrain": (0.79, "correlation with the template in its brain mask 0.790"),
        "MaskDiceWithTemplateMask": (0.6, "Dice of the brain mask with the template's 0.600"),
        "NativeBrainVolumeML": (4210.0, "brain volume 4210 mL outside"),
        "TransformScaleFactors": ([1.58, 1.0, 1.0], "scale factors (1.580, 1.000, 1.000)"),
    }
    for key, (value, text) in cases.items():
        (reason,) = qc_failures({**good, key: value}, s)
        assert text in reason
    # NaN never passes.
    assert qc_failures({**good, "NCCWithTemplateInBrain": float("nan")}, s)
    with pytest.raises(ValueError, match="qc_scale_range"):
        AnatSettings(qc_scale_range=(1.5, 0.67))
    with pytest.raises(ValueError, match="brain_extraction"):
        AnatSettings(brain_extraction="bet")


def test_t1w_rows_are_distinct_t1ws(tmp_path):
    scans = tmp_path / "scans.tsv"
    scans.write_text(
        "dataset\tsubject\tsession\trun\tt1w\tt1w_session\tbold\n"
        "s\t01\t1\t1\t/d/sub-01_ses-1_T1w.nii.gz\t1\tb1\n"
        "s\t01\t1\t2\t/d/sub-01_ses-1_T1w.nii.gz\t1\tb2\n"
        "s\t01\t2\tn/a\t/d/sub-01_ses-2_T1w.nii.gz\t2\tb3\n"
        "s\t02\tn/a\tn/a\t/d/sub-02_T1w.nii.gz\tn/a\tb4\n"
    )
    assert t1w_rows(scans) == [
        ("01", "1", "/d/sub-01_ses-1_T1w.nii.gz"),
        ("01", "2", "/d/sub-01_ses-2_T1w.nii.gz"),
        ("02", None, "/d/sub-02_T1w.nii.gz"),
    ]


def test_dilation_is_exact_in_mm():
    from brainharmony.anat.register import dilate_mask

    mask = np.zeros((31, 31, 31), np.uint8)
    mask[15, 15, 15] = 1
    img = sitk.GetImageFromArray(mask)
    img.SetSpacing((2.0, 2.0, 2.0))
    out = sitk.GetArrayFromImage(dilate_mask(img, 6.0))
    ball = ndi.distance_transform_edt(1 - mask, sampling=2.0) <= 6.0
    np.testing.assert_array_equal(out > 0, ball)


def test_dilations_from_one_distance_transform_match_scipy_on_random_masks():
    """Thresholds of one (cropped) distance transform give the voxels of a full-grid
    Euclidean distance transform for every radius, asked in any order."""
    from brainharmony.anat.register import _Dilations

    rng = np.random.default_rng(7)
    for _ in range(12):
        shape = tuple(int(n) for n in rng.integers(8, 30, 3))
        data = np.zeros(shape, bool)
        box = tuple(
            slice(int(rng.integers(0, n // 2)), int(rng.integers(n // 2 + 1, n + 1))) for n in shape
        )
        data[box] = rng.random(data[box].shape) > 0.8
        spacing = tuple(float(v) for v in rng.uniform(0.6, 3.0, 3))
        img = sitk.GetImageFromArray(data.transpose(2, 1, 0).astype(np.uint8))
        img.SetSpacing(spacing)
        dilate = _Dilations(img, float(rng.uniform(0, 6)))
        for radius in (*rng.uniform(0.5, 12, 3), 0.0):
            expected = (
                ndi.distance_transform_edt(~data, sampling=spacing) <= radius
                if radius > 0
                else data
            )
            got = sitk.GetArrayFromImage(dilate(float(radius))).transpose(2, 1, 0) > 0
            np.testing.assert_array_equal(got, expected)


def test_fill_holes_per_slice_matches_scipy_slice_by_slice():
    from brainharmony.anat.skullstrip import fill_holes_per_slice

    rng = np.random.default_rng(3)
    for _ in range(15):
        shape = tuple(int(n) for n in rng.integers(1, 22, 3))
        mask = rng.random(shape) > rng.uniform(0.2, 0.8)
        for axis in range(3):
            expected = mask.copy()
            for i in range(shape[axis]):
                index = [slice(None)] * 3
                index[axis] = i
                expected[tuple(index)] = ndi.binary_fill_holes(expected[tuple(index)])
            np.testing.assert_array_equal(fill_holes_per_slice(mask, axis), expected)


def test_registration_figure_draws_slices_edges_and_mask_outline(tmp_path):
    from PIL import Image

    from brainharmony.anat.qc import EDGE_RGB, HEADER_PX, MASK_RGB, PANEL_PX, registration_figure

    grid = np.indices((40, 48, 36)).astype(np.float32)
    centre = np.array([20.0, 24.0, 18.0])[:, None, None, None]
    radius = np.sqrt(((grid - centre) ** 2).sum(axis=0))
    template = np.clip(1.0 - radius / 20.0, 0, 1).astype(np.float32)  # 0.62 at r = 7.6
    mask = radius <= 12.0
    registered = (template * 1000.0).astype(np.float32)
    out = tmp_path / "qc.png"
    registration_figure(out, registered, template, mask, "sub-x", zooms=(2.0, 2.0, 2.0))
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape == (HEADER_PX + 3 * PANEL_PX[1], 3 * PANEL_PX[0], 3)
    is_edge = (pixels == EDGE_RGB).all(axis=-1)
    is_mask = (pixels == MASK_RGB).all(axis=-1)
    # Every panel shows both contours; the mask outline (r = 12 voxels) lies outside
    # the template edge (r = 7.6 voxels) in the middle panel of each row.
    for row in range(3):
        top = HEADER_PX + row * PANEL_PX[1]
        panel = slice(top, top + PANEL_PX[1]), slice(PANEL_PX[0], 2 * PANEL_PX[0])
        ys, xs = np.nonzero(is_edge[panel])
        ym, xm = np.nonzero(is_mask[panel])
        assert len(ys) > 50 and len(ym) > 50
        cy, cx = ym.mean(), xm.mean()
        edge_r = np.hypot(ys - cy, xs - cx).mean()
        mask_r = np.hypot(ym - cy, xm - cx).mean()
        assert mask_r / edge_r == pytest.approx(12.0 / 7.6, rel=0.1)
    # Grey levels scale to the 99.5th percentile in the mask: the centre is white.
    centre_px = pixels[HEADER_PX + PANEL_PX[1] // 2 + 8, PANEL_PX[0] + PANEL_PX[0] // 2]
    assert (centre_px > 200).all()
    # Same inputs, same bytes.
    registration_figure(tmp_path / "b.png", registered, template, mask, "sub-x", zooms=(2,) * 3)
    assert (tmp_path / "b.png").read_bytes() == png


@pytest.mark.parametrize(
    "settings",
    [
        AnatSettings(),
        AnatSettings(
            backend="fsl",
            resolution_mm=2,
            nonlinear=True,
            normalisation="none",
            model_box_mm=(128, 160, 128),
            max_nonfinite_fraction=0.001,
        ),
    ],
)
def test_rule_options_parse_back_to_the_same_settings(settings):
    """What the rule passes on the command line is what the CLI turns into settings."""
    import argparse
    import shlex

    from brainharmony.pipelines import anat as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    base = ["--t1w", "x.nii.gz", "--out-dir", "out", "--subject", "01"]
    args = parser.parse_args(base + shlex.split(cli_options(settings)))
    assert cli.settings_from_args(args) == settings


def test_evaluate_mi_equals_the_metric_with_its_gradient_filter():
    """evaluate_mi skips the moving-image gradient filter; the value must not change."""
    from brainharmony.anat.register import RegistrationSettings, evaluate_mi

    rng = np.random.default_rng(5)
    fixed = sitk.GetImageFromArray(ndi.gaussian_filter(rng.random((24, 28, 20)), 2).astype("f4"))
    moving = sitk.GetImageFromArray(ndi.gaussian_filter(rng.random((26, 30, 22)), 2).astype("f4"))
    for img, spacing in ((fixed, 2.0), (moving, 1.8)):
        img.SetSpacing((spacing,) * 3)
    region = sitk.GetImageFromArray(np.pad(np.ones((16, 20, 12), np.uint8), 4))
    region.CopyInformation(fixed)
    transform = sitk.Euler3DTransform((20.0, 24.0, 22.0), 0.05, -0.03, 0.1, (1.5, -2.0, 0.5))
    settings = RegistrationSettings()
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetMetricFixedMask(region)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(transform, inPlace=False)
    expected = reg.MetricEvaluate(fixed, moving)
    assert evaluate_mi(fixed, region, moving, transform, settings) == expected
