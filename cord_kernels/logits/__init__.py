"""Logits in (..., V): the row-streaming kernels and the losses built on them."""
