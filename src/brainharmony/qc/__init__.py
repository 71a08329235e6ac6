"""Group quality control: one table per dataset and one HTML page per subject.

Modules: :mod:`.group` (the table, built from what the ingest, anatomy and functional
stages wrote), :mod:`.pages` (the subject pages); the command ``brainharmony group-qc``
is :mod:`brainharmony.pipelines.group_qc`. The report (:mod:`brainharmony.evaluate.report`)
reads the table and links the pages; nothing here imports the report. See
``docs/evaluation.md`` ("Group QC").
"""
