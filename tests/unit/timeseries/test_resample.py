"""Multi-TR resampling: pass band, stop band, exact lengths and times, the paper's decimation."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from brainharmony.io import InputDataError
from brainharmony.pipelines import resample as resample_command
from brainharmony.timeseries import resample as rs

PAIRS = [
    (0.735, 1.47),
    (0.735, 2.205),
    (0.735, 2.94),
    (0.8, 1.6),
    (0.8, 2.4),
    (0.735, 2.0),  # 400/147: polyphase with a long filter
    (0.72, 2.0),  # 25/9
]


def _interior(n: int) -> slice:
    return slice(n // 5, n - n // 5)


def _fit(y: np.ndarray, t: np.ndarray, freq: float) -> tuple[float, float, float]:
    """Least-squares amplitude and phase of a sinusoid at ``freq``; relative residual."""
    design = np.stack(
        [np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t), np.ones_like(t)], axis=1
    )
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    amp = float(np.hypot(coef[0], coef[1]))
    return amp, float(np.arctan2(coef[1], coef[0])), float(resid.std() / max(amp, 1e-12))


def test_tr_label():
    assert rs.tr_label(0.735) == 735
    assert rs.tr_label(1.47) == 1470
    assert rs.tr_label(2.205) == 2205
    assert rs.tr_label(2.94) == 2940
    assert rs.tr_label(0.8) == 800
    assert rs.tr_label(2) == 2000
    for bad in (0, -1.0, float("nan"), float("inf"), 0.0001):
        with pytest.raises(ValueError):
            rs.tr_label(bad)


@pytest.mark.parametrize(
    ("tr_in", "tr_out", "n_in", "expected"),
    [
        (0.735, 1.47, 490, 245),
        (0.735, 2.205, 490, 164),
        (0.735, 2.94, 490, 123),
        (0.8, 2.4, 383, 128),
        (0.735, 2.0, 490, 180),
        (0.735, 1.47, 489, 245),
        (0.735, 1.47, 2, 1),
    ],
)
def test_output_length_formula(tr_in, tr_out, n_in, expected):
    assert rs.n_output_frames(n_in, tr_in, tr_out) == expected
    # definition: the output times k * tr_out that are <= the last input time
    last = (n_in - 1) * tr_in
    assert (expected - 1) * tr_out <= last + 1e-9 < expected * tr_out


@pytest.mark.parametrize(("tr_in", "tr_out"), PAIRS)
@pytest.mark.parametrize("method", ["polyphase", "interpolate"])
def test_passband_sinusoid_survives(tr_in, tr_out, method):
    n = 490
    t = np.arange(n) * tr_in
    nyq = 0.5 / tr_out
    freqs = (0.3 * nyq, 0.75 * nyq)
    x = np.stack([100.0 + 2.0 * np.sin(2 * np.pi * f * t + 0.4) for f in freqs], axis=1)
    out = rs.resample_to_tr(x, tr_in, tr_out, method)
    n_out = rs.n_output_frames(n, tr_in, tr_out)
    assert out.data.shape == (n_out, 2)
    np.testing.assert_array_equal(out.times, np.arange(n_out) * tr_out)
    assert out.tr == tr_out
    mid = _interior(n_out)
    for j, f in enumerate(freqs):
        amp, phase, resid = _fit(out.data[mid, j], out.times[mid], f)
        assert amp == pytest.approx(2.0, rel=0.01)
        assert phase == pytest.approx(0.4, abs=0.01)  # samples sit at t_k = k * tr_out
        assert resid < 0.01
        # the spectral peak of the output is at the input frequency
        spec = np.abs(
            np.fft.rfft((out.data[:, j] - out.data[:, j].mean()) * np.hanning(n_out), 8 * n_out)
        )
        peak = np.fft.rfftfreq(8 * n_out, tr_out)[spec.argmax()]
        assert peak == pytest.approx(f, abs=1.0 / (n_out * tr_out))


@pytest.mark.parametrize(("tr_in", "tr_out"), PAIRS)
def test_above_new_nyquist_is_removed(tr_in, tr_out):
    n = 490
    t = np.arange(n) * tr_in
    nyq_out, nyq_in = 0.5 / tr_out, 0.5 / tr_in
    f = min(1.25 * nyq_out, 0.9 * nyq_in)
    x = np.sin(2 * np.pi * f * t)[:, None]
    out = rs.resample_to_tr(x, tr_in, tr_out)
    mid = _interior(out.data.shape[0])
    assert np.abs(out.data[mid]).max() < 5e-3
    if (tr_out / tr_in) % 1 < 1e-9:
        # the paper's plain decimation aliases the same sinusoid at full amplitude
        dec = rs.resample_to_tr(x, tr_in, tr_out, "decimate")
        assert np.abs(dec.data).max() > 0.5


def test_interpolate_fallback_for_awkward_ratio():
    x = np.random.default_rng(0).standard_normal((300, 3))
    out = rs.resample_to_tr(x, 0.7349, 2.0)
    assert out.method == "interpolate"
    assert out.data.shape == (rs.n_output_frames(300, 0.7349, 2.0), 3)


def test_shorter_target_tr_raises_naming_both():
    x = np.zeros((100, 2))
    with pytest.raises(ValueError, match=r"target TR 0\.8 s is shorter than the source TR 1\.47 s"):
        rs.resample_to_tr(x, 1.47, 0.8)


def test_same_tr_is_identity():
    x = np.random.default_rng(1).standard_normal((50, 4))
    out = rs.resample_to_tr(x, 0.8, 0.8)
    np.testing.assert_array_equal(out.data, x)
    assert out.method == "identity"


def _paper_indices(n_in: int, r: int, start: float) -> np.ndarray:
    """The published recipe written out independently (mae_st temporal sampling)."""
    n = n_in // r
    clip = r * n
    return np.clip(np.floor(np.linspace(start, start + clip - 1, n)), 0, n_in - 1).astype(int)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_decimate_reproduces_paper_recipe(r):
    n_in, tr_in = 490, 0.735
    x = np.arange(n_in, dtype=float)[:, None] * np.ones((1, 2))
    out = rs.resample_to_tr(x, tr_in, r * tr_in, "decimate")  # no rng: offset 0
    expected = _paper_indices(n_in, r, 0.0)
    np.testing.assert_array_equal(out.data[:, 0], expected)
    np.testing.assert_allclose(out.times, expected * tr_in)
    steps = np.diff(expected)
    assert set(steps.tolist()) <= {r, r + 1}
    assert out.data.shape[0] == n_in // r
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    a = rs.resample_to_tr(x, tr_in, r * tr_in, "decimate", rng=rng_a)
    b = rs.resample_to_tr(x, tr_in, r * tr_in, "decimate", rng=rng_b)
    np.testing.assert_array_equal(a.data, b.data)
    start = a.details["start"]
    assert 0 <= start <= n_in - r * (n_in // r)
    np.testing.assert_array_equal(a.data[:, 0], _paper_indices(n_in, r, start))


def test_decimate_needs_integer_ratio():
    with pytest.raises(ValueError, match="integer TR ratio"):
        rs.resample_to_tr(np.zeros((100, 1)), 0.735, 2.0, "decimate")


def test_input_errors():
    with pytest.raises(ValueError, match="shape"):
        rs.resample_to_tr(np.zeros(100), 0.8, 1.6)
    bad = np.zeros((100, 2))
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rs.resample_to_tr(bad, 0.8, 1.6)
    with pytest.raises(ValueError, match="method"):
        rs.resample_to_tr(np.zeros((10, 1)), 0.8, 1.6, "fourier")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tr_in"):
        rs.resample_to_tr(np.zeros((10, 1)), -1, 1.6)


def test_lowpass_design_meets_spec():
    from scipy.signal import freqz

    fs, cutoff = 1 / 0.735, 0.5 / 2.205
    taps = rs.lowpass_fir(fs, cutoff)
    assert taps.size % 2 == 1
    np.testing.assert_allclose(taps, taps[::-1])  # linear phase
    w, h = freqz(taps, worN=8192, fs=fs)
    gain = np.abs(h)
    assert np.abs(gain[w <= 0.8 * cutoff] - 1).max() < 2e-3
    assert gain[w >= cutoff].max() < 2e-3
    with pytest.raises(ValueError, match="cutoff"):
        rs.lowpass_fir(1.0, 0.6)


def test_cli_resample_npy_and_tsv(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.standard_normal((200, 5))
    src = tmp_path / "sub-01_task-rest_timeseries.npy"
    np.save(src, data)
    (tmp_path / "sub-01_task-rest_timeseries.json").write_text(
        json.dumps({"RepetitionTime": 0.735, "CensoredFrames": []})
    )
    parser = argparse.ArgumentParser()
    resample_command.add_arguments(parser)
    dst = tmp_path / "tr-1470" / "sub-01_task-rest_tr-1470_timeseries.npy"
    assert (
        resample_command.run(
            parser.parse_args(["--input", str(src), "--output", str(dst), "--tr-out-ms", "1470"])
        )
        == 0
    )
    out = np.load(dst)
    assert out.shape == (100, 5) and out.dtype == np.float32
    side = json.loads(dst.with_suffix(".json").read_text())
    assert side["RepetitionTime"] == 1.47
    assert side["SourceRepetitionTime"] == 0.735
    assert side["ResamplingMethod"] == "polyphase"
    assert side["CensoredFrames"] == []
    # TSV keeps the ROI names; decimate with a seed records the frames taken
    tsv = tmp_path / "s.tsv"
    pd.DataFrame(data, columns=list("abcde")).to_csv(tsv, sep="\t", index=False)
    dst2 = tmp_path / "o.tsv"
    args = parser.parse_args(
        [
            "--input",
            str(tsv),
            "--output",
            str(dst2),
            "--tr-out",
            "2.205",
            "--tr-in",
            "0.735",
            "--method",
            "decimate",
            "--seed",
            "1",
        ]
    )
    assert resample_command.run(args) == 0
    back = pd.read_csv(dst2, sep="\t")
    assert list(back.columns) == list("abcde") and len(back) == 66
    assert (
        len(json.loads(dst2.with_suffix(".json").read_text())["ResamplingDetails"]["frames"]) == 66
    )
    # no TR anywhere: a clear error naming the file
    bare = tmp_path / "bare.npy"
    np.save(bare, data)
    with pytest.raises(InputDataError, match=r"bare\.npy: no RepetitionTime"):
        resample_command.run(
            parser.parse_args(["--input", str(bare), "--output", str(dst), "--tr-out", "2"])
        )
    with pytest.raises(InputDataError, match="shorter than the source TR"):
        resample_command.run(
            parser.parse_args(["--input", str(src), "--output", str(dst), "--tr-out", "0.5"])
        )


def test_censored_volumes_and_empty_rois():
    """Censored volumes are bridged for filtering and censored again in the output."""
    tr_in, tr_out, n = 0.735, 1.47, 300
    t = np.arange(n) * tr_in
    clean = np.stack([np.sin(2 * np.pi * 0.05 * t), np.cos(2 * np.pi * 0.08 * t)], axis=1)
    x = np.column_stack([clean, np.full(n, np.nan)])  # third ROI: no data in this run
    cens = np.zeros(n, dtype=bool)
    cens[100:104] = True
    x[cens] = np.nan
    out = rs.resample_to_tr(x, tr_in, tr_out, censored=cens)
    ref = rs.resample_to_tr(clean, tr_in, tr_out)
    # output frame k is censored iff some censored t_i is within tr_out / 2 of k * tr_out
    t_bad = t[cens]
    expected = np.array([np.any(np.abs(t_bad - k * tr_out) <= tr_out / 2 + 1e-9)
                         for k in range(len(out.times))])  # fmt: skip
    np.testing.assert_array_equal(out.censored, expected)
    assert np.isnan(out.data[out.censored]).all()
    assert np.isnan(out.data[:, 2]).all()
    far = np.abs(out.times - t_bad.mean()) > 40  # beyond the filter's reach
    np.testing.assert_allclose(out.data[far, :2], ref.data[far], atol=1e-9)
    near = ~out.censored & ~far
    assert np.abs(out.data[near, :2] - ref.data[near]).max() < 0.2
    dec = rs.resample_to_tr(x, tr_in, 2 * tr_in, "decimate", censored=cens)
    np.testing.assert_array_equal(dec.censored, cens[dec.details["frames"]])
    with pytest.raises(ValueError, match=r"NaN in volumes \[100"):
        rs.resample_to_tr(x, tr_in, tr_out)  # censoring not declared
    with pytest.raises(ValueError, match="every volume is censored"):
        rs.resample_to_tr(x, tr_in, tr_out, censored=np.ones(n, bool))


def test_cli_keeps_censoring_and_source_provenance(tmp_path):
    """A functional-stage-like TSV: n/a rows for censored volumes, an all-n/a parcel."""
    rng = np.random.default_rng(5)
    data = rng.standard_normal((120, 4))
    data[[30, 31]] = np.nan
    data[:, 3] = np.nan
    src = tmp_path / "sub-01_task-rest_atlas-Schaefer400_timeseries.tsv"
    pd.DataFrame(data, columns=["A", "B", "C", "D"]).to_csv(
        src, sep="\t", index=False, na_rep="n/a"
    )
    src.with_suffix(".json").write_text(json.dumps({
        "RepetitionTime": 0.8, "StartTime": 0.4, "CensoredVolumes": [30, 31],
        "SmallParcels": {"Count": 1}, "Step": "func", "GitSHA": "abc",
    }))  # fmt: skip
    parser = argparse.ArgumentParser()
    resample_command.add_arguments(parser)
    dst = tmp_path / "out.tsv"
    assert resample_command.run(parser.parse_args(["--input", str(src), "--output", str(dst),
                                     "--tr-out-ms", "2400"])) == 0  # fmt: skip
    out = pd.read_csv(dst, sep="\t", na_values=["n/a"])
    side = json.loads(dst.with_suffix(".json").read_text())
    assert len(out) == side["NumberOfVolumes"] == 40
    assert side["CensoredVolumes"] == [10]  # 30 and 31 x 0.8 s are within 1.2 s of 24.0 s
    assert out.iloc[10].isna().all() and out["D"].isna().all()
    assert out.drop(index=10)[["A", "B", "C"]].notna().all().all()
    assert side["StartTime"] == pytest.approx(0.4)
    assert side["SmallParcels"] == {"Count": 1}
    assert side["SourceProvenance"] == {"Step": "func", "GitSHA": "abc"}
    assert side["Step"] == "resample"
