"""``brainharmony validate-config``: validate a workflow config file.

The schema check and the defaults are :mod:`brainharmony.config`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from brainharmony.config import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML configuration file")
    parser.add_argument(
        "--print", action="store_true", help="print the configuration with defaults filled in"
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(err)
        return 1
    if args.print:
        print(yaml.safe_dump(config, sort_keys=False))
    else:
        print(f"{args.config}: valid")
    return 0
