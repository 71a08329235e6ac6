"""Fixtures shared by the unit tests: one tiny demo dataset per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Seed of the shared tiny demo (tests that regenerate parts of it use the same one).
TINY_SEED = 20251122


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` demo preset (demoA, demoB and their truth), generated once.

    Returns the output folder: ``<out>/demoA``, ``<out>/demoA-truth``, ``<out>/demoB``,
    ``<out>/demoB-truth``. Treat it as read-only: other tests share it.
    """
    from brainharmony.demo import generate_demo

    out = tmp_path_factory.mktemp("tiny_demo")
    generate_demo(out, preset="tiny", seed=TINY_SEED)
    return out


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op torch thread per unit test (restored afterwards).

    The tiny models of the unit tests gain nothing from a second thread, and on a loaded
    2-core machine oversubscription made single tests 10-50x slower. Tests that measure
    thread behaviour set their own count.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
