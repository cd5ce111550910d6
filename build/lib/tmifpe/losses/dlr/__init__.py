"""DLR loss (one package per loss: its attack cells depend on this folder)."""

from tmifpe.losses.dlr.loss import dlr_loss

__all__ = ["dlr_loss"]
