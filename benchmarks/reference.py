"""Plain reference implementations, written from ``../shared/algorithms.md`` §2-4 as directly as
possible (no vectorisation beyond what the text says). Benchmarks time the project's methods
against these in the same run and check that the masks are identical.
"""
from __future__ import annotations

import torch


def magnitude_ref(w: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    w = w.clone()
    if n:
        for r in range(w.shape[0]):
            for c in range(0, w.shape[1], m):
                group = w[r, c : c + m].abs()
                w[r, c + torch.argsort(group)[:n]] = 0
        return w
    thresh = torch.sort(w.abs().flatten())[0][int(w.numel() * sparsity)]
    w[w.abs() <= thresh] = 0
    return w


def wanda_ref(w: torch.Tensor, hessian: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    metric = w.abs() * torch.sqrt(torch.diag(hessian)).reshape(1, -1)
    mask = torch.zeros_like(w, dtype=torch.bool)
    if n:
        for c in range(0, w.shape[1], m):
            tmp = metric[:, c : c + m]
            mask.scatter_(1, c + torch.topk(tmp, n, dim=1, largest=False)[1], True)
    else:
        idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(w.shape[1] * sparsity)]
        mask.scatter_(1, idx, True)
    out = w.clone()
    out[mask] = 0
    return out


def sparsegpt_ref(w: torch.Tensor, hessian: torch.Tensor, sparsity: float, n: int = 0, m: int = 0,
                  blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """SparseGPT ``fasterprune`` as published: per-column loop, boolean masking, lazy block updates."""
    W = w.clone().float()
    H = hessian.clone().float()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(cols)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if n == 0:
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w_col = W1[:, i]
            d = Hinv1[i, i]
            if n != 0 and i % m == 0:
                tmp = W1[:, i : i + m] ** 2 / (torch.diag(Hinv1)[i : i + m].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, n, dim=1, largest=False)[1], True)
            q = w_col.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            Losses1[:, i] = (w_col - q) ** 2 / d**2
            err1 = (w_col - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W
