"""Moved to :mod:`cord.models.rollout` (sampling is a model's, and ``cord.eval`` uses it too).
This name stays for ``cord.demo.claim_measure`` until the demo is rewritten."""

from cord.models.rollout import Rollouts, completion_mask, sample, text_references

__all__ = ["Rollouts", "completion_mask", "sample", "text_references"]
