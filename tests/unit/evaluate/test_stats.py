"""The corrected resampled t-test and the paired comparisons of the tables."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from brainharmony.evaluate.stats import corrected_resampled_ttest, paired_tests


def test_corrected_t_by_hand():
    d = np.array([0.05, 0.02, 0.08, 0.01, 0.04, 0.06, 0.03, 0.05, 0.02, 0.04])
    ratio = 0.25
    res = corrected_resampled_ttest(d, ratio)
    j = d.size
    t = d.mean() / np.sqrt((1 / j + ratio) * d.var(ddof=1))
    assert res.t == pytest.approx(t)
    assert res.df == j - 1
    assert res.p == pytest.approx(2 * stats.t.sf(abs(t), j - 1))
    # The correction only makes the test more conservative than the plain paired t-test.
    plain = stats.ttest_1samp(d, 0.0)
    assert res.p > plain.pvalue
    assert abs(res.t) < abs(plain.statistic)


def test_degenerate_cases():
    assert corrected_resampled_ttest([0.0, 0.0, 0.0], 0.2).p == 1.0
    res = corrected_resampled_ttest([0.1, 0.1, 0.1], 0.2)
    assert res.p == 0.0 and np.isinf(res.t)
    assert np.isnan(corrected_resampled_ttest([0.3], 0.2).p)
    with pytest.raises(ValueError, match="test_train_ratio"):
        corrected_resampled_ttest([0.1, 0.2], 0.0)


def test_paired_tests_orientation_reference_choice_and_lower_is_better():
    rng = np.random.default_rng(0)
    rows = []
    for seed in (0, 1):
        for fold in range(5):
            base = 10 + rng.normal(0, 0.3)
            for model, offset in (
                ("null_model", 5.0),
                ("fc_ridge", 1.0),
                ("fc_kernel_ridge", 2.0),
                ("probe_bh_f", 0.0),
            ):
                rows.append(
                    {
                        "dataset": "d",
                        "task": "age",
                        "model": model,
                        "seed": seed,
                        "fold": fold,
                        "n_subjects": 8,
                        "metric": "mae",
                        "value": base + offset + rng.normal(0, 0.1),
                    }
                )
    per_fold = pd.DataFrame(rows)
    tests = paired_tests(
        per_fold,
        {"regression": "mae", "classification": "balanced_accuracy"},
        {("d", "age"): "regression"},
        ["null_model", "fc_ridge", "fc_kernel_ridge"],
        {("d", "age"): 0.3},
    )
    best = tests.loc[tests["role"] == "best_baseline"]
    assert set(best["reference"]) == {"fc_ridge"}  # lowest MAE among baselines
    assert list(best["model"]) == ["probe_bh_f"]  # baselines are not tested against it
    # MAE: lower is better, so the difference is oriented "positive = model better".
    assert best["mean_diff"].iloc[0] == pytest.approx(1.0, abs=0.1)
    assert best["p"].iloc[0] < 0.05
    vs_null = tests.loc[tests["role"] == "vs_null"].set_index("model")
    assert set(vs_null.index) == {"fc_ridge", "fc_kernel_ridge", "probe_bh_f"}
    assert (vs_null["mean_diff"] > 0).all() and (vs_null["n"] == 10).all()
    # The roles survive a CSV round trip with pandas' defaults (tests.csv is a contract).
    import io

    again = pd.read_csv(io.StringIO(tests.to_csv(index=False)))
    assert again["role"].notna().all() and set(again["role"]) == {"vs_null", "best_baseline"}
