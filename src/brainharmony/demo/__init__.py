"""Simulated demo BIDS datasets with planted, documented ground truth.

Re-exports :func:`generate_demo` and :func:`simulate_cohort`, imported on first use so
that ``brainharmony demo --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["generate_demo", "simulate_cohort"]

_EXPORTS = {
    "generate_demo": "brainharmony.demo.generate",
    "simulate_cohort": "brainharmony.demo.dynamics",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'brainharmony.demo' has no attribute {name!r}")
