"""The published LR schedule: constant for ``niter`` epochs, then linear decay to 0 over ``niter_decay`` epochs,
applied once per epoch (``--niter``/``--niter_decay`` of ``PF-AFN_train/options/train_options.py``).

The original scripts (``PF-AFN_train/train_*.py``) train epochs 1..niter+niter_decay and, *after* each epoch
``> niter``, subtract ``lr/niter_decay`` (``update_learning_rate`` in ``PF-AFN_train/models/afwm.py``). With 0-based
epochs ``e`` that is ``lr(e) = lr0 · (1 − max(0, e − niter) / niter_decay)``: epochs ``0..niter`` run at ``lr0`` and
the last epoch at ``lr0/niter_decay``. A warp optimizer at ``0.2·lr0`` decays the same way
(``update_learning_rate_warp``: ``0.2·lr0/niter_decay`` per epoch).
"""
from __future__ import annotations


def linear_decay_lr(base_lr: float, epoch: int, niter: int, niter_decay: int) -> float:
    """Learning rate during 0-based ``epoch`` (see the module docstring)."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if niter_decay <= 0:
        return float(base_lr)
    done = max(0, epoch - niter)
    return float(base_lr) * max(0.0, 1.0 - done / float(niter_decay))
