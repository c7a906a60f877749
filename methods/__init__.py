"""Built-in pruning methods. Importing this package registers them (one module each)."""
from methods import (  # noqa: F401  (registration side effect)
    dense, iht, iobs, iobs_obc, magnitude, obc, sparsegpt, topk_iobs, wanda,
)

__all__ = ["dense", "iht", "iobs", "iobs_obc", "magnitude", "obc", "sparsegpt", "topk_iobs", "wanda"]
