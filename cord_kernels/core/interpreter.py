"""A compatibility fix for the Triton interpreter (``TRITON_INTERPRET=1``) under numpy >= 2.4.

The interpreter hands every integer kernel argument to the kernel body as a one-element numpy
array, and Triton <= 3.6 turns it back into a Python int with ``int(array)`` whenever Python
needs an index: the ``for i_v in range(0, V, BLOCK_V)`` loop of every streaming kernel. numpy
2.4 removed that conversion for arrays with ndim > 0 ("only 0-dimensional arrays can be
converted to Python scalars"), so every kernel crashes on its first loop. Triton 3.7+ squeezes
the array first. torch 2.11 pins triton 3.6, so we apply the same one-line fix to the
interpreter rather than bound numpy; compiled GPU kernels never go through this code.
"""

from __future__ import annotations


def _numpy_converts_sized_arrays() -> bool:
    # Imported here: only the interpreter needs numpy, and torch itself does not require it.
    import numpy as np

    try:
        int(np.array([1]))
    except TypeError:
        return False
    return True


def fix_scalar_index_for_numpy() -> bool:
    """Makes the interpreter's scalar ``__index__`` use ``.item()`` where numpy needs it.

    Returns whether the fix was applied (False: nothing to fix, or Triton's interpreter is
    absent or has changed shape, in which case it is left alone)."""
    if _numpy_converts_sized_arrays():
        return False
    try:
        from triton.runtime import interpreter
    except Exception:  # no (or a broken) Triton: nothing is interpreted
        return False
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_cord_fixed", False):
        return False

    def index(self) -> int:
        return int(self.handle.data.item())  # .item() raises for more than one element too

    def patch_lang_tensor(tensor, *args, **kwargs):
        original(tensor, *args, **kwargs)
        scope = args[0] if args else kwargs.get("scope")
        if scope is not None:  # Triton >= 3.5 restores patched attributes through a scope
            scope.set_attr(tensor, "__index__", index)
        else:
            tensor.__index__ = index

    patch_lang_tensor._cord_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    return True
