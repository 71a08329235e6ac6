"""The group QC table, the subject pages and the report's group QC section.

:func:`synthetic_derivatives` writes the files the ingest, anatomy and functional stages
leave for one small dataset: a kept subject, a subject whose T1w the anatomy QC gate
excluded, a subject with one kept run and one run excluded by censoring, and ingest
exclusions (a run with too few volumes, a subject without a T1w, and a folder whose
name is hostile HTML).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest

from brainharmony.anat.derivatives import anat_paths
from brainharmony.cli import main as cli_main
from brainharmony.evaluate.report import ReportBuilder, build_report
from brainharmony.func.naming import run_outputs
from brainharmony.io import InputDataError, sidecar_path
from brainharmony.qc.group import (
    COLUMNS,
    build_group_qc,
    mean_framewise_displacement,
    page_name,
    read_group_qc,
    temporal_snr,
    write_group_qc,
)
from brainharmony.qc.pages import write_subject_pages

DATASET = "synth"
TEMPLATE = "MNI152NLin2009aAsym"
ANAT_REASON = "correlation with the template in its brain mask 0.412 < qc_min_ncc 0.5"
FUNC_REASON = "only 12 volumes remain after censoring; min_kept is 20"
HOSTILE = '<script>alert("x")</script>&'
ATLAS = "Schaefer2018 400 parcels, 7 networks (columns in Schaefer order)"
#: subject, session, run, T1w excluded, run excluded, tSNR, FD values after the first
RUNS = (
    ("01", None, None, False, "", 40.0, [0.1, 0.2, 0.3]),
    ("02", None, None, True, f"anatomy excluded: {ANAT_REASON}", 30.0, [0.2, 0.2, 0.2]),
    ("03", None, "1", False, "", 60.0, [0.05, 0.15, 0.1]),
    ("03", None, "2", False, FUNC_REASON, 20.0, [1.5, 2.5, 2.0]),
)
N_VOLUMES = 60


def _png(path: Path) -> None:
    from brainharmony.evaluate.figures import _figure, png_bytes

    fig = _figure(1.0, 1.0)
    fig.subplots().imshow(np.arange(16.0).reshape(4, 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig))


def planted_series(tsnr: float, n_volumes: int = N_VOLUMES, n_parcels: int = 40, seed: int = 0):
    """Raw parcel series with a known tSNR (mean 1000, Gaussian noise) plus a linear drift
    the detrending removes, and one parcel without coverage (NaN)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n_volumes, n_parcels))
    noise = (noise - noise.mean(axis=0)) / noise.std(axis=0, ddof=2)
    t = np.arange(n_volumes) - (n_volumes - 1) / 2
    noise -= np.outer(t, (t @ noise) / (t @ t))  # orthogonal to the trend
    noise /= noise.std(axis=0, ddof=2)
    series = 1000.0 + (1000.0 / tsnr) * noise + np.outer(t, np.linspace(0.5, 3.0, n_parcels))
    series[:, 3] = np.nan
    return series


def synthetic_derivatives(root: Path) -> Path:
    """The ingest, anatomy and functional outputs of dataset ``synth`` under
    ``root/results``; returns the results folder."""
    results = root / "results"
    ingest = results / "ingest" / DATASET
    ingest.mkdir(parents=True)
    anat_dir = results / "anat" / DATASET
    func_dir = results / "func" / DATASET
    rows = []
    for subject, session, run, t1w_excluded, run_reason, tsnr, fd in RUNS:
        stem = f"sub-{subject}_task-rest" + (f"_run-{run}" if run else "")
        rows.append(
            {
                "dataset": DATASET,
                "subject": subject,
                "session": session or "n/a",
                "run": run or "n/a",
                "t1w": f"/bids/sub-{subject}/anat/sub-{subject}_T1w.nii.gz",
                "t1w_session": "n/a",
                "bold": f"/bids/sub-{subject}/func/{stem}_bold.nii.gz",
                "bold_sidecar": "n/a",
                "tr": 2.0,
                "n_volumes": N_VOLUMES,
                "duration_s": 2.0 * N_VOLUMES,
                "n_slices": 30,
                "has_slice_timing": True,
                "site": DATASET,
            }
        )
        paths = anat_paths(anat_dir, subject, None, TEMPLATE)
        flag = {"Excluded": True, "ExclusionReason": ANAT_REASON} if t1w_excluded else {}
        preproc = sidecar_path(paths.preproc)
        preproc.parent.mkdir(parents=True, exist_ok=True)
        preproc.write_text(
            json.dumps(
                {
                    "Metrics": {
                        "NCCWithTemplateInBrain": 0.412 if t1w_excluded else 0.93,
                        "MaskDiceWithTemplateMask": 0.91,
                        "NativeBrainVolumeML": 1450.5,
                        "TransformScaleFactors": [1.01, 0.98, 1.02],
                    },
                    **flag,
                }
            )
        )
        _png(paths.figure)
        out = run_outputs(func_dir, subject, session, "rest", run, space=TEMPLATE)
        out.folder.mkdir(parents=True, exist_ok=True)
        kept = 12 if run_reason == FUNC_REASON else N_VOLUMES - 5
        side = {"NumberOfVolumes": N_VOLUMES, "KeptVolumes": kept, "Atlas": ATLAS}
        if subject == "01":
            side["AtlasSource"] = "templateflow"  # another run's sidecar may lack it
        if run_reason:
            side.update(Excluded=True, ExclusionReason=run_reason)
        sidecar_path(out.timeseries).write_text(json.dumps(side))
        fd_column = ["n/a"] + [f"{v}" for v in fd] + ["0"] * (N_VOLUMES - 1 - len(fd))
        pd.DataFrame({"framewise_displacement": fd_column, "csf": 1.0}).to_csv(
            out.confounds, sep="\t", index=False
        )
        series = planted_series(tsnr, seed=int(subject) + (int(run) if run else 0))
        pd.DataFrame(series, columns=[f"p{i}" for i in range(series.shape[1])]).to_csv(
            out.raw_timeseries, sep="\t", index=False, na_rep="n/a"
        )
        coreg = (
            {"Method": "none (anatomy excluded); scanner header (identity) used", "Passed": False}
            if t1w_excluded
            else {"Method": "bbr", "Dice": 0.9, "NMI": 1.21, "BBRCost": 0.45, "Passed": True}
        )
        sidecar_path(out.coreg_xfm).write_text(json.dumps({"Registration": coreg}))
        for fig in (out.fd_figure, out.carpet_figure, out.fc_figure):
            _png(fig)
    pd.DataFrame(rows).to_csv(ingest / "scans.tsv", sep="\t", index=False)
    excluded = pd.DataFrame(
        [
            ("03", "n/a", "3", "/bids/sub-03/func/sub-03_task-rest_run-3_bold.nii.gz",
             "8 volumes < min_volumes 50"),
            ("04", "n/a", "n/a", "/bids/sub-04", "no T1w for this subject"),
            (HOSTILE, "n/a", "n/a", f"/bids/sub-{HOSTILE}", f"label {HOSTILE} is not alphanumeric"),
        ],
        columns=["subject", "session", "run", "path", "reason"],
    )  # fmt: skip
    excluded.insert(0, "dataset", DATASET)
    excluded.to_csv(ingest / "excluded.tsv", sep="\t", index=False)
    return results


def _build(results: Path):
    return build_group_qc(
        DATASET,
        results / "ingest" / DATASET / "scans.tsv",
        results / "ingest" / DATASET / "excluded.tsv",
        results / "anat" / DATASET,
        results / "func" / DATASET,
        task="rest",
        template=TEMPLATE,
    )


def _write_all(results: Path) -> Path:
    qc = _build(results)
    out = results / "qc" / DATASET
    write_group_qc(qc, out, [results / "ingest" / DATASET / "scans.tsv"], {"task": "rest"})
    write_subject_pages(qc, out / "subjects")
    return out


# ------------------------------------------------------------------------- numerics


def test_temporal_snr_recovers_the_planted_value_despite_drift_and_a_missing_parcel():
    for tsnr in (20.0, 55.0):
        assert temporal_snr(planted_series(tsnr)) == pytest.approx(tsnr, rel=1e-6)
    assert np.isnan(temporal_snr(np.full((10, 3), np.nan)))
    assert np.isnan(temporal_snr(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"shape \(n_volumes, n_parcels\)"):
        temporal_snr(np.ones(5))


def test_mean_fd_leaves_out_the_first_volume_and_non_finite_values():
    assert mean_framewise_displacement(np.array([np.nan, 0.1, 0.3, np.nan, 0.2])) == (
        pytest.approx(0.2)
    )
    assert mean_framewise_displacement(np.array([5.0, 1.0])) == pytest.approx(1.0)
    assert np.isnan(mean_framewise_displacement(np.array([0.0])))


# ------------------------------------------------------------------------- table


def test_table_has_every_run_and_every_exclusion_with_stage_and_reason(tmp_path):
    table = _build(synthetic_derivatives(tmp_path)).table
    assert list(table.columns) == list(COLUMNS)
    assert len(table) == len(RUNS) + 3
    rows = {(r.subject, r.run): r for r in table.itertuples(index=False)}
    kept = rows[("01", "n/a")]
    assert kept.excluded == "no" and kept.exclusion_stage == "n/a"
    assert kept.exclusion_reason == "n/a"
    assert kept.source == "sub-01_task-rest_bold.nii.gz"
    assert kept.n_volumes == N_VOLUMES and kept.frames_kept == N_VOLUMES - 5
    assert kept.frames_kept_fraction == pytest.approx((N_VOLUMES - 5) / N_VOLUMES)
    assert kept.mean_fd == pytest.approx(0.6 / (N_VOLUMES - 1))
    assert kept.tsnr == pytest.approx(40.0, rel=1e-6)
    assert kept.anat_ncc == pytest.approx(0.93) and kept.anat_dice == pytest.approx(0.91)
    assert kept.anat_brain_volume_ml == pytest.approx(1450.5)
    assert (kept.anat_scale_min, kept.anat_scale_max) == (pytest.approx(0.98), pytest.approx(1.02))
    assert kept.coreg_method == "bbr" and kept.coreg_dice == pytest.approx(0.9)
    assert kept.coreg_nmi == pytest.approx(1.21) and kept.coreg_bbr_cost == pytest.approx(0.45)
    assert kept.atlas == ATLAS and kept.atlas_source == "templateflow"
    # the T1w excluded by the anatomy QC gate: its run is excluded by "anat", with the
    # gate's own reason (not func's "anatomy excluded: ..." echo)
    anat = rows[("02", "n/a")]
    assert (anat.excluded, anat.exclusion_stage, anat.exclusion_reason) == (
        "yes",
        "anat",
        ANAT_REASON,
    )
    assert anat.anat_ncc == pytest.approx(0.412) and np.isnan(anat.coreg_dice)
    assert anat.atlas_source == "n/a"  # AtlasSource absent from the sidecar: tolerated
    # a run excluded by censoring; the subject's other run is kept
    func = rows[("03", "2")]
    assert (func.excluded, func.exclusion_stage, func.exclusion_reason) == (
        "yes",
        "func",
        FUNC_REASON,
    )
    assert func.frames_kept == 12 and func.mean_fd == pytest.approx(6.0 / (N_VOLUMES - 1))
    assert rows[("03", "1")].excluded == "no"
    # ingest exclusions: a run and two subjects, never dropped
    short = rows[("03", "3")]
    assert (short.excluded, short.exclusion_stage) == ("yes", "ingest")
    assert short.exclusion_reason == "8 volumes < min_volumes 50"
    assert short.source == "sub-03_task-rest_run-3_bold.nii.gz" and np.isnan(short.tsnr)
    assert rows[("04", "n/a")].exclusion_reason == "no T1w for this subject"
    assert rows[(HOSTILE, "n/a")].exclusion_stage == "ingest"
    # natural order: subject, session, run; the ingest rows of a subject after its runs
    assert list(table["subject"])[:5] == ["01", "02", "03", "03", "03"]
    assert list(table["run"])[2:5] == ["1", "2", "3"]


def test_written_table_reads_back_and_its_sidecar_describes_every_column(tmp_path):
    results = synthetic_derivatives(tmp_path)
    out = _write_all(results)
    back = read_group_qc(out / "group_qc.tsv")
    expected = _build(results).table
    assert list(back.columns) == list(COLUMNS)
    assert back["subject"].tolist() == expected["subject"].tolist()  # "01" stays "01"
    assert back["tsnr"].to_numpy() == pytest.approx(expected["tsnr"].to_numpy(), nan_ok=True)
    text = (out / "group_qc.tsv").read_text()
    assert "\tn/a\t" in text and "nan" not in text.lower().replace("n/a", "")
    side = json.loads((out / "group_qc.json").read_text())
    for column in COLUMNS:
        assert side[column]["Description"], column
    assert side["mean_fd"]["Units"] == "mm"
    assert set(side["excluded"]["Levels"]) == {"yes", "no"}
    assert side["Counts"] == {
        "rows": 7,
        "runs": 4,
        "runs_excluded": 2,
        "subjects": 5,
        "ingest_exclusions": 3,
    }
    assert side["Provenance"]["Step"] == "group-qc"


def test_a_run_without_its_func_outputs_is_an_error_naming_the_file(tmp_path):
    results = synthetic_derivatives(tmp_path)
    out = run_outputs(results / "func" / DATASET, "03", None, "rest", "2", space=TEMPLATE)
    sidecar_path(out.timeseries).unlink()
    with pytest.raises(InputDataError, match=r"sub-03_task-rest_run-2_space-.*json"):
        _build(results)


def test_the_cli_writes_the_table_its_sidecar_and_the_pages(tmp_path):
    results = synthetic_derivatives(tmp_path)
    out = results / "qc" / DATASET
    code = cli_main(
        [
            "group-qc",
            "--dataset",
            DATASET,
            "--scans",
            str(results / "ingest" / DATASET / "scans.tsv"),
            "--excluded",
            str(results / "ingest" / DATASET / "excluded.tsv"),
            "--anat-dir",
            str(results / "anat" / DATASET),
            "--func-dir",
            str(results / "func" / DATASET),
            "--template",
            TEMPLATE,
            "--out-dir",
            str(out),
        ]
    )
    assert code == 0
    assert len(read_group_qc(out / "group_qc.tsv")) == len(RUNS) + 3
    assert (out / "group_qc.json").is_file()
    assert {p.name for p in (out / "subjects").glob("*.html")} == {
        "sub-01.html",
        "sub-02.html",
        "sub-03.html",
        "sub-04.html",
        page_name(HOSTILE),
    }


# ------------------------------------------------------------------------- HTML


class _Links(HTMLParser):
    """The href/src values of a page (entities decoded, as a browser reads them)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def _links(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    return parser


def _resolves(page: Path, link: str) -> bool:
    return (page.parent / unquote(link)).resolve().is_file()


def test_hostile_labels_are_escaped_and_cannot_name_a_file(tmp_path):
    results = synthetic_derivatives(tmp_path)
    out = _write_all(results)
    name = page_name(HOSTILE)
    assert re.fullmatch(r"subject-[0-9a-f]{12}\.html", name)
    page = (out / "subjects" / name).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in (
        page
    )
    assert _links(out / "subjects" / name).scripts == 0


def test_subject_pages_show_their_rows_and_link_their_figures_relatively(tmp_path):
    results = synthetic_derivatives(tmp_path)
    out = _write_all(results)
    page = out / "subjects" / "sub-03.html"
    text = page.read_text()
    # one column per row of the table; the censored run and the short run highlighted
    assert text.count('<th class="excluded">') == 2 and text.count('<th class="text">sub-03') == 1
    assert FUNC_REASON in text and "8 volumes &lt; min_volumes 50" in text
    links = _links(page).links
    images = [link for link in links if link.endswith(".png")]
    # one T1w registration figure and three figures per run (two runs)
    assert len(set(images)) == 1 + 3 * 2
    for link in links:
        if link.startswith("data:"):
            continue
        assert not os.path.isabs(link) and not re.match(r"\w+:", link), link
        assert _resolves(page, link), link
    assert "../../../anat/synth/figures/sub-03_desc-reg_T1w.png" in images
    # a subject the ingest excluded has a page with its reason and no figures
    absent = (out / "subjects" / "sub-04.html").read_text()
    assert "no T1w for this subject" in absent and "<img" not in absent
    # the whole results folder moved: the links still resolve
    moved = shutil.copytree(results, tmp_path / "elsewhere" / "results")
    shutil.rmtree(results)
    moved_page = moved / "qc" / DATASET / "subjects" / "sub-03.html"
    assert all(_resolves(moved_page, link) for link in links if not link.startswith("data:"))


def test_report_renders_the_table_highlights_exclusions_and_links_the_pages(tmp_path):
    results = synthetic_derivatives(tmp_path)
    _write_all(results)
    report = build_report(results / "report" / "index.html", results)
    page = report.read_text()
    section = re.search(r'<section id="groupqc">(.*?)</section>', page, flags=re.S).group(1)
    assert 'class="error"' not in section and 'class="absent"' not in section
    assert section.count('<tr class="excluded">') == 5  # anat, func, three ingest rows
    assert section.count("<tr>") == 2 + 1  # two kept runs, and the header row
    assert html.escape(ANAT_REASON) in section and FUNC_REASON in section
    assert "Atlas: " + ATLAS in section and "templateflow" in section
    assert "<script>" not in page and "&lt;script&gt;" in section
    links = [link for link in _links(report).links if not link.startswith(("data:", "#"))]
    pages = [link for link in links if link.endswith(".html")]
    assert "../qc/synth/subjects/sub-01.html" in pages
    assert any(page_name(HOSTILE) in link for link in pages)
    assert "../qc/synth/group_qc.tsv" in links
    for link in links:
        assert _resolves(report, link), link
    # a subject link in the table as well as in the list of pages
    assert section.count('href="../qc/synth/subjects/sub-03.html"') == 1 + 3


def test_report_without_group_qc_says_so(tmp_path):
    builder = ReportBuilder(tmp_path / "results")
    assert "No group QC tables" in builder.section_group_qc()


def test_report_shows_every_excluded_row_of_a_long_table(tmp_path, monkeypatch):
    from brainharmony.evaluate import report as report_module

    results = synthetic_derivatives(tmp_path)
    _write_all(results)
    monkeypatch.setattr(report_module, "QC_TABLE_ROWS", 6)
    section = ReportBuilder(results).section_group_qc()
    assert "6 of 7 rows shown" in section
    assert section.count('<tr class="excluded">') == 5 and section.count("<tr>") == 1 + 1
