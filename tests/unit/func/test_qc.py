"""QC figures (numpy + Pillow): written, deterministic, showing what they claim."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from brainharmony.func import qc


def _run(n=60, seed=0):
    rng = np.random.default_rng(seed)
    fd = np.abs(rng.normal(0.2, 0.1, n))
    fd[0] = np.nan
    keep = np.ones(n, bool)
    keep[[20, 21, 45]] = False
    return rng, fd, keep


def test_fd_figure_shades_the_censored_frames(tmp_path):
    _, fd, keep = _run()
    path = qc.plot_fd(fd, 2.0, 0.5, keep, tmp_path / "fd.png", title="sub-01")
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape == (260, 800, 3)
    shade = np.array(qc._blend(qc.RED, 0.25))
    shaded_cols = np.flatnonzero(np.abs(img[120] - shade).sum(-1) == 0)
    # Frames 20-21 and 45 are shaded; the pixels in between are not.
    ax = qc._Axes(Image.new("RGB", (800, 260)), (66, 30, 786, 214), (0, 118.0), (0, 1))
    for frame in (20, 21, 45):
        assert np.any(np.abs(shaded_cols - ax.px(frame * 2.0)) <= 1)
    assert not np.any(np.abs(shaded_cols - ax.px(33 * 2.0)) <= 10)
    # The dashed threshold line is red.
    assert (np.abs(img - np.array(qc.RED)).sum(-1) == 0).sum() > 100
    again = qc.plot_fd(fd, 2.0, 0.5, keep, tmp_path / "fd2.png", title="sub-01")
    assert path.read_bytes() == again.read_bytes()


def test_carpet_and_fc_figures(tmp_path):
    rng, fd, _ = _run()
    samples = rng.normal(size=(300, 60))
    samples[5] = 1.0  # constant row: zero, not NaN
    dvars = np.abs(rng.normal(10, 2, 60))
    path = qc.plot_carpet(samples, np.arange(300), fd, dvars, 2.0, tmp_path / "c.png", title="t")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (550, 800, 3)
    carpet = img[210:480, 90:770]
    assert carpet.min() < 30 and carpet.max() > 225  # z-scores span black to white
    series = rng.normal(size=(60, 14))
    series[:, 7:] += series[:, :1] * 3  # one network correlated with parcel 0
    series[10] = np.nan  # a censored frame
    nets = ["A"] * 7 + ["B"] * 7
    fc = qc.plot_fc(series, nets, tmp_path / "fc.png", title="t\nexcluded: reason")
    rgb = np.asarray(Image.open(fc).convert("RGB"))
    assert rgb.shape == (535, 600, 3)  # one more title line, 15 px taller
    # Diagonal (r = 1) is dark red; the colour bar spans blue to red.
    assert tuple(qc._rdbu(np.array([1.0]))[0]) == qc.RDBU_R[-1]
    assert tuple(qc._rdbu(np.array([-1.0]))[0]) == qc.RDBU_R[0]
    assert tuple(qc._rdbu(np.array([np.nan]))[0]) == qc.WHITE
    with pytest.raises(ValueError, match="parcel count"):
        qc.plot_fc(series, nets[:3], tmp_path / "bad.png")


def test_nice_ticks():
    np.testing.assert_allclose(qc.nice_ticks(0, 300, 8), np.arange(0, 301, 50))
    np.testing.assert_allclose(qc.nice_ticks(-0.04, 0.81, 4), [0, 0.25, 0.5, 0.75])
    ticks = qc.nice_ticks(0, 2000, 8)
    assert qc._tick_label(ticks[1], ticks) == "250"
    assert qc._tick_label(0.25, np.array([0, 0.25])) == "0.25"


def test_figures_do_not_import_matplotlib(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from brainharmony.func import qc\n"
        f"qc.plot_fd(np.ones(5), 1.0, 0.5, np.ones(5, bool), r'{tmp_path / 'f.png'}')\n"
        "assert 'matplotlib' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
