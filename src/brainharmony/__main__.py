"""``python -m brainharmony``: the package command line."""

import sys

from brainharmony.cli import main

sys.exit(main())
