"""Stand-ins for the FSL and FreeSurfer executables the anat backends call.

Each stand-in is this file run under a real tool's name (``install_standins`` writes a
small launcher per name). It first parses its argv the way the real tool does, from the
option lists below, each written from the tool's own source and cited next to it; an
option the real tool does not know, a missing option value or a missing required
argument ends the run with a usage message and the real tool's exit status, before
anything is written. A command line the real tool accepts is appended to the JSON-lines
log named by ``ANAT_STANDIN_LOG`` (rejected ones too, marked ``"accepted": false``) and
answered with plausible outputs: reoriented copies, a brain mask, and a registration
that is the true pose ``ANAT_STANDIN_WORLD`` (a RAS world mapping, T1w -> template)
written in the tool's own convention (FLIRT scaled-voxel matrix, FreeSurfer
voxel-to-voxel LTA as ``mri_coreg`` writes it).

Versions modelled: FSL 6.0.0 (the source tree mirrored at
https://github.com/muschellij2/FSL6.0.0, commit 686dc41c) and FreeSurfer 7.3/7.4
(https://github.com/freesurfer/freesurfer; files and commits named per tool).
Only the parsing rules are reproduced, not the tools' code.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Executables that have a stand-in, in the order the backends call them.
TOOLS = (
    "fslreorient2std",
    "bet",
    "flirt",
    "fnirt",
    "applywarp",
    "invwarp",
    "mri_convert",
    "mri_synthstrip",
    "mri_coreg",
)


class UsageError(Exception):
    """A command line the real tool rejects.

    Parameters
    ----------
    message : str
        What the stand-in prints on stderr.
    status : int
        The exit status the real tool ends with (``exit(-1)`` in C is 255).
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Parsed:
    """A parsed command line.

    Attributes
    ----------
    options : dict of str to list of str
        Canonical option name -> its values (``[]`` for a flag); the last occurrence wins.
    positional : list of str
        Operands that are not options (input/output names where the tool takes them).
    """

    options: dict[str, list[str]] = field(default_factory=dict)
    positional: list[str] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        """First value of option ``name``, or None when it was not given."""
        values = self.options.get(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        """Whether option ``name`` was given."""
        return name in self.options


def _take(argv: Sequence[str], i: int, count: int, error: UsageError) -> list[str]:
    """The ``count`` words after ``argv[i]``, or raise ``error`` when there are fewer."""
    values = list(argv[i + 1 : i + 1 + count])
    if len(values) < count:
        raise error
    return values


def _aliases(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Map every spelling in ``{canonical: (alias, ...)}`` to its canonical name."""
    out = {}
    for canonical, names in table.items():
        out[canonical] = canonical
        for name in names:
            out[name] = canonical
    return out


# --- FSL -----------------------------------------------------------------------------

FSL_SOURCE = "https://github.com/muschellij2/FSL6.0.0 (FSL 6.0.0 source), commit 686dc41c"

#: ``fslreorient2std <input_image> [output_image]`` takes no options.
#: Source: src/avwutils/fslreorient2std (FSL 6.0.0), a shell script that reads ``$1``
#: and ``$2`` only. The stand-in also rejects any word starting with ``-`` and a third
#: operand: the script would take ``-x`` as the input image name (exit 2, "Could not find
#: image") and silently ignore trailing words, so a stray option must not pass here.
FSLREORIENT2STD_SOURCE = f"{FSL_SOURCE}: src/avwutils/fslreorient2std"


def parse_fslreorient2std(argv: Sequence[str]) -> Parsed:
    """Parse ``fslreorient2std`` operands (1 or 2, no options)."""
    usage = "Usage: fslreorient2std <input_image> [output_image]"
    if not argv:
        raise UsageError(usage, 1)
    for word in argv:
        if word.startswith("-"):
            raise UsageError(f"ERROR: Could not find image {word}\n{usage}", 2)
    if len(argv) > 2:
        raise UsageError(f"extra operands {list(argv[2:])}\n{usage}", 1)
    return Parsed(positional=list(argv))


#: ``bet <input> <output> [options]``: option -> number of values.
#: Source: src/bet2/bet (FSL 6.0.0), the wrapper script's option loop (``-o -m -s -n -t
#: -e`` pass through to bet2; ``-f -g -r`` take one value, ``-c`` three; ``-R -S -Z -F -A
#: -B`` select a variation, ``-A2`` takes the T2 image; ``-v -d``). Anything else,
#: ``-h`` included, falls to ``Usage`` (exit 1); so does a missing value or operand.
BET_SOURCE = f"{FSL_SOURCE}: src/bet2/bet"
BET_OPTIONS: dict[str, int] = {
    "-o": 0,
    "-m": 0,
    "-s": 0,
    "-n": 0,
    "-t": 0,
    "-e": 0,
    "-f": 1,
    "-g": 1,
    "-r": 1,
    "-c": 3,
    "-R": 0,
    "-S": 0,
    "-Z": 0,
    "-F": 0,
    "-A": 0,
    "-A2": 1,
    "-B": 0,
    "-v": 0,
    "-d": 0,
}


def parse_bet(argv: Sequence[str]) -> Parsed:
    """Parse a ``bet`` command line: input and output first, then options."""
    usage = UsageError("Usage:    bet <input> <output> [options]", 1)
    if len(argv) < 2 or not argv[1]:
        raise usage
    if argv[0].startswith("-"):
        raise UsageError(f"Error: input image {argv[0]} not valid", 1)
    parsed = Parsed(positional=list(argv[:2]))
    i = 2
    while i < len(argv):
        name = argv[i]
        if name not in BET_OPTIONS:
            raise UsageError(f"bet: unknown option {name}\n{usage}", 1)
        parsed.options[name] = _take(argv, i, BET_OPTIONS[name], usage)
        i += 1 + BET_OPTIONS[name]
    return parsed


#: FLIRT: option -> number of values, and the accepted words of the categorical ones.
#: Source: src/flirt/globaloptions.cc (FSL 6.0.0), ``globaloptions::parse_command_line``:
#: every argument must start with ``-`` ("Unrecognised option", exit -1 = 255); options
#: with values check that they are there ("Lacking argument to option", 255); ``-in``
#: and ``-ref`` are required (exit 2). ``-displayinit`` is printed by the usage text but
#: not parsed (the parser knows ``-printinit``), so it is rejected, as FLIRT does.
FLIRT_SOURCE = f"{FSL_SOURCE}: src/flirt/globaloptions.cc"
FLIRT_OPTIONS: dict[str, int] = {
    **dict.fromkeys(
        (
            "-help",
            "-version",
            "-applyxfm",
            "-applynonisoxfm",
            "-i",
            "-nosearch",
            "-nosave",
            "-noresample",
            "-forcescaling",
            "-2D",
            "-noclamp",
            "-noresampblur",
            "-usesqform",
            "-printinit",
            "-debugsave",
            "-debug",
            "-v",
        ),
        0,
    ),
    **dict.fromkeys(
        (
            "-o",
            "-out",
            "-ref",
            "-in",
            "-init",
            "-schedule",
            "-refweight",
            "-inweight",
            "-wmseg",
            "-fieldmap",
            "-fieldmapmask",
            "-wmcoords",
            "-wmnorms",
            "-omat",
            "-bins",
            "-dof",
            "-sincwidth",
            "-paddingsize",
            "-applyisoxfm",
            "-basescale",
            "-minsampling",
            "-setbackground",
            "-coarsesearch",
            "-finesearch",
            "-echospacing",
            "-pedir",
            "-bbrtype",
            "-bbrslope",
            "-verbose",
            "-datatype",
            "-cost",
            "-searchcost",
            "-interp",
            "-sincwindow",
            "-anglerep",
        ),
        1,
    ),
    **dict.fromkeys(("-searchrx", "-searchry", "-searchrz"), 2),
}
_FLIRT_COSTS = ("mutualinfo", "corratio", "normcorr", "normmi", "leastsq", "labeldiff", "bbr")
FLIRT_CHOICES: dict[str, tuple[str, ...]] = {
    "-cost": _FLIRT_COSTS,
    "-searchcost": _FLIRT_COSTS,
    "-datatype": ("double", "float", "int", "short", "char"),
    "-interp": ("trilinear", "nearestneighbour", "sinc", "spline"),
    "-sincwindow": ("rectangular", "hanning", "blackman"),
    "-anglerep": ("quaternion", "euler"),
}


def parse_flirt(argv: Sequence[str]) -> Parsed:
    """Parse a ``flirt`` command line (single-dash options only)."""
    usage = "Usage: flirt [options] -in <inputvol> -ref <refvol> -out <outputvol>"
    if not argv:
        raise UsageError(usage, 1)
    parsed = Parsed()
    i = 0
    while i < len(argv):
        name = argv[i]
        if not name:
            i += 1
            continue
        if not name.startswith("-"):
            raise UsageError(f"Unrecognised option {name[0]}", 255)
        if name in ("-help", "-version"):
            raise UsageError(usage, 0)
        count = FLIRT_OPTIONS.get(name, 1)  # FLIRT checks for a value before the name
        lacking = UsageError(f"Lacking argument to option {name}", 255)
        values = _take(argv, i, count, lacking)
        if name not in FLIRT_OPTIONS:
            raise UsageError(f"Unrecognised option {name}", 255)
        if name in FLIRT_CHOICES and values[0] not in FLIRT_CHOICES[name]:
            raise UsageError(f"Unrecognised argument to {name}: {values[0]}", 255)
        parsed.options[{"-o": "-out"}.get(name, name)] = values
        i += 1 + count
    for required, what in (("-in", "Input"), ("-ref", "Reference")):
        if not parsed.has(required):
            raise UsageError(f"ERROR:: {what} volume filename not found\n\n{usage}", 2)
    return parsed


@dataclass(frozen=True)
class FslOptions:
    """Options of an FSL tool built on ``Utilities::OptionParser`` (utils/options).

    Attributes
    ----------
    tool : str
    options : dict of str to int
        Canonical (long) name -> 0 (flag) or 1 (takes a value).
    short : dict of str to str
        Short spelling (``-i``) -> canonical name (``--in``).
    compulsory : tuple of str
        Canonical names the tool requires.
    source : str
        Where the option declarations were read.
    """

    tool: str
    options: dict[str, int]
    short: dict[str, str]
    compulsory: tuple[str, ...]
    source: str

    def parse(self, argv: Sequence[str]) -> Parsed:
        """Parse ``argv`` as ``OptionParser::parse_command_line`` does.

        Long options take their value after ``=`` only (``--in=x``; ``--in x`` is
        "Missing non-optional argument"); short ones take the next word, and several
        short flags may share one dash. Parsing stops at the first word without a dash;
        the tools then reject it ("Unknown input"). Every error ends with exit 1.
        """
        usage = f"Usage: {self.tool} (see {self.tool} --help)"
        if not argv:
            raise UsageError(usage, 1)
        parsed = Parsed()
        i = 0
        while i < len(argv):
            word = argv[i]
            if not word.startswith("-"):
                raise UsageError(f"Unknown input: {word}", 1)
            if word.startswith("--"):
                name, eq, value = word.partition("=")
                if name not in self.options:
                    raise UsageError(f"{usage}\n\n{name}: Option doesn't exist", 1)
                if self.options[name] and not (eq and value):
                    raise UsageError(f"{usage}\n\n{name}: Missing non-optional argument", 1)
                parsed.options[name] = [value] if self.options[name] else []
                i += 1
                continue
            valpos = i + 1
            for letter in word[1:]:
                name = self.short.get(f"-{letter}")
                if name is None:
                    raise UsageError(f"{usage}\n\n-{letter}: Option doesn't exist", 1)
                if self.options[name]:
                    if valpos >= len(argv) or not argv[valpos]:
                        raise UsageError(f"{usage}\n\n-{letter}: Missing non-optional argument", 1)
                    parsed.options[name] = [argv[valpos]]
                    valpos += 1
                else:
                    parsed.options[name] = []
            i = valpos
        if parsed.has("--help"):
            raise UsageError(usage, 1)
        missing = [name for name in self.compulsory if not parsed.has(name)]
        if missing:
            raise UsageError(f"{usage}\n\ncompulsory arguments missing: {missing}", 1)
        return parsed


#: Source: src/fnirt/fnirtfns.cpp (FSL 6.0.0), ``parse_fnirt_command_line``: the options
#: added to the parser (``--cf``, ``--basis`` and ``--biasregmod`` are declared but not
#: added, so FNIRT rejects them); ``--ref`` and ``--in`` are compulsory.
FNIRT = FslOptions(
    tool="fnirt",
    options={
        **dict.fromkeys(("--help", "--verbose"), 0),
        **dict.fromkeys(
            (
                "--ref",
                "--in",
                "--aff",
                "--inwarp",
                "--intin",
                "--cout",
                "--iout",
                "--fout",
                "--jout",
                "--refout",
                "--intout",
                "--logout",
                "--config",
                "--refmask",
                "--inmask",
                "--refpointlist",
                "--inpointlist",
                "--applyrefmask",
                "--applyinmask",
                "--imprefm",
                "--impinm",
                "--imprefval",
                "--impinval",
                "--minmet",
                "--miter",
                "--subsamp",
                "--warpres",
                "--splineorder",
                "--infwhm",
                "--reffwhm",
                "--regmod",
                "--lambda",
                "--ssqlambda",
                "--pointlistlambda",
                "--jacrange",
                "--refderiv",
                "--intmod",
                "--intorder",
                "--biasres",
                "--biaslambda",
                "--estint",
                "--numprec",
                "--interp",
                "--debug",
            ),
            1,
        ),
    },
    short={"-h": "--help", "-v": "--verbose"},
    compulsory=("--ref", "--in"),
    source=f"{FSL_SOURCE}: src/fnirt/fnirtfns.cpp",
)

#: Source: src/fugue/applywarp.cc (FSL 6.0.0), the ``Option`` declarations and
#: ``main``; ``-i/--in``, ``-r/--ref`` and ``-o/--out`` are compulsory.
APPLYWARP = FslOptions(
    tool="applywarp",
    options={
        **dict.fromkeys(("--verbose", "--help", "--abs", "--rel", "--super"), 0),
        **dict.fromkeys(
            (
                "--interp",
                "--in",
                "--ref",
                "--out",
                "--superlevel",
                "--datatype",
                "--warp",
                "--mask",
                "--premat",
                "--postmat",
                "--paddingsize",
            ),
            1,
        ),
    },
    short={
        "-v": "--verbose",
        "-h": "--help",
        "-i": "--in",
        "-r": "--ref",
        "-o": "--out",
        "-s": "--super",
        "-d": "--datatype",
        "-w": "--warp",
        "-m": "--mask",
    },
    compulsory=("--in", "--ref", "--out"),
    source=f"{FSL_SOURCE}: src/fugue/applywarp.cc",
)

#: Source: src/fugue/invwarp.cc (FSL 6.0.0), the ``Option`` declarations;
#: ``-w/--warp``, ``-o/--out`` and ``-r/--ref`` are compulsory.
INVWARP = FslOptions(
    tool="invwarp",
    options={
        **dict.fromkeys(("--verbose", "--help", "--debug", "--abs", "--rel", "--noconstraint"), 0),
        **dict.fromkeys(
            ("--niter", "--regularise", "--jmin", "--jmax", "--initwarp", "--ref", "--out"), 1
        ),
        "--warp": 1,
    },
    short={
        "-v": "--verbose",
        "-h": "--help",
        "-n": "--niter",
        "-r": "--ref",
        "-o": "--out",
        "-w": "--warp",
    },
    compulsory=("--warp", "--out", "--ref"),
    source=f"{FSL_SOURCE}: src/fugue/invwarp.cc",
)


# --- FreeSurfer ----------------------------------------------------------------------

FREESURFER_REPO = "https://github.com/freesurfer/freesurfer"

#: ``mri_synthstrip`` (argparse): option -> (spellings, number of values).
#: Source: mri_synthstrip/mri_synthstrip in freesurfer/freesurfer, commit f6f28e0e (the
#: script FreeSurfer 7.3/7.4 ship): ``-i/--image`` (required), ``-o/--out``,
#: ``-m/--mask``, ``-g/--gpu``, ``-b/--border`` (int), ``--no-csf``, ``--model``, plus
#: argparse's ``-h/--help``. There is no ``-n``, and no ``-t/--threads`` or ``-d/--sdt``
#: (later standalone SynthStrip releases add those). argparse errors exit 2; no
#: arguments or ``-h`` print the help and exit 1; neither ``-o`` nor ``-m`` is fatal
#: (exit 1).
SYNTHSTRIP_SOURCE = f"{FREESURFER_REPO}/blob/f6f28e0e/mri_synthstrip/mri_synthstrip"
SYNTHSTRIP_OPTIONS: dict[str, tuple[tuple[str, ...], int]] = {
    "--image": (("-i", "--image"), 1),
    "--out": (("-o", "--out"), 1),
    "--mask": (("-m", "--mask"), 1),
    "--gpu": (("-g", "--gpu"), 0),
    "--border": (("-b", "--border"), 1),
    "--no-csf": (("--no-csf",), 0),
    "--model": (("--model",), 1),
    "--help": (("-h", "--help"), 0),
}


def parse_synthstrip(argv: Sequence[str]) -> Parsed:
    """Parse an ``mri_synthstrip`` command line as its argparse parser does.

    Accepts ``-x v``, ``-xv``, ``--long v``, ``--long=v`` and unique prefixes of long
    names (argparse's abbreviations).
    """
    usage = (
        "usage: mri_synthstrip [-h] -i file [-o file] [-m file] [-g] [-b BORDER] "
        "[--no-csf] [--model file]"
    )
    if not argv or "-h" in argv or "--help" in argv:
        raise UsageError(usage, 1)
    spellings = {s: name for name, (names, _) in SYNTHSTRIP_OPTIONS.items() for s in names}
    longs = [s for s in spellings if s.startswith("--")]
    parsed = Parsed()
    extra = []
    i = 0
    while i < len(argv):
        word = argv[i]
        value = None
        if word.startswith("--") and len(word) > 2:
            key, eq, rest = word.partition("=")
            value = rest if eq else None
            matches = [s for s in longs if s == key] or [s for s in longs if s.startswith(key)]
            if len(matches) != 1:
                problem = "ambiguous option" if matches else "unrecognized arguments"
                raise UsageError(f"{usage}\nmri_synthstrip: error: {problem}: {word}", 2)
            key = matches[0]
        elif word.startswith("-") and len(word) > 1:
            key, value = word[:2], (word[2:] or None)
            if key not in spellings:
                raise UsageError(
                    f"{usage}\nmri_synthstrip: error: unrecognized arguments: {word}", 2
                )
        else:
            extra.append(word)
            i += 1
            continue
        name = spellings[key]
        count = SYNTHSTRIP_OPTIONS[name][1]
        if count == 0:
            if value is not None:
                raise UsageError(f"{usage}\nmri_synthstrip: error: argument {key}: ignored", 2)
            parsed.options[name] = []
            i += 1
            continue
        if value is None:
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise UsageError(
                    f"{usage}\nmri_synthstrip: error: argument {key}: expected one argument", 2
                )
            value, i = argv[i + 1], i + 2
        else:
            i += 1
        parsed.options[name] = [value]
    if extra:
        raise UsageError(f"{usage}\nmri_synthstrip: error: unrecognized arguments: {extra}", 2)
    if not parsed.has("--image"):
        raise UsageError(
            f"{usage}\nmri_synthstrip: error: the following arguments are required: -i/--image",
            2,
        )
    border = parsed.get("--border")
    if border is not None and not re.fullmatch(r"[-+]?\d+", border.strip()):
        raise UsageError(f"{usage}\nmri_synthstrip: error: invalid int value: {border!r}", 2)
    if not (parsed.has("--out") or parsed.has("--mask")):
        raise UsageError("Error: Must provide at least --out or --mask output flags.", 1)
    return parsed


#: ``mri_coreg``: option -> number of values (names compared without case, as the
#: parser's ``strcasecmp`` does). Source: mri_coreg/mri_coreg.cpp in
#: freesurfer/freesurfer, commit d6974438, ``parse_commandline`` and ``check_options``:
#: an unknown word is "ERROR: Option ... unknown" (``exit(-1)``, 255), a missing value
#: ``CMDargNErr`` (255); ``--mov``, ``--ref`` (or ``--s``) and ``--reg``/``--lta`` are
#: required (exit 1). ``--mat2par``, ``--par2mat`` and ``--rms`` are utility modes that
#: exit early; only their arity is modelled.
MRI_COREG_SOURCE = f"{FREESURFER_REPO}/blob/d6974438/mri_coreg/mri_coreg.cpp"
MRI_COREG_OPTIONS: dict[str, int] = {
    **dict.fromkeys(
        (
            "--help",
            "--version",
            "--debug",
            "--checkopts",
            "--nocheckopts",
            "--init-cost-only",
            "--no-smooth",
            "--cras0",
            "--centroid",
            "--no-cras0",
            "--regheader",
            "--conf-ref",
            "--bf",
            "--no-bf",
            "--mov-oob",
            "--no-mov-oob",
            "--no-ref-mask",
            "--xztrans+yrot",
            "--2dz",
            "--xytrans+zrot",
            "--zscale",
            "--6",
            "--9",
            "--12",
            "--no-coord-dither",
            "--no-intensity-dither",
            "--no-dither",
            "--diag-show",
            "--diag-verbose",
        ),
        0,
    ),
    **dict.fromkeys(
        (
            "--rusage",
            "--seed",
            "--mov",
            "--movout",
            "--mov-idither",
            "--ref",
            "--targ",
            "--ref-mask",
            "--mov-mask",
            "--reg",
            "--lta",
            "--regdat",
            "--params",
            "--log-cost",
            "--s",
            "--sd",
            "-sdir",
            "--sat",
            "--dof",
            "--bf-lim",
            "--bf-nsamp",
            "--nitersmax",
            "--mat2par",
            "--ftol",
            "--linmintol",
            "--sep",
            "--ref-fwhm",
            "--init-reg",
            "--threads",
            "--nthreads",
            "--diag",
        ),
        1,
    ),
    **dict.fromkeys(("--trans", "--rot", "--scale", "--shear"), 3),
    "--rms": 4,
    "--par2mat": 15,
}


def parse_mri_coreg(argv: Sequence[str]) -> Parsed:
    """Parse an ``mri_coreg`` command line (every word is an option or its value)."""
    usage = "USAGE: mri_coreg --mov movvol --ref refvol --reg reg.lta [options]"
    if not argv:
        raise UsageError(usage, 1)
    canonical = {"--targ": "--ref", "--lta": "--reg", "-sdir": "--sd", "--nthreads": "--threads"}
    parsed = Parsed()
    i = 0
    while i < len(argv):
        key = argv[i].lower()
        if key not in MRI_COREG_OPTIONS:
            raise UsageError(f"ERROR: Option {argv[i]} unknown", 255)
        if key in ("--help", "--version"):
            raise UsageError(usage, 1)
        count = MRI_COREG_OPTIONS[key]
        error = UsageError(f"ERROR: {argv[i]} flag needs {count} argument(s)", 255)
        parsed.options[canonical.get(key, key)] = _take(argv, i, count, error)
        i += 1 + count
    if not parsed.has("--mov"):
        raise UsageError("ERROR: must spec --mov", 1)
    if not (parsed.has("--ref") or parsed.has("--s")):
        raise UsageError("ERROR: must spec --ref", 1)
    if not parsed.has("--reg"):
        raise UsageError("ERROR: must spec --reg", 1)
    return parsed


#: ``mri_convert``: canonical option -> (other spellings, number of values); ``None``
#: values means "one or more integers" (``-f/--frame``). Source: mri_convert/mri_convert.cpp
#: in freesurfer/freesurfer, commit 748015dc, the option loop of ``main`` (``get_string``
#: / ``get_ints`` / ``get_floats`` set the counts) plus ``handleVersionOption``
#: (``--version``, ``--all-info``). An unknown ``-`` word is 'unknown flag' (exit 1), a
#: third operand 'extra argument' (exit 1); the input and output volumes (operands or
#: ``-i``/``-o``) are required unless ``--read_only``/``--no_write``.
MRI_CONVERT_SOURCE = f"{FREESURFER_REPO}/blob/748015dc/mri_convert/mri_convert.cpp"
MRI_CONVERT_OPTIONS: dict[str, tuple[tuple[str, ...], int | None]] = {
    "--reorder": (("-r",), 3),
    "--reorder4": (("-r4",), 4),
    "--upper_thresh": (("-ut",), 1),
    "--outside_val": (("-oval",), 1),
    "--no-dwi": ((), 0),
    "--debug": ((), 0),
    "--left-right-reverse": ((), 0),
    "--left-right-reverse-pix": ((), 0),
    "--left-right-mirror": ((), 1),
    "--left-right-keep": ((), 1),
    "--left-right-swap-label": ((), 0),
    "--flip-cols": ((), 0),
    "--slice-reverse": ((), 0),
    "--ascii": ((), 0),
    "--ascii+crsf": ((), 0),
    "--ascii-fcol": ((), 0),
    "--in_stats_table": ((), 0),
    "--out_stats_table": ((), 0),
    "--invert_contrast": ((), 1),
    "--input_volume": (("-i",), 1),
    "--output_volume": (("-o",), 1),
    "--conform": (("-c",), 0),
    "--conform-dc": ((), 0),
    "--cw256": ((), 0),
    "--delete-cmds": ((), 0),
    "--new-transform-fname": ((), 1),
    "--sphinx": ((), 0),
    "--no-rescale-dicom": ((), 0),
    "--bvec-scanner": ((), 0),
    "--bvec-voxel": ((), 0),
    "--no-analyze-rescale": ((), 0),
    "--autoalign": ((), 1),
    "--nochange": (("-nc",), 0),
    "--store_orig_ras2vox": (("-so",), 0),
    "--conform_min": (("-cm",), 0),
    "--conform_size": (("-cs",), 1),
    "--parse_only": (("-po",), 0),
    "--in_info": (("-ii",), 0),
    "--out_info": (("-oi",), 0),
    "--template_info": (("-ti",), 0),
    "--in_stats": (("-is",), 0),
    "--out_stats": (("-os",), 0),
    "--read_only": (("-ro",), 0),
    "--no_write": (("-nw",), 0),
    "--in_matrix": (("-im",), 0),
    "--out_matrix": (("-om",), 0),
    "--force_ras_good": ((), 0),
    "--split": ((), 0),
    "--apply_transform": (("-at", "-T"), 1),
    "--like": ((), 1),
    "--crop": ((), 3),
    "--slice-crop": ((), 2),
    "--cropsize": ((), 3),
    "--devolvexfm": ((), 1),
    "--apply_inverse_transform": (("-ait",), 1),
    "--upsample": ((), 1),
    "--in_i_size": (("-iis",), 1),
    "--in_j_size": (("-ijs",), 1),
    "--in_k_size": (("-iks",), 1),
    "--out_i_size": (("-ois",), 1),
    "--out_j_size": (("-ojs",), 1),
    "--out_k_size": (("-oks",), 1),
    "--in_i_direction": (("-iid",), 3),
    "--in_j_direction": (("-ijd",), 3),
    "--in_k_direction": (("-ikd",), 3),
    "--ctab": ((), 1),
    "--in_orientation": ((), 1),
    "--out_orientation": ((), 1),
    "--out_i_direction": (("-oid",), 3),
    "--out_j_direction": (("-ojd",), 3),
    "--out_k_direction": (("-okd",), 3),
    "--in_center": (("-ic",), 3),
    "--delta_in_center": (("-dic",), 3),
    "--out_center": (("-oc",), 3),
    "--out_i_count": (("-oni", "-oic"), 1),
    "--out_j_count": (("-onj", "-ojc"), 1),
    "--out_k_count": (("-onk", "-okc"), 1),
    "--voxsize": (("-vs", "-voxsize"), 3),
    "--downsample": (("-ds", "-downsample"), 3),
    "--downsample2": (("-ds2",), 0),
    "--in_i_count": (("-ini", "-iic"), 1),
    "--in_j_count": (("-inj", "-ijc"), 1),
    "--in_k_count": (("-ink", "-ikc"), 1),
    "--antialias": ((), 0),
    "--nthreads": ((), 1),
    "--fwhm": ((), 1),
    "--reduce": ((), 1),
    "-tr": ((), 1),
    "-TI": ((), 1),
    "-te": ((), 1),
    "-flip_angle": ((), 1),
    "--out_data_type": (("-odt",), 1),
    "--bfile-little-endian": ((), 0),
    "--rescale": ((), 1),
    "--scale": (("-sc",), 1),
    "--out-scale": (("-osc",), 1),
    "--rescale-voxel": ((), 3),
    "--resample_type": (("-rt",), 1),
    "--in_type": (("-it",), 1),
    "--dcm2niix": (("-dicomread3", "-dcm2niix"), 0),
    "--no-dcm2niix": (("-no-dcm2niix",), 0),
    "-dicomread2": ((), 0),
    "-dicomread0": ((), 0),
    "-siemensBVecsCross": ((), 0),
    "-no-siemensBVecsCross": ((), 0),
    "--out_type": (("-ot",), 1),
    "--template_type": (("-tt",), 1),
    "--subject_name": (("-sn",), 1),
    "--gdf_image_stem": (("-gis",), 1),
    "--reslice_like": (("-rl",), 1),
    "--frame": (("-f",), None),
    "--erode-seg": ((), 1),
    "--dil-seg": ((), 1),
    "--dil-seg-mask": ((), 1),
    "--cutends": ((), 1),
    "--slice-bias": ((), 1),
    "--mid-frame": ((), 0),
    "--fsubsample": ((), 3),
    "--in_like": (("-il",), 1),
    "--first-dicom": ((), 1),
    "--roi": (("-roi",), 0),
    "--fill_parcellation": (("-fp",), 0),
    "--zero_outlines": (("-zo",), 0),
    "--smooth_parcellation": (("-sp",), 1),
    "--color_file": (("-cf",), 1),
    "--no_translate": (("-nt",), 0),
    "--no_scale": (("-ns",), 1),
    "--nth_frame": (("-nth",), 1),
    "--crop_gdf": (("-cg",), 0),
    "--help": (("-u", "--usage", "-h"), 0),
    "--statusfile": (("--status",), 1),
    "--sdcmlist": ((), 1),
    "--nslices-override": ((), 1),
    "--ncols-override": ((), 1),
    "--nrows-override": ((), 1),
    "--mosaic-fix-noascii": ((), 0),
    "--out_nspmzeropad": (("--nspmzeropad",), 1),
    "--in_nspmzeropad": ((), 1),
    "--no-strip-pound": ((), 0),
    "--zero_ge_z_offset": (("-zgez",), 0),
    "--no_zero_ge_z_offset": (("-nozgez",), 0),
    "--nskip": ((), 1),
    "--ndrop": ((), 1),
    "--diag": ((), 1),
    "--mra": ((), 0),
    "--auto-slice-res": ((), 0),
    "-version2": ((), 0),
    "--version": ((), 0),
    "--all-info": ((), 0),
}
MRI_CONVERT_CHOICES: dict[str, tuple[str, ...]] = {
    "--out_data_type": ("uchar", "short", "int", "float", "rgb"),
    "--resample_type": ("interpolate", "nearest", "vote", "weighted", "cubic"),
}


def _orientation_ok(value: str) -> bool:
    """FreeSurfer's orientation string check: one of L/R, A/P, S/I each, in any order."""
    axis = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    return sorted(axis.get(c, -1) for c in value.upper()) == [0, 1, 2]


def parse_mri_convert(argv: Sequence[str]) -> Parsed:
    """Parse an ``mri_convert`` command line (options anywhere, two operands)."""
    usage = "usage: mri_convert [options] <in volume> <out volume>"
    if not argv:
        raise UsageError(usage, 1)
    spelling = _aliases({k: names for k, (names, _) in MRI_CONVERT_OPTIONS.items()})
    parsed = Parsed()
    i = 0
    while i < len(argv):
        word = argv[i]
        name = spelling.get(word)
        if name is None:
            if word.startswith("-"):
                raise UsageError(f'mri_convert: unknown flag "{word}"\n{usage}', 1)
            if len(parsed.positional) == 2:
                raise UsageError(f'mri_convert: extra argument ("{word}")\n{usage}', 1)
            parsed.positional.append(word)
            i += 1
            continue
        if name in ("--help", "--version", "--all-info", "-version2"):
            raise UsageError(usage, 97 if name == "-version2" else 0)
        count = MRI_CONVERT_OPTIONS[name][1]
        if count is None:  # -f/--frame: the integers that follow
            count = 0
            while i + 1 + count < len(argv) and re.fullmatch(r"\d+", argv[i + 1 + count]):
                count += 1
            count = max(count, 1)
        error = UsageError(f"mri_convert: argument {word} expects {count} value(s)\n{usage}", 1)
        values = _take(argv, i, count, error)
        if name in MRI_CONVERT_CHOICES and values[0].lower() not in MRI_CONVERT_CHOICES[name]:
            raise UsageError(f'mri_convert: unknown value "{values[0]}" for {word}\n{usage}', 1)
        if name in ("--in_orientation", "--out_orientation") and not _orientation_ok(values[0]):
            raise UsageError(f"ERROR: with {name[2:]} string {values[0]}", 1)
        parsed.options[name] = values
        i += 1 + count
    volumes = list(parsed.positional)
    inp = parsed.get("--input_volume") or (volumes.pop(0) if volumes else None)
    out = parsed.get("--output_volume") or (volumes.pop(0) if volumes else None)
    if inp is None:
        raise UsageError(f"mri_convert: missing input volume name\n{usage}", 1)
    if out is None and not (parsed.has("--read_only") or parsed.has("--no_write")):
        raise UsageError(f"mri_convert: missing output volume name\n{usage}", 1)
    parsed.options["--input_volume"] = [inp]
    if out is not None:
        parsed.options["--output_volume"] = [out]
    return parsed


#: Tool name -> its parser.
PARSERS: dict[str, Callable[[Sequence[str]], Parsed]] = {
    "fslreorient2std": parse_fslreorient2std,
    "bet": parse_bet,
    "flirt": parse_flirt,
    "fnirt": FNIRT.parse,
    "applywarp": APPLYWARP.parse,
    "invwarp": INVWARP.parse,
    "mri_convert": parse_mri_convert,
    "mri_synthstrip": parse_synthstrip,
    "mri_coreg": parse_mri_coreg,
}

#: Tool name -> where its option list was read.
SOURCES: dict[str, str] = {
    "fslreorient2std": FSLREORIENT2STD_SOURCE,
    "bet": BET_SOURCE,
    "flirt": FLIRT_SOURCE,
    "fnirt": FNIRT.source,
    "applywarp": APPLYWARP.source,
    "invwarp": INVWARP.source,
    "mri_convert": MRI_CONVERT_SOURCE,
    "mri_synthstrip": SYNTHSTRIP_SOURCE,
    "mri_coreg": MRI_COREG_SOURCE,
}


def parse_args(tool: str, argv: Sequence[str]) -> Parsed:
    """Parse ``argv`` as ``tool`` would.

    Raises
    ------
    UsageError
        Where the real tool rejects the command line.
    KeyError
        For a tool without a stand-in.
    """
    return PARSERS[tool](list(argv))


# --- outputs -------------------------------------------------------------------------


def _remove_ext(path: str) -> str:
    """FSL's ``remove_ext``: the name without an image extension."""
    for ext in (".nii.gz", ".nii", ".hdr", ".img", ".img.gz", ".hdr.gz"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def _image_name(path: str) -> str:
    """Where an FSL tool writes image ``path`` (``FSLOUTPUTTYPE=NIFTI_GZ``)."""
    return path if path.endswith((".nii", ".nii.gz")) else _remove_ext(path) + ".nii.gz"


class _Outputs:
    """Writers of the plausible outputs, one method per tool."""

    def __init__(self, world) -> None:
        import nibabel as nib
        import numpy as np
        from scipy import ndimage as ndi

        self.nib, self.np, self.ndi = nib, np, ndi
        self.world = world

    def save(self, img, path: str) -> None:
        """Save ``img`` where an FSL tool would (adding ``.nii.gz`` when needed)."""
        self.nib.save(img, _image_name(path))

    def fsl_scaled(self, img):
        """FSL's voxel -> scaled-voxel matrix (x flipped for neurological storage)."""
        np = self.np
        a = img.affine
        out = np.diag([*np.linalg.norm(a[:3, :3], axis=0), 1.0])
        if np.linalg.det(a[:3, :3]) > 0:
            flip = np.eye(4)
            flip[0, 0], flip[0, 3] = -1, img.shape[0] - 1
            out = out @ flip
        return out

    def resample(self, src, ref, order: int):
        """``src`` on ``ref``'s grid, ref point p taking src at inv(world) p."""
        np = self.np
        m = np.linalg.inv(src.affine) @ np.linalg.inv(self.world) @ ref.affine
        data = np.asarray(src.dataobj, np.float32)
        if data.ndim == 4:
            data = data[..., 0]
        out = self.ndi.affine_transform(
            data, m[:3, :3], m[:3, 3], output_shape=ref.shape[:3], order=order
        )
        return self.nib.Nifti1Image(out.astype(np.float32), ref.affine)

    def brain_mask(self, img):
        """A plausible brain mask: the head eroded by 9 mm, largest part, holes filled."""
        np, ndi = self.np, self.ndi
        d = np.asarray(img.dataobj, np.float32)
        head = ndi.binary_fill_holes(d > 0.15 * np.percentile(d, 99))
        zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
        dist = ndi.distance_transform_edt(head, sampling=zooms)
        labels, n = ndi.label(dist > 9.0)
        if n > 1:
            labels = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        return ndi.binary_fill_holes(labels > 0)

    def strip(self, inp: str, out: str | None, mask_out: str | None) -> None:
        """Write the masked image and/or the mask of ``inp`` (either may be None)."""
        np, nib = self.np, self.nib
        img = nib.load(inp)
        m = self.brain_mask(img)
        if out:
            self.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32) * m, img.affine), out)
        if mask_out:
            self.save(nib.Nifti1Image(m.astype(np.uint8), img.affine), mask_out)

    def zero_warp(self, ref_path: str, out: str) -> None:
        """Write an all-zero 3-component warp on ``ref_path``'s grid."""
        ref = self.nib.load(ref_path)
        data = self.np.zeros((*ref.shape[:3], 3), self.np.float32)
        self.save(self.nib.Nifti1Image(data, ref.affine), out)

    def vox2ras_block(self, img) -> str:
        """An LTA 'volume info' block (FreeSurfer: c_ras at voxel dims / 2)."""
        np = self.np
        a = img.affine
        zooms = np.linalg.norm(a[:3, :3], axis=0)
        dirs = a[:3, :3] / zooms
        c_ras = a[:3, :3] @ (np.array(img.shape[:3]) / 2) + a[:3, 3]
        rows = [
            "valid = 1  # volume info valid",
            "filename = x.nii.gz",
            "volume = {} {} {}".format(*img.shape[:3]),
            "voxelsize = {:.10f} {:.10f} {:.10f}".format(*zooms),
        ]
        rows += [
            f"{k}ras   = " + " ".join(f"{v:.12f}" for v in dirs[:, i]) for i, k in enumerate("xyz")
        ]
        rows.append("cras   = " + " ".join(f"{v:.10f}" for v in c_ras))
        return "\n".join(rows)

    def run(self, tool: str, args: Parsed) -> None:
        """Write the outputs ``tool`` writes for the accepted command line ``args``."""
        np, nib = self.np, self.nib
        if tool == "fslreorient2std":
            img = nib.as_closest_canonical(nib.load(args.positional[0]))
            las = img.as_reoriented(np.array([[0, -1], [1, 1], [2, 1]]))  # radiological
            self.save(las, args.positional[1])
        elif tool == "bet":
            inp, out = args.positional
            base = _remove_ext(out)
            brain = None if args.has("-n") else base
            self.strip(inp, brain, base + "_mask" if args.has("-m") else None)
        elif tool == "mri_synthstrip":
            self.strip(args.get("--image"), args.get("--out"), args.get("--mask"))
        elif tool == "flirt":
            moving, ref = nib.load(args.get("-in")), nib.load(args.get("-ref"))
            m = (
                self.fsl_scaled(ref)
                @ np.linalg.inv(ref.affine)
                @ self.world
                @ moving.affine
                @ np.linalg.inv(self.fsl_scaled(moving))
            )
            if args.has("-omat"):
                np.savetxt(args.get("-omat"), m, fmt="%.10f")
            if args.has("-out"):
                self.save(self.resample(moving, ref, 1), args.get("-out"))
        elif tool == "fnirt":
            coef = args.get("--cout") or _remove_ext(args.get("--in")) + "_warpcoef"
            self.zero_warp(args.get("--ref"), coef)
            if args.has("--iout"):
                ref = nib.load(args.get("--ref"))
                self.save(self.resample(nib.load(args.get("--in")), ref, 1), args.get("--iout"))
            if args.has("--logout"):
                Path(args.get("--logout")).write_text("stand-in fnirt\n")
        elif tool == "applywarp":
            order = 0 if args.get("--interp") == "nn" else 1
            src, ref = nib.load(args.get("--in")), nib.load(args.get("--ref"))
            self.save(self.resample(src, ref, order), args.get("--out"))
        elif tool == "invwarp":
            self.zero_warp(args.get("--ref"), args.get("--out"))
        elif tool == "mri_convert":
            img = nib.as_closest_canonical(nib.load(args.get("--input_volume")))
            nib.save(img, args.get("--output_volume"))
        elif tool == "mri_coreg":
            # mri_coreg writes LTAcreate(mov, ref, inv(V2V), LINEAR_VOX_TO_VOX): the
            # matrix maps mov voxels to ref voxels, with both volumes' geometry.
            mov, ref = nib.load(args.get("--mov")), nib.load(args.get("--ref"))
            vox = np.linalg.inv(ref.affine) @ self.world @ mov.affine
            rows = "\n".join(" ".join(f"{v:.12e}" for v in r) for r in vox)
            Path(args.get("--reg")).write_text(
                "# transform file (stand-in mri_coreg)\n"
                "type      = 0 # LINEAR_VOX_TO_VOX\nnxforms   = 1\n"
                "mean      = 0.0000 0.0000 0.0000\nsigma     = 1.0000\n1 4 4\n"
                f"{rows}\nsrc volume info\n{self.vox2ras_block(mov)}\n"
                f"dst volume info\n{self.vox2ras_block(ref)}\n"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a stand-in: parse, log, then write the outputs.

    Returns
    -------
    int
        0, or the real tool's exit status for a command line it rejects.
    """
    argv = list(sys.argv if argv is None else argv)
    tool, args = Path(argv[0]).name, argv[1:]
    if tool not in PARSERS:
        print(f"stand-in: unknown tool {tool}", file=sys.stderr)
        return 127
    try:
        parsed = parse_args(tool, args)
    except UsageError as err:
        parsed, status, message = None, err.status, str(err)
    entry = {
        "tool": tool,
        "argv": args,
        "accepted": parsed is not None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    log = os.environ.get("ANAT_STANDIN_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
    if parsed is None:
        print(message, file=sys.stderr)
        return status
    import numpy as np

    world = json.loads(os.environ.get("ANAT_STANDIN_WORLD") or "null")
    _Outputs(np.eye(4) if world is None else np.asarray(world, float)).run(tool, parsed)
    return 0


def install_standins(bin_dir: Path, tools: Sequence[str] = TOOLS) -> None:
    """Write one launcher per tool name into ``bin_dir``, each running :func:`main`.

    The launcher loads this file by path (``runpy``), so the stand-ins need neither the
    test package on ``sys.path`` nor any install step.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    here = str(Path(__file__).resolve())
    for tool in tools:
        path = bin_dir / tool
        path.write_text(
            f"#!{sys.executable}\nimport runpy\n"
            f"raise SystemExit(runpy.run_path({here!r})['main']())\n"
        )
        path.chmod(path.stat().st_mode | 0o111)


if __name__ == "__main__":
    sys.exit(main())
