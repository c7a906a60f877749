"""Sparsity targets: an unstructured fraction (``0.5``) or an N:M pattern (``"2:4"``).

N:M follows SparseGPT and Wanda: N counts the *pruned* weights in every group of M
consecutive input columns of a row, so ``2:4`` zeroes 2 of every 4.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_NM = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*$")


class TargetError(ValueError):
    """A target that is not a fraction in [0, 1) nor a valid ``N:M`` string."""


@dataclass(frozen=True, order=True)
class Target:
    """What a method must reach in every pruned layer.

    Attributes:
        sparsity: fraction of weights pruned (N/M for an N:M target).
        n: pruned weights per group (0 for unstructured).
        m: group size along the input dimension (0 for unstructured).
    """

    sparsity: float
    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @classmethod
    def parse(cls, value: object) -> "Target":
        """Parse ``0.5``, ``"0.5"``, ``"50%"`` or ``"2:4"``; raise TargetError otherwise."""
        if isinstance(value, bool):
            raise TargetError(f"target must be a fraction like 0.5 or an 'N:M' string, got {value!r}")
        if isinstance(value, str):
            m = _NM.match(value)
            if m:
                n, mm = int(m.group(1)), int(m.group(2))
                if not (0 < n < mm):
                    raise TargetError(
                        f"N:M target '{value}' needs 0 < N < M (N counts pruned weights per M inputs)"
                    )
                if mm > 1024:
                    raise TargetError(f"N:M target '{value}': M must be at most 1024")
                return cls(n / mm, n, mm)
            text = value.strip()
            try:
                value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            except ValueError:
                raise TargetError(
                    f"target must be a fraction like 0.5 or an 'N:M' string like '2:4', got {value!r}"
                ) from None
        if not isinstance(value, (int, float)):
            raise TargetError(f"target must be a fraction like 0.5 or an 'N:M' string, got {value!r}")
        s = float(value)
        if not (0.0 <= s < 1.0) or s != s:
            raise TargetError(f"sparsity {value!r} is outside [0, 1): it is the fraction of weights pruned")
        return cls(s)

    def __str__(self) -> str:
        if self.is_nm:
            return f"{self.n}:{self.m}"
        return format(self.sparsity, "g")
