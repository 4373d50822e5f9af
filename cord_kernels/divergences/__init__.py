"""The divergences of the distillation losses, one home each, and the registry that maps a
divergence's name to its parts.

    divergences/<name>/triton_ops.py   the Triton kernels, launchers, custom ops, the Triton
                                       autograd Functions and tile classes (``Triton...``)
    divergences/<name>/torch_ops.py    the same math in eager torch (``Torch...``)
    divergences/<name>/parallel.py     the vocabulary-parallel statistics and gradients
                                       (``...VocabParallel...``)
    divergences/<name>/__init__.py     the ``DivergenceParts`` that bundles them
    divergences/common.py              the contracts every part fulfils
    divergences/registry.py            name -> parts, read by the logits-in functions
                                       (``logits/``), the fused-linear chunk driver
                                       (``fused/distill.py``) and the vocabulary-parallel path

A new divergence is a new folder here, one line in ``registry.py`` (and its name in
``core.options.Divergence``), its public function and module, its float64 reference, its
tests and docs.
"""
