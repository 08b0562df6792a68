"""Grouped Optimal Brain Surgeon on the input columns of a linear layer (ZipLM / DarwinLM).

Notation: W (d_out, d_in) is the layer's weight, X (n, d_in) its calibration inputs,
H = 2·XᵀX/n + λI with λ = percdamp·mean(diag H), and Hinv = H⁻¹.

Removing a group g of input columns (all other columns free to change) costs

    cost(g) = tr(W_g · (Hinv_gg)⁻¹ · W_gᵀ)                    (= 2 · increase of ‖(W − W')X‖²/n)

and the optimal compensation of the remaining columns and the inverse Hessian of the reduced
problem (block Schur complement) are

    W    ← W − W_g (Hinv_gg)⁻¹ Hinv_g,:
    Hinv ← Hinv − Hinv_:,g (Hinv_gg)⁻¹ Hinv_g,:

Removed columns stay in the (full-size) matrices as zeros. Applied repeatedly, the updates
give exactly the least-squares optimum for the kept columns K: W'_K = W H_:,K (H_K,K)⁻¹.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class HessianAccumulator:
    """Running H = 2·XᵀX/n over calibration batches (as SparseGPT's add_batch), in float64."""

    def __init__(self, d_in: int):
        self.H = torch.zeros(d_in, d_in, dtype=torch.float64)
        self.n = 0

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        if self.H.device != x.device:
            self.H = self.H.to(x.device)
        m = x.shape[0]
        self.H *= self.n / (self.n + m)
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.H += x.T @ x

    def hessian(self, percdamp: float = 0.01) -> torch.Tensor:
        """The dampened Hessian; dead inputs (never non-zero) get a unit diagonal."""
        H = self.H.clone()
        dead = torch.diagonal(H) == 0
        H[dead, dead] = 1.0
        H += percdamp * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        return H


def inverse_hessian(H: torch.Tensor, percdamp: float = 0.01, tries: int = 6) -> torch.Tensor:
    """H⁻¹ through Cholesky; if H is not positive definite, more dampening is added."""
    H = H.to(torch.float64)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for attempt in range(tries):
        L, info = torch.linalg.cholesky_ex(H + attempt * percdamp * torch.diagonal(H).mean() * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(L)
    raise ValueError("Hessian is not positive definite even after extra dampening")


def _index(cols, device) -> torch.Tensor:
    return torch.as_tensor(cols, dtype=torch.long, device=device)


def obs_cost(W: torch.Tensor, Hinv: torch.Tensor, cols) -> float:
    """cost(g) = tr(W_g (Hinv_gg)⁻¹ W_gᵀ) for the columns `cols`."""
    idx = _index(cols, W.device)
    Wg = W[:, idx]  # (d_out, b)
    return float((Wg * torch.linalg.solve(Hinv[idx][:, idx], Wg.T).T).sum())


def obs_remove(W: torch.Tensor, Hinv: torch.Tensor, cols) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Remove columns `cols`: returns (cost, compensated W, reduced Hinv)."""
    idx = _index(cols, W.device)
    Wg = W[:, idx]
    X = torch.linalg.solve(Hinv[idx][:, idx], Hinv[idx, :])  # (b, d_in) = (Hinv_gg)⁻¹ Hinv_g,:
    cost = obs_cost(W, Hinv, idx)
    W = W - Wg @ X
    Hinv = Hinv - Hinv[:, idx] @ X
    W[:, idx] = 0
    Hinv[idx, :] = 0
    Hinv[:, idx] = 0
    return cost, W, Hinv


@dataclass
class ObsState:
    kept: list[int]  # kept columns, ascending
    weight: torch.Tensor  # (d_out, len(kept)): compensated weights of the kept columns
    cost: float  # cumulative removal cost


def neuron_chain(W: torch.Tensor, H: torch.Tensor, record: set[int], step: int = 1) -> dict[int, ObsState]:
    """Greedy single-column OBS from all columns down to the smallest recorded count.

    Each step removes the `step` columns of lowest individual cost ‖W_:,j‖² / Hinv_jj (as one
    group update); a step is shortened so that every count in `record` is visited exactly.
    """
    W = W.detach().to(torch.float64).clone()
    Hinv = inverse_hessian(H)
    d_in = W.shape[1]
    kept = torch.ones(d_in, dtype=torch.bool, device=W.device)
    targets = sorted((r for r in record if 0 <= r < d_in), reverse=True)
    states: dict[int, ObsState] = {}
    if d_in in record:
        states[d_in] = ObsState(list(range(d_in)), W.clone(), 0.0)
    total, n = 0.0, d_in
    for target in targets:
        while n > target:
            k = min(step, n - target)
            scores = W.pow(2).sum(0) / torch.diagonal(Hinv).clamp_min(1e-30)
            scores[~kept] = float("inf")
            cols = torch.topk(scores, k, largest=False).indices.sort().values
            cost, W, Hinv = obs_remove(W, Hinv, cols)
            total += cost
            kept[cols] = False
            n -= k
        idx = kept.nonzero().flatten()
        states[target] = ObsState(idx.tolist(), W[:, idx].clone(), total)
    return states
