"""CORD trainer: on-policy cross-modal self-distillation of audio language models.

A thin layer on transformers + accelerate over the losses of ``cord_kernels``.
"""

__version__ = "0.1.0"
