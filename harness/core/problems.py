"""The ``synthetic:`` problems as specs: their settings, defaults, validation and labels.

Pure Python (no torch): the suite validator and :class:`harness.core.spec.ModelSpec` read it;
:mod:`harness.synthetic` generates and solves the problems.
"""
from __future__ import annotations

import math
from typing import Any

from harness.core.registry import key_hint
from harness.core.target import Target

PROBLEMS = {
    "gaussian": "sparse linear regression, θ* k*-sparse standard normal (n=256, d=128, k*=16, k=64)",
    "digit": "sparse linear regression, θ* a rendered digit glyph, d=784 (28x28), n=2d, k=2k*",
}
SIDE = 28  # digit images are SIDE x SIDE
SCALE = 3  # each font pixel becomes SCALE x SCALE
# 5x7 bitmap font, one string of 7 rows per digit ("#" = ink).
_FONT = {
    0: (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    1: ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    2: (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    3: ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    4: ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    5: ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    6: ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    7: ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    8: (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    9: (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}


def glyph(digit: int) -> list[float]:
    """The digit as a flattened SIDE x SIDE image (row-major), 1.0 on ink and 0.0 elsewhere."""
    rows = _FONT[digit]
    h, w = len(rows) * SCALE, len(rows[0]) * SCALE
    top, left = (SIDE - h) // 2, (SIDE - w) // 2
    img = [0.0] * (SIDE * SIDE)
    for r, line in enumerate(rows):
        for c, ch in enumerate(line):
            if ch == "#":
                for dr in range(SCALE):
                    for dc in range(SCALE):
                        img[(top + r * SCALE + dr) * SIDE + left + c * SCALE + dc] = 1.0
    return img


# key -> (type, minimum, comment); which keys a problem accepts is in _KEYS.
_FIELDS: dict[str, tuple[type, float, str]] = {
    "n": (int, 1, "samples (rows of X)"),
    "d": (int, 2, "dimension of θ"),
    "k_star": (int, 1, "nonzeros of θ*"),
    "k": (int, 1, "sparsity budget of the iterates; the cell's target is 1 - k/d"),
    "noise": (float, 0.0, "standard deviation of the Gaussian noise on y"),
    "steps": (int, 1, "iterations"),
    "tol": (float, 0.0, "distance ‖θ_t - θ*‖ counted as recovered"),
    "trials": (int, 1, "independent problems per cell (medians are reported)"),
    "digit": (int, 0, "which digit glyph is θ*"),
    "init": (str, 0, "'uniform' (U(-1/√d, 1/√d), the authors') or 'zero'"),
}
# Upper bounds (README "Suite bounds"): far above the papers' settings (d=784, n=2d, 750 steps, 20
# trials), far below what exhausts a machine (X is n x d and the solvers keep d x d float64 matrices).
_MAX = {"n": 1_000_000, "d": 16_384, "steps": 1_000_000, "trials": 10_000}
MAX_ND = 1 << 28  # n x d values in X
_COMMON = ("n", "k", "noise", "steps", "tol", "trials", "init")
_KEYS = {"gaussian": ("d", "k_star") + _COMMON, "digit": ("digit",) + _COMMON}
INITS = ("uniform", "zero")


def defaults(name: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The problem's defaults; derived ones (digit's k*, k = 4k* or 2k*, digit's n) follow ``given``."""
    given = given or {}
    out: dict[str, Any] = {"noise": 0.0, "steps": 750, "tol": 1e-3, "trials": 20, "init": "uniform"}
    if name == "gaussian":
        out.update(n=256, d=128, k_star=16)
        out["k"] = 4 * given.get("k_star", out["k_star"])
    else:
        digit = given.get("digit", 3)
        k_star = int(sum(glyph(digit))) if digit in _FONT else 1
        out.update(digit=3, n=2 * SIDE * SIDE, d=SIDE * SIDE, k_star=k_star, k=2 * k_star)
    return out


def resolve(name: str, raw: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Fill a problem mapping's defaults and check it.

    Returns:
        (the resolved problem, [(key or "", message)] problems; empty when it is valid).
    """
    problems: list[tuple[str, str]] = []
    allowed = _KEYS[name]
    for key in raw:
        if key not in allowed:
            hint = key_hint(key, list(allowed))
            why = " (the digit glyph fixes d=784 and k*)" if name == "digit" and key in ("d", "k_star") else ""
            problems.append((str(key), f"unknown key '{key}' for synthetic:{name}{hint}{why}; valid keys: "
                                        f"{', '.join(allowed)}"))
    for key, value in raw.items():
        if key not in allowed:
            continue
        kind, low, _ = _FIELDS[key]
        if kind is str:
            if value not in INITS:
                problems.append((key, f"expected one of {', '.join(INITS)}, got {value!r}"))
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            problems.append((key, f"expected an integer >= {int(low)}, got {value!r}"))
        elif kind is int and key in _MAX and value > _MAX[key]:
            problems.append((key, f"expected an integer >= {int(low)} and at most {_MAX[key]:,} (the limit), "
                                  f"got {value!r}"))
        elif kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                                or not math.isfinite(value) or value < low):
            problems.append((key, f"expected a finite number >= {low:g}, got {value!r}"))
    if problems:
        return {}, problems
    out = {**defaults(name, raw), **{k: (float(v) if _FIELDS[k][0] is float else v) for k, v in raw.items()}}
    if name == "digit" and out["digit"] not in _FONT:
        problems.append(("digit", f"expected a digit 0-9, got {out['digit']!r}"))
    elif out["k_star"] > out["d"]:
        problems.append(("k_star", f"k_star={out['k_star']} exceeds d={out['d']}"))
    elif out["k"] >= out["d"]:
        problems.append(("k", f"k={out['k']} must be below d={out['d']} (k = d prunes nothing)"))
    elif out["n"] * out["d"] > MAX_ND:
        problems.append(("n", f"n x d is {out['n'] * out['d']:,} values; the limit is {MAX_ND:,}"))
    return out, problems


def target_of(problem: dict[str, Any]) -> str:
    """The cell's target string: the pruned fraction 1 − k/d."""
    return str(Target(1.0 - problem["k"] / problem["d"]))


def label(name: str, problem: dict[str, Any]) -> str:
    """``synthetic:gaussian`` plus the settings that differ from the defaults, e.g. ``(n=96,noise=0.01)``."""
    base = defaults(name, problem)
    diff = [f"{k}={problem[k]:g}" if isinstance(problem[k], float) else f"{k}={problem[k]}"
            for k in sorted(problem) if problem[k] != base.get(k)]
    return f"synthetic:{name}" + (f"({','.join(diff)})" if diff else "")
