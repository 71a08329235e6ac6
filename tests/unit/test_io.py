"""Atomic writers, reproducible NIfTI bytes, provenance."""

import gzip
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainharmony import io


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "sub" / "out.tsv"
    with pytest.raises(RuntimeError), io.atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_atomic_path_keeps_old_file_until_complete(tmp_path):
    dest = tmp_path / "x.json"
    io.write_json(dest, {"a": 1})
    with pytest.raises(ValueError), io.atomic_path(dest) as tmp:
        tmp.write_text("{broken")
        raise ValueError
    assert json.loads(dest.read_text()) == {"a": 1}


def test_write_nifti_is_byte_reproducible(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(data, np.eye(4))
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    io.write_nifti(a, img)
    io.write_nifti(b, img)
    assert a.read_bytes() == b.read_bytes()
    np.testing.assert_array_equal(np.asanyarray(nib.load(a).dataobj), data)


def test_write_tsv_uses_na(tmp_path):
    path = io.write_tsv(tmp_path / "t.tsv", pd.DataFrame({"a": [1.0, np.nan], "b": ["x", None]}))
    assert path.read_text() == "a\tb\n1.0\tx\nn/a\tn/a\n"


def test_sidecar_path_and_provenance(tmp_path):
    assert io.sidecar_path("d/sub-1_bold.nii.gz").name == "sub-1_bold.json"
    assert io.sidecar_path("d/x.tsv").name == "x.json"
    prov = io.provenance(step="s", inputs=["a.nii.gz"], parameters={"k": 1}, config={"x": 1})
    assert prov["Step"] == "s" and prov["Inputs"] == ["a.nii.gz"]
    assert prov["ConfigDigest"] == io.config_digest({"x": 1})
    assert "Created" not in prov  # reruns stay byte-identical


def test_input_data_error_names_file():
    err = io.InputDataError("/d/sub-01_bold.nii.gz", "BOLD is 3D")
    assert str(err) == "/d/sub-01_bold.nii.gz: BOLD is 3D"


def test_atomic_writes_respect_the_umask(tmp_path):
    """Final files get the mode a plain open() would give (not mkstemp's 0600)."""
    import os

    from brainharmony.io import write_json, write_text

    old = os.umask(0o022)
    try:
        a = write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        b = write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert a.stat().st_mode & 0o777 == 0o644
    assert b.stat().st_mode & 0o777 == 0o600


def test_read_json_names_the_file_of_a_malformed_or_non_object_document(tmp_path):
    from brainharmony.io import InputDataError, read_json

    good = tmp_path / "good.json"
    good.write_text('{"a": 1}')
    assert read_json(good) == {"a": 1}
    for name, text, problem in (
        ("bad.json", "{", "not valid JSON"),
        ("list.json", "[1]", "object"),
    ):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(InputDataError, match=problem) as info:
            read_json(path)
        assert str(path) in str(info.value)


def test_write_nifti_huffman_only_keeps_the_image(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3000, size=(6, 5, 4, 3)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    plain, fast, again = tmp_path / "p.nii.gz", tmp_path / "f.nii.gz", tmp_path / "g.nii.gz"
    io.write_nifti(plain, img, compresslevel=1)
    io.write_nifti(fast, img, compresslevel=1, huffman_only=True)
    io.write_nifti(again, img, compresslevel=1, huffman_only=True)
    assert fast.read_bytes() == again.read_bytes()
    assert fast.read_bytes() != plain.read_bytes()
    assert gzip.decompress(fast.read_bytes()) == gzip.decompress(plain.read_bytes())
    loaded = nib.load(fast)
    np.testing.assert_array_equal(np.asanyarray(loaded.dataobj), data)
    np.testing.assert_array_equal(loaded.affine, img.affine)
