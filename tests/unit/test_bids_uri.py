"""BIDS URIs and derivative dataset descriptions (brainharmony.bids_uri)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brainharmony import __version__
from brainharmony.bids_uri import (
    RAW,
    BidsUriError,
    bids_root,
    bids_uri,
    link_uri,
    link_value,
    parse_bids_uri,
    resolve_bids_uri,
    source_uris,
    write_dataset_description,
)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """A raw dataset and a derivative folder beside it, one file in each."""
    raw = tmp_path / "data" / "study"
    t1w = raw / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz"
    deriv = tmp_path / "results" / "anat" / "study"
    out = deriv / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_desc-preproc_T1w.nii.gz"
    for path in (t1w, out):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    return {"raw": raw, "t1w": t1w, "deriv": deriv, "out": out}


def test_uri_round_trips_through_the_dataset_links(tree, monkeypatch):
    monkeypatch.chdir(tree["raw"].parents[1])
    raw_rel = Path("data/study")  # as a config would give it
    uri = bids_uri(tree["t1w"], raw_rel, RAW)
    assert uri == "bids:raw:sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"
    assert parse_bids_uri(uri) == (RAW, "sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz")
    own = bids_uri(tree["out"], tree["deriv"])
    assert own == "bids::sub-01/ses-2/anat/sub-01_ses-2_desc-preproc_T1w.nii.gz"
    for links in ({RAW: raw_rel}, {RAW: tree["raw"]}):  # relative link, file: URI
        write_dataset_description(
            tree["deriv"], pipeline="brainharmony-anat", description="d", links=links
        )
        assert resolve_bids_uri(uri, tree["deriv"]).resolve() == tree["t1w"].resolve()
    assert resolve_bids_uri(own, tree["deriv"]) == tree["out"]


def test_paths_outside_the_dataset_are_refused_naming_both(tree):
    outside = tree["deriv"] / "sub-01" / "ses-2" / "anat" / "x.nii.gz"
    with pytest.raises(BidsUriError, match=r"is not inside the dataset at .*study"):
        bids_uri(outside, tree["raw"], RAW)
    with pytest.raises(BidsUriError, match="not inside"):
        bids_uri(tree["raw"], tree["raw"], RAW)  # the root itself names no file
    with pytest.raises(BidsUriError, match="not inside"):
        bids_uri(tree["raw"] / ".." / "elsewhere.nii.gz", tree["raw"], RAW)
    with pytest.raises(BidsUriError, match="letters and digits"):
        bids_uri(tree["t1w"], tree["raw"], "raw data")


def test_malformed_or_escaping_uris_and_unknown_datasets_are_refused(tree):
    for bad in ("/abs/sub-01_T1w.nii.gz", "bids:raw", "file:///x", "bids:r-w:x"):
        with pytest.raises(BidsUriError, match="not a BIDS URI"):
            parse_bids_uri(bad)
    with pytest.raises(BidsUriError, match="stay inside"):
        parse_bids_uri("bids:raw:../secret.nii.gz")
    write_dataset_description(tree["deriv"], pipeline="p", description="d", links={})
    with pytest.raises(BidsUriError, match="'fmriprep' is not in DatasetLinks"):
        resolve_bids_uri("bids:fmriprep:sub-01/func/x.nii.gz", tree["deriv"])


def test_sources_take_the_innermost_linked_dataset_and_skip_resources(tree, tmp_path):
    nested = tree["raw"] / "derivatives" / "fmriprep"
    bold = nested / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    atlas = tmp_path / "resources" / "atlas.nii.gz"
    links = {RAW: tree["raw"], "fmriprep": nested}
    assert source_uris([tree["t1w"], None, bold, atlas], links) == [
        "bids:raw:sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz",
        "bids:fmriprep:sub-01/func/sub-01_task-rest_bold.nii.gz",
    ]
    assert link_uri(atlas, links) is None


def test_bids_root_comes_from_the_file_place_only(tree):
    assert bids_root(tree["t1w"]) == tree["raw"]
    assert bids_root("ds/sub-01/func/sub-01_task-rest_bold.nii.gz") == Path("ds")
    assert bids_root("loose/sub-01_T1w.nii.gz") is None
    assert bids_root("ds/sub-01/ses-1/sub-01_T1w.nii.gz") is None


def test_description_is_deterministic_bids_derivatives(tree, monkeypatch):
    monkeypatch.chdir(tree["raw"].parents[1])
    kwargs = {
        "pipeline": "brainharmony-anat",
        "description": "anatomy",
        "links": {RAW: Path("data/study"), "unused": None},
        "bidsignore": ("figures", "*_xfm.*"),
    }
    path = write_dataset_description("results/anat/study", **kwargs)
    first = path.read_bytes()
    stamp = path.stat().st_mtime_ns
    write_dataset_description("results/anat/study", **kwargs)
    assert path.read_bytes() == first and path.stat().st_mtime_ns == stamp  # left untouched
    doc = json.loads(first)
    assert doc == {
        "Name": "brainharmony-anat: study",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {"Name": "brainharmony-anat", "Version": __version__, "Description": "anatomy"}
        ],
        "SourceDatasets": [{"URL": "bids:raw:"}],
        "DatasetLinks": {"raw": "../../../data/study"},
    }
    assert (path.parent / ".bidsignore").read_text() == "figures\n*_xfm.*\n"
    assert link_value(tree["raw"], "results/anat/study") == f"file://{tree['raw']}"
