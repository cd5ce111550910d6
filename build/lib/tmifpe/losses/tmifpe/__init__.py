"""T-MIFPE loss and its t* solver (one package per loss: its attack cells depend on this
folder, so editing the solver re-runs only T-MIFPE cells)."""

from tmifpe.losses.tmifpe.loss import tmifpe_loss

__all__ = ["tmifpe_loss"]
