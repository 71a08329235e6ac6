"""The command layer: each module is one ``brainharmony <command>``
(``add_arguments(parser)`` + ``run(args) -> int``: argument parsing, the calls into the
library, messages and exit status), plus the orchestration of the model pipelines
(``predictor_cv``, ``embed``). Option defaults are read from the stages' settings
dataclasses, not restated.

Nothing below this layer imports it (the import-linter contract in ``pyproject.toml``).
"""
