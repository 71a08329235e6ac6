"""Functional MRI stage: from raw BOLD runs to denoised Schaefer-400 ROI time series.

Modules (each small and importable on its own; heavy dependencies load lazily):

* :mod:`~brainharmony.func.slicetime` - slice-timing correction (Fourier or cubic).
* :mod:`~brainharmony.func.motion` - batched rigid head-motion estimation (numpy; torch on
  a GPU).
* :mod:`~brainharmony.func.register` - BOLD -> T1w rigid registration and the single
  native -> template resampling.
* :mod:`~brainharmony.func.confounds` - fMRIPrep-named confound regressors.
* :mod:`~brainharmony.func.denoise` - censoring, interpolation, band-pass, regression.
* :mod:`~brainharmony.func.parcellate` - one-pass parcel means.
* :mod:`~brainharmony.func.qc` - FD trace, carpet plot, FC matrix figures.
* :mod:`~brainharmony.func.pipeline` - the native end-to-end run.
* :mod:`~brainharmony.func.fmriprep` - fMRIPrep front end and derivatives reader.
* :mod:`~brainharmony.func.atlas_resource` - the atlas as a resource file.
* :mod:`~brainharmony.func.naming`, :mod:`~brainharmony.func.outputs` - derivative
  file names and writers.
* :mod:`brainharmony.planning.func` (not here: planning sits above the stages) - what
  ``workflow/rules/func.smk`` needs.
* :mod:`~brainharmony.func.fmriprep_fixture` - fMRIPrep-shaped test fixtures.
* :mod:`brainharmony.pipelines.func` (not here) - ``brainharmony func ...`` sub-commands.

See ``docs/func.md`` for the order of operations and why.
"""
