"""Drop-in loss backends for other training libraries (each an optional extra).

``cord_kernels.integrations.trl``: TRL's distillation trainers (``pip install
cord-kernels[trl]``); see ``docs/integrations.md``.
"""
