"""Output writers of the functional stage."""

import numpy as np
import pandas as pd
import pytest

from brainharmony.func.outputs import write_series_tsv
from brainharmony.io import write_tsv


@pytest.mark.parametrize("n_rows", [0, 1, 40])
def test_series_tsv_has_the_bytes_of_pandas(tmp_path, n_rows):
    rng = np.random.default_rng(n_rows)
    x = rng.normal(size=(n_rows, 12)) * 10.0 ** rng.integers(-9, 5, size=(n_rows, 12))
    if n_rows > 1:
        x[1] = np.nan  # a censored frame
        x[:, 3] = np.nan  # a parcel without voxels
        x[0, 0], x[0, 1], x[-1, 2] = -0.0, 1e300, 123456789.0
    names = [f"7Networks_LH_Vis_{i}" for i in range(12)]
    ours = write_series_tsv(tmp_path / "ours.tsv", x, names)
    ref = write_tsv(tmp_path / "ref.tsv", pd.DataFrame(x, columns=names), float_format="%.8g")
    assert ours.read_bytes() == ref.read_bytes()


def test_series_tsv_with_names_needing_quotes_goes_through_pandas(tmp_path):
    x = np.arange(6, dtype=float).reshape(3, 2)
    out = write_series_tsv(tmp_path / "q.tsv", x, ['a"b', "c\td"])
    assert out.read_text().splitlines()[0] == '"a""b"\t"c\td"'
