"""The lazy model registry."""

from __future__ import annotations

import sys

import pytest

from brainharmony.models import registry


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(ValueError, match="unknown model kind 'nope'") as info:
        registry.build_model("nope", {})
    for kind in ("bh_s", "bh_f", "brain_jepa", "brainlm", "harmonizer", "lmae", "predictor"):
        assert kind in str(info.value)


def test_registry_is_lazy_and_builds_bh_s() -> None:
    assert set(registry.KINDS) == {
        "bh_s", "bh_f", "brain_jepa", "brainlm", "harmonizer", "lmae", "predictor"
    }  # fmt: skip
    model = registry.build_model(
        "bh_s",
        {
            "img_size": [32, 32, 32],
            "patch": 16,
            "dim": 32,
            "depth": 1,
            "heads": 4,
            "decoder_dim": 32,
            "decoder_depth": 1,
            "decoder_heads": 4,
        },
    )
    assert "brainharmony.models.mae3d" in sys.modules
    assert sum(p.numel() for p in model.parameters()) > 0
