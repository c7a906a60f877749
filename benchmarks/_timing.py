"""Small timing helpers shared by the benchmarks."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best_of(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Minimum wall time over ``repeat`` calls (the least disturbed one) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def sgemm_gflops(n: int = 1024) -> float:
    """Measured single-precision matmul throughput of this machine (the floor's yardstick)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    t, _ = best_of(lambda: a @ b, 3)
    return 2 * n**3 / t / 1e9
