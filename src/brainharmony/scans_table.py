"""The fixed columns of ingest's ``scans.tsv``, and the phenotype names they rule out.

Below both :mod:`brainharmony.ingest` (which writes the table and re-exports these
names) and :mod:`brainharmony.config` (whose validation refuses a phenotype named like
a fixed column), so the configuration code does not import the ingest stage.
"""

from __future__ import annotations

#: Fixed columns of scans.tsv (phenotype columns follow), with their descriptions.
SCAN_COLUMNS: dict[str, str] = {
    "dataset": "Dataset name from the configuration.",
    "subject": "Subject label, without the 'sub-' prefix.",
    "session": "Session label without the 'ses-' prefix; n/a when the dataset has none.",
    "run": "Run index as written in the file name, without 'run-'; n/a when absent.",
    "t1w": "Absolute path of the T1w image paired with this run.",
    "t1w_session": "Session of the paired T1w (n/a when the dataset has no sessions).",
    "bold": "Absolute path of the BOLD image.",
    "bold_sidecar": (
        "Absolute path of the most specific JSON sidecar that applies to the BOLD "
        "(BIDS inheritance; other sidecars may add fields); n/a when there is none."
    ),
    "tr": "Repetition time in seconds, from the sidecar RepetitionTime.",
    "n_volumes": "Number of volumes (4th image dimension).",
    "duration_s": "Run duration in seconds (tr x n_volumes).",
    "n_slices": "Number of slices along the slice-encoding axis.",
    "has_slice_timing": "True when SliceTiming is present and passed the sanity checks.",
    "site": "Acquisition site: the site column of participants.tsv, else the dataset name.",
}
#: The names of the fixed scans.tsv columns: a phenotype may not be named like one
#: (the config schema and :func:`brainharmony.ingest.ingest_dataset` both refuse it).
SCANS_COLUMNS: frozenset[str] = frozenset(SCAN_COLUMNS)


def phenotype_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a phenotype column (it names a fixed scans.tsv column), or None."""
    if name in SCANS_COLUMNS:
        return (
            f"phenotype {name!r} clashes with a scans.tsv column: scans.tsv already has "
            f"the fixed column {name!r} ({', '.join(SCAN_COLUMNS)}); rename the phenotype"
        )
    return None
