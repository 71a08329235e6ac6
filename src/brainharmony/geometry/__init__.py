"""Cortical geometry: Laplace-Beltrami eigenmodes, geometric harmonics, functional gradients."""

from brainharmony.geometry.lbo import Eigenmodes, eigenmodes, fem_matrices, submesh

__all__ = ["Eigenmodes", "eigenmodes", "fem_matrices", "submesh"]
