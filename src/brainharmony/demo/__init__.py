"""Simulated demo BIDS datasets with planted, documented ground truth."""

from brainharmony.demo.dynamics import simulate_cohort
from brainharmony.demo.generate import generate_demo

__all__ = ["generate_demo", "simulate_cohort"]
