"""A command's option defaults are its settings dataclass's (read from it, not restated)."""

from __future__ import annotations

import argparse
import dataclasses

from brainharmony import cli
from brainharmony.anat.settings import AnatSettings
from brainharmony.evaluate.settings import EvalSettings, TaskSpec
from brainharmony.func.denoise import DenoiseSettings
from brainharmony.func.fmriprep import FmriprepSettings
from brainharmony.func.pipeline import NativeSettings
from brainharmony.pipelines import anat, func, ingest, splits
from brainharmony.scan_pairing import CheckSettings


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_every_command_lives_in_pipelines():
    assert all(module.startswith("brainharmony.pipelines.") for module, _ in cli.COMMANDS.values())


def test_anat_defaults_are_anat_settings():
    args = _parse(anat, ["--t1w", "t", "--out-dir", "o", "--subject", "01"])
    assert anat.settings_from_args(args) == AnatSettings()


def test_func_defaults_are_the_settings_dataclasses():
    run = ["--subject", "01", "--out-dir", "o", "--atlas", "a", "--atlas-labels", "l"]
    native = _parse(func, ["native", "--bold", "b", "--t1w-to-template", "m", *run])
    assert func._denoise_settings(native) == DenoiseSettings()
    for field in ("coreg", "coreg_min_dice", "coreg_max_bbr_cost", "coreg_min_nmi", "stc_method",
                  "stc_ref", "min_parcel_voxels", "scale"):  # fmt: skip
        assert getattr(native, field) == getattr(NativeSettings(), field), field
    derivatives = _parse(func, ["derivatives", "--fmriprep-dir", "f", *run])
    assert func._denoise_settings(derivatives) == DenoiseSettings()
    fmriprep = _parse(
        func,
        ["fmriprep", "--bids-dir", "b", "--fmriprep-dir", "f", "--work-dir", "w",
         "--participant-label", "01"],
    )  # fmt: skip
    assert fmriprep.runner == FmriprepSettings.runner
    assert fmriprep.nthreads == FmriprepSettings.nthreads


def test_ingest_defaults_are_check_settings():
    args = _parse(ingest, ["--bids-dir", "b", "--dataset", "d", "--out-dir", "o"])
    assert tuple(args.tr_range) == CheckSettings.tr_range
    for field in dataclasses.fields(CheckSettings):
        if field.name != "tr_range":
            assert getattr(args, field.name) == field.default, field.name


def test_splits_defaults_are_the_evaluation_settings():
    args = _parse(
        splits, ["--table", "t", "--target", "y", "--task", "regression", "--out-dir", "o"]
    )
    assert (args.n_folds, args.val_fraction, args.n_bins, args.seed) == (
        EvalSettings.n_folds,
        EvalSettings.val_fraction,
        EvalSettings.n_bins,
        EvalSettings.seeds[0],
    )
    assert args.site_mode == TaskSpec.site_mode
