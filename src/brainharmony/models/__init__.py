"""Neural network models. Re-exports only; see the submodules."""

from brainharmony.models.ssm import Mamba, MambaBlock, selective_scan

__all__ = ["Mamba", "MambaBlock", "selective_scan"]
