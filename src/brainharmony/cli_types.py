"""Argument types shared by the command lines that build output paths.

A subject, session, task or run value becomes part of an output file or folder name,
so it must be a BIDS label (ASCII letters and digits) or index (digits): ``../x``,
``re st`` or a newline are refused by argparse (exit status 2, the message naming the
option and the value) before anything is written. An output folder that exists as a
file is refused the same way.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from brainharmony.bids_names import label_problem

#: Values that mean "no such entity" where an option allows it (``--session n/a``).
NOT_APPLICABLE = ("", "n/a", "none", "None")

_WHAT = {"sub": "subject", "ses": "session", "task": "task", "run": "run", "acq": "acquisition"}


def bids_label(key: str, *, optional: bool = False) -> Callable[[str], str]:
    """An argparse ``type`` that accepts only a valid BIDS value of entity ``key``.

    Parameters
    ----------
    key : str
        Short entity key (``"sub"``, ``"ses"``, ``"task"``, ``"run"``): ``run`` takes an
        index (digits), the others a label (letters and digits).
    optional : bool
        Also accept the "none" spellings of :data:`NOT_APPLICABLE` (returned unchanged).
    """

    def check(text: str) -> str:
        if optional and text in NOT_APPLICABLE:
            return text
        problem = label_problem(key, text)
        if problem is not None:
            kind = "digits only" if key == "run" else "ASCII letters and digits only"
            raise argparse.ArgumentTypeError(
                f"{problem}: a {_WHAT.get(key, key)} value becomes part of output file "
                f"names and must be {kind}"
            )
        return text

    check.__name__ = f"{_WHAT.get(key, key)} label"  # argparse names the type in errors
    return check


def output_dir(text: str) -> Path:
    """An argparse ``type`` for an output folder: absent (created later) or a folder.

    An existing file (or anything else that is not a folder) at that path is refused.
    """
    if not text:
        raise argparse.ArgumentTypeError("an empty path is not an output folder")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: exists and is not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {parent} exists and is not a folder")
            break
    return path
