"""Built-in pruning methods. Importing this package registers them (one module each)."""
from methods import (  # noqa: F401  (registration side effect)
    dense, iht, iobs, iobs_obc, magnitude, obc, sparse_ft, sparsegpt, topk_iobs, wanda, woodfisher,
)

__all__ = ["dense", "iht", "iobs", "iobs_obc", "magnitude", "obc", "sparse_ft", "sparsegpt", "topk_iobs", "wanda",
           "woodfisher"]
