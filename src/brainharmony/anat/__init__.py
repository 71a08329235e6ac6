"""Anatomy stage: T1w -> template space (MNI152), brain mask, transforms, model-ready box.

Modules: :mod:`.settings` (the config block), :mod:`.templates` (template + mask),
:mod:`.images` (reading, checks, conversions), :mod:`.bias` (N4), :mod:`.skullstrip`
(head and brain masks), :mod:`.register` (whole head to brain template),
:mod:`.model_input` (model box), :mod:`.qc` (figure), :mod:`.derivatives` (outputs),
:mod:`.native` and :mod:`.nipype_backends` (backends), :mod:`.pipeline`
(``run_anat``: one T1w, any backend), :mod:`.phantom` (synthetic head for tests and
benchmarks); the commands ``brainharmony anat`` and ``templates`` are
:mod:`brainharmony.pipelines.anat` and :mod:`brainharmony.pipelines.templates`.
"""
