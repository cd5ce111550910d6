"""MIFPE loss (one package per loss: its attack cells depend on this folder)."""

from tmifpe.losses.mifpe.loss import MIFPE_T, mifpe_loss

__all__ = ["MIFPE_T", "mifpe_loss"]
