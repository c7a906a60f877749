"""Built-in pruning methods. Importing this package registers them (one module each)."""
from methods import dense, magnitude, obc, sparse_ft, sparsegpt, wanda, woodfisher  # noqa: F401  (registration side effect)

__all__ = ["dense", "magnitude", "obc", "sparse_ft", "sparsegpt", "wanda", "woodfisher"]
