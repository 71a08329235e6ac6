"""``brainharmony templates``: write the anatomy template resource files.

The templates themselves are :mod:`brainharmony.anat.templates`; ``brainharmony anat
--template-dir`` reads the files written here.
"""

from __future__ import annotations

import argparse
import logging

from brainharmony.anat.templates import DEFAULT_TEMPLATE, RESOLUTIONS_MM, TEMPLATES, write_resource
from brainharmony.cli_types import output_dir

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``brainharmony templates``: write the template resource files."""
    parser.add_argument("--out-dir", type=output_dir, required=True, help="resources/templates")
    parser.add_argument("--template", choices=TEMPLATES, default=DEFAULT_TEMPLATE)
    parser.add_argument(
        "--resolutions", type=int, nargs="+", choices=RESOLUTIONS_MM, default=[1, 2]
    )


def run(args: argparse.Namespace) -> int:
    """Write the requested resolutions of the template; 0 on success."""
    for res in sorted(set(args.resolutions)):
        logger.info("wrote %s", write_resource(args.out_dir, args.template, res))
    return 0
