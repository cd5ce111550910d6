"""Cross-entropy loss (one package per loss: its attack cells depend on this folder)."""

from tmifpe.losses.ce.loss import ce_loss

__all__ = ["ce_loss"]
