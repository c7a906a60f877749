"""Plain reference implementations, written from the papers' pseudocode as directly as
possible (no vectorisation beyond what the text says): magnitude, Wanda, SparseGPT, ExactOBS,
the I-OBS Newton point and WoodFisher's per-block Fisher inverse. Benchmarks time the project's
methods against these in the same run and check that the masks are identical.
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
                  blocksize: int = 128, percdamp: float = 0.01, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SparseGPT ``fasterprune`` as published: per-column loop, boolean masking, lazy block updates.
    ``dtype=torch.float64`` gives the same algorithm with less rounding (a yardstick for masks)."""
    W = w.clone().to(dtype)
    H = hessian.clone().to(dtype)
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


def obc_ref(w: torch.Tensor, hessian: torch.Tensor, sparsity: float, percdamp: float = 0.0) -> torch.Tensor:
    """ExactOBS (§5) literally: per row its own H⁻¹, greedy argmin w²/[H⁻¹]_jj, OBS update and one
    Gaussian-elimination step, the weights after each step traced; then the (row, step) losses of
    the whole layer sorted together give each row its count. Python loops, float64."""
    W = w.clone().double()
    H = hessian.clone().double()
    d_out, d_in = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(d_in, dtype=H.dtype)
    Hinv0 = torch.linalg.inv(H)
    losses = torch.zeros(d_out, d_in, dtype=torch.float64)
    traces = torch.zeros(d_out, d_in + 1, d_in, dtype=torch.float64)
    for row in range(d_out):
        Hinv = Hinv0.clone()
        wr = W[row].clone()
        masked = torch.zeros(d_in, dtype=torch.bool)
        traces[row, 0] = wr
        for step in range(d_in):
            score = wr**2 / torch.diag(Hinv)
            score[masked] = float("inf")
            j = int(torch.argmin(score))
            losses[row, step] = score[j] / 2
            wr = wr - (wr[j] / Hinv[j, j]) * Hinv[j, :]
            masked[j] = True
            wr[masked] = 0
            traces[row, step + 1] = wr
            Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    k = round(sparsity * d_out * d_in)
    order = torch.argsort(losses.flatten(), stable=True)[:k]
    counts = torch.bincount(order // d_in, minlength=d_out)
    return torch.stack([traces[r, int(counts[r])] for r in range(d_out)])


def newton_dense_output_ref(w_t: torch.Tensor, w_d: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor,
                            eta: float, damp: float = 0.01) -> torch.Tensor:
    """I-OBS Newton point (§7.4): W~ = W_t − η[W_t H̄ − W_d(C + λI)]H̄⁻¹ with an explicit inverse."""
    d = hessian.shape[0]
    lam = damp * torch.mean(torch.diag(hessian.double()))
    eye = torch.eye(d, dtype=torch.float64)
    hbar = hessian.double() + lam * eye
    grad = w_t.double() @ hbar - w_d.double() @ (cross.double() + lam * eye)
    return (w_t.double() - eta * grad @ torch.linalg.inv(hbar)).float()


def fisher_inverse_ref(grads: torch.Tensor, damp: float) -> torch.Tensor:
    """WoodFisher (§6) per block: F = λI + (1/m) Σ g_i g_iᵀ as an explicit sum of outer products,
    then ``torch.linalg.inv``, one block at a time. grads (blocks, m, B) -> (blocks, B, B) float64."""
    nb, m, b = grads.shape
    out = torch.empty(nb, b, b, dtype=torch.float64)
    for blk in range(nb):
        g = grads[blk].double()  # (m, B): gᵀg is the sum of the m outer products
        out[blk] = torch.linalg.inv(damp * torch.eye(b, dtype=torch.float64) + g.T @ g / m)
    return out


def woodfisher_layer_ref(w: torch.Tensor, grads: torch.Tensor, sparsity: float, block: int = 128,
                         damp: float = 1e-5) -> torch.Tensor:
    """One layer of WoodFisher, scope ``layer``: ρ_q = w_q²/(2[F⁻¹]_qq), the lowest s·numel pruned,
    δw = F⁻¹ Σ_q (−w_q/[F⁻¹]_qq) e_q per block, pruned weights zeroed. w (rows, cols), grads (m, numel)."""
    flat = w.flatten().double()
    numel = flat.numel()
    assert numel % block == 0, "reference handles whole blocks only"
    wb = flat.reshape(-1, block)
    finv = fisher_inverse_ref(grads.reshape(grads.shape[0], -1, block).transpose(0, 1), damp)
    diag = torch.diagonal(finv, dim1=1, dim2=2)
    rho = (wb**2 / (2 * diag)).flatten()
    pruned = torch.zeros(numel, dtype=torch.bool)
    pruned[torch.argsort(rho, stable=True)[: int(sparsity * numel)]] = True
    pruned = pruned.reshape(-1, block)
    out = wb.clone()
    for blk in range(wb.shape[0]):
        v = torch.where(pruned[blk], -wb[blk] / diag[blk], torch.zeros(block, dtype=torch.float64))
        out[blk] = wb[blk] + finv[blk] @ v
    out[pruned] = 0
    return out.reshape(w.shape).float()
