"""Built-in pruning methods. Importing this package registers them (one module each)."""
from methods import dense, iobs, magnitude, obc, sparsegpt, wanda  # noqa: F401  (registration side effect)

__all__ = ["dense", "iobs", "magnitude", "obc", "sparsegpt", "wanda"]
