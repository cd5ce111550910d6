"""Attack engines; the loss is injected, precision comes from the wrapped model."""
