"""Built-in pruning methods. Importing this package registers them (one module each)."""
from methods import dense, iht, iobs_obc, magnitude, obc, sparsegpt, topk_iobs, wanda  # noqa: F401  (registration side effect)

__all__ = ["dense", "iht", "iobs_obc", "magnitude", "obc", "sparsegpt", "topk_iobs", "wanda"]
