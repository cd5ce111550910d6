"""tmifpe: floating-point error in adversarial-attack gradients, measured and fixed (T-MIFPE)."""

__version__ = "0.1.0"
