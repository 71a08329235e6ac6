"""brainharmony: raw BIDS MRI to brain foundation models (BrainHarmonix, LMAE-RWMoE-SSM)."""

from brainharmony._version import __version__

__all__ = ["__version__"]
