"""C&W margin loss (one package per loss: its attack cells depend on this folder)."""

from tmifpe.losses.cw.loss import cw_loss

__all__ = ["cw_loss"]
