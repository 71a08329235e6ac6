#!/usr/bin/env bash
# Second step of the training environment (envs/train.yaml), the GPU fast paths (pyproject
# extra `gpu`). Snakemake runs this script inside the new environment right after creating
# it (`--sdm conda`: a `<env>.post-deploy.sh` next to the env file). By hand, the same build
# order is:
#   conda env create -f envs/train.yaml && conda activate brainharmony-train
#   bash envs/train.post-deploy.sh
# flash-attn, mamba-ssm and causal-conv1d compile CUDA code against the torch already in
# the environment, so they are installed after it, with --no-build-isolation (an isolated
# build would fetch a different torch); in one pip block with torch they do not build.
# They need the CUDA toolkit (nvcc) matching torch's CUDA. Without nvcc (a CPU machine, a
# login node without the toolkit) the script installs nothing: the code then uses its pure
# PyTorch paths, which compute the same thing more slowly (docs/training.md).
#   BRAINHARMONY_GPU_EXTRAS=0   never build them;   =1   build them or fail
#   MAX_JOBS=4                  fewer parallel compile jobs (flash-attn's build is large)
set -euo pipefail
mode="${BRAINHARMONY_GPU_EXTRAS:-auto}"
case "$mode" in
0 | no | false)
    echo "train.post-deploy: BRAINHARMONY_GPU_EXTRAS=$mode: GPU fast paths not installed"
    exit 0
    ;;
auto)
    if ! command -v nvcc >/dev/null 2>&1 && [ ! -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ]; then
        echo "train.post-deploy: no nvcc (CUDA toolkit) found: GPU fast paths not installed;" \
            "the PyTorch fallbacks are used (set BRAINHARMONY_GPU_EXTRAS=1 to insist)"
        exit 0
    fi
    ;;
esac
# Build tools the three packages' setup.py import (no isolation: they come from here).
python -m pip install setuptools wheel packaging ninja
python -m pip install --no-build-isolation "causal-conv1d>=1.4"
python -m pip install --no-build-isolation "mamba-ssm>=2.2"
python -m pip install --no-build-isolation "flash-attn>=2.6"
python -c "import torch, flash_attn, mamba_ssm, causal_conv1d; print('train.post-deploy: torch', torch.__version__, 'with flash-attn', flash_attn.__version__)"
