"""The command layer: each module is one ``brainharmony <command>`` whose work spans
several stages (``add_arguments(parser)`` + ``run(args) -> int``), plus the
orchestration of the model pipelines.

Nothing below this layer imports it (the import-linter contract in ``pyproject.toml``).
"""
