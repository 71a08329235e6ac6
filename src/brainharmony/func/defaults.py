"""Defaults of the functional stage that planning, the CLI and the numerics share.

A leaf module (no imports of the package, no numpy), so the Snakefile's planning and the
registration code can both read it without importing each other (also why
:func:`canonical_coreg` is here).
"""

from __future__ import annotations

#: Default confound strategy (a key of ``brainharmony.func.denoise.STRATEGIES``; docs/func.md
#: says why).
DEFAULT_STRATEGY = "18P"
#: BOLD -> T1w coregistration methods (``func.coreg``) and the default; ``rigid`` (the
#: former name of the mutual-information registration) is accepted for ``mi``. The QC
#: gate's thresholds (``func.coreg_min_dice``, ``func.coreg_max_bbr_cost``,
#: ``func.coreg_min_nmi``); measured values behind them are in docs/func.md.
COREG_METHODS: tuple[str, ...] = ("bbr", "mi", "header")
COREG_ALIASES: dict[str, str] = {"rigid": "mi"}
DEFAULT_COREG = "bbr"
COREG_MIN_DICE = 0.75
COREG_MAX_BBR_COST = 0.8
COREG_MIN_NMI = 1.05
#: Kept runs of fewer contiguous frames are censored too (``func.min_segment``).
MIN_SEGMENT = 5


def canonical_coreg(method: str) -> str:
    """A ``func.coreg`` value by its canonical name (``rigid`` -> ``mi``).

    Raises
    ------
    ValueError
        An unknown method.
    """
    method = COREG_ALIASES.get(method, method)
    if method not in COREG_METHODS:
        accepted = (*COREG_METHODS, *COREG_ALIASES)
        raise ValueError(f"func.coreg must be one of {accepted}, got {method!r}")
    return method
