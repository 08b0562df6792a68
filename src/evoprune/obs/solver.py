"""Grouped Optimal Brain Surgeon on the input columns of an output projection (ZipLM / DarwinLM).

A block's output projection W (d_out, d_in) — `o_proj` with d_in = num_heads·head_dim, or
`down_proj` with d_in = intermediate — reads the block's inner activations x ∈ R^{d_in}.
Removing a head or neuron removes a group of input columns; the kept columns K are then
re-fitted so that the layer output changes as little as possible on the calibration inputs
X (n, d_in) (rows = tokens):

    H    = 2·XᵀX/n + λI,    λ = percdamp·mean(diag 2XᵀX/n)          (d_in, d_in)
    Hinv = H⁻¹

(dead inputs, x_j ≡ 0, get H_jj = 1 before the damping and a zero weight column, as in SparseGPT).

For the removal of a column group g (|g| = b) from the current kept state, OBS gives

    cost(g) = tr(W_:g · (Hinv_gg)⁻¹ · W_:gᵀ)
    W    ← W − W_:g (Hinv_gg)⁻¹ Hinv_g:
    Hinv ← Hinv − Hinv_:g (Hinv_gg)⁻¹ Hinv_g:           (block Schur complement)

after which columns g are gone (W_:g = 0 and Hinv_g: = Hinv_:g = 0 exactly). With D = W − W'
the change of the weights, cost(g) is the increase of tr(D H Dᵀ) = (2/n)·‖X Dᵀ‖² + λ‖D‖²:
twice the mean squared output error per token, plus the damping term. The updates compose:
after removing any set R greedily, group by group, the weights of the kept columns K are the
one-shot least-squares optimum for the same (dampened) H,

    W'_:K = W H_:K (H_KK)⁻¹,

and the summed costs are its error tr(D H Dᵀ). So every state of a chain is optimal for its
kept set, and its cumulative cost does not depend on the path that reached it.

Two layouts are used for (W, Hinv):
- `obs_cost` / `obs_remove` (the public one-step kernel) keep full-size matrices: removed
  columns stay as zero columns of W and zero rows/columns of Hinv, and only kept columns may
  be removed next.
- the chains (`neuron_chain`, `gqa_head_chain`) use the same in-place steps on the lower
  triangle of Hinv only, and compact the matrices to the kept columns whenever 1/8 of their
  columns are removed ones: the Schur updates then cost about ∑ k²b ≈ d_in³/3 flops over a
  whole chain instead of 2·d_in³.

Precision: the chains compute in float64 up to `FLOAT64_MAX_DIM` inputs and in float32 above
(2× the BLAS speed and half the memory of a 14336² Hinv; on a 2048-column layer float32 gave
the same kept sets as float64 and weights within ~1e-5 of the least-squares optimum). Weights
are returned in the dtype of the input W.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FLOAT64_MAX_DIM = 4096  # auto precision: float64 up to this many input columns, float32 above
_BLOCK = 1024  # block size of the blocked inverse and of the lower-triangular Schur updates


def compute_dtype(d_in: int, dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype used for H / Hinv / W updates: `dtype` if given, else float64 up to
    `FLOAT64_MAX_DIM` input columns and float32 above."""
    if dtype is not None:
        return dtype
    return torch.float64 if d_in <= FLOAT64_MAX_DIM else torch.float32


class HessianAccumulator:
    """Running H = 2·XᵀX/n of a linear layer's inputs over calibration batches (as SparseGPT).

    After batches X₁, …, X_m the raw matrix `H` equals 2·XᵀX/n for X the concatenation of the
    batches (n = `n` rows); each batch rescales the running mean, so there is no overflow
    in float32 for long calibration runs.

    Args:
        d_in: number of input features (columns of X).
        dtype: accumulation dtype; None follows `compute_dtype(d_in)`.
        device: device of H; it moves to the device of the first batch if different.
    """

    def __init__(self, d_in: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        self.d_in = d_in
        self.H = torch.zeros(d_in, d_in, dtype=compute_dtype(d_in, dtype), device=device)  # raw 2XᵀX/n
        self.n = 0  # tokens seen

    def add_batch(self, x: torch.Tensor) -> None:
        """Add inputs x of shape (..., d_in): every leading index is one token."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"expected inputs with last dimension {self.d_in}, got shape {tuple(x.shape)}")
        x = x.detach().reshape(-1, self.d_in)
        m = x.shape[0]
        if m == 0:
            return
        if self.H.device != x.device:
            self.H = self.H.to(x.device)
        x = x.to(self.H.dtype)
        self.H *= self.n / (self.n + m)
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.H.addmm_(x.T, x)

    @property
    def dead(self) -> torch.Tensor:
        """(d_in,) bool: inputs that were exactly zero on every token (diag H == 0)."""
        return torch.diagonal(self.H) == 0

    def hessian(self, percdamp: float = 0.01) -> torch.Tensor:
        """The dampened Hessian (d_in, d_in), a new tensor.

        Dead inputs get H_jj = 1 first (as SparseGPT), then H += λI with λ = percdamp·mean(diag H).
        Pass `dead=acc.dead` to the chains so that the weights of dead inputs are zeroed as well.
        """
        return _dampen(self.H.clone(), percdamp)

    def take_hessian(self, percdamp: float = 0.01) -> torch.Tensor:
        """`hessian()` without a copy: the accumulated sums are dampened in place and handed over (the
        accumulator is spent; an n² matrix less at the solve's peak)."""
        H, self.H = self.H, None
        return _dampen(H, percdamp)


def _dampen(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    diag = torch.diagonal(H)
    diag[diag == 0] = 1.0
    diag += percdamp * diag.mean()
    return H


def inverse_hessian(H: torch.Tensor, percdamp: float = 0.01, dtype: torch.dtype | None = None,
                    tries: int = 6, *, lower: bool = False) -> torch.Tensor:
    """Hinv = H⁻¹ (d_in, d_in) through a Cholesky factorisation, exactly symmetric.

    If H is not numerically positive definite, percdamp·mean(diag H)·2^t (t = 0, 1, …) is
    added to its diagonal until it is.

    Args:
        H: (d_in, d_in) symmetric (already dampened) Hessian.
        percdamp: the unit of extra damping in the fallback.
        dtype: compute dtype; None follows `compute_dtype(d_in)`.
        tries: attempts with extra damping before giving up.
        lower: return only the lower triangle (the strict upper one is left unspecified).

    Raises:
        ValueError: H is still not positive definite after `tries` extra dampings.
    """
    H = H.detach().to(compute_dtype(H.shape[0], dtype))
    L, info = torch.linalg.cholesky_ex(H)
    unit = percdamp * torch.diagonal(H).mean()
    for t in range(tries):
        if int(info) == 0:
            break
        Hd = H.clone()
        torch.diagonal(Hd).add_(unit * 2.0**t)
        L, info = torch.linalg.cholesky_ex(Hd)
    if int(info) != 0:
        raise ValueError("Hessian is not positive definite even after extra dampening")
    return _spd_inverse(L, lower)


def _spd_inverse(L: torch.Tensor, lower: bool) -> torch.Tensor:
    """(L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹ (n, n) for a lower Cholesky factor L, by blocks of `_BLOCK` columns.

    Block column j of V = L⁻¹ is zero above block j, so it solves only against L[j0:, j0:];
    row block i of the lower triangle of VᵀV sums only over rows r ≥ i0. About 2n³/3 flops
    in BLAS-3 after the factorisation (torch.cholesky_inverse measured ~3× slower on CPU).
    """
    n, bs = L.shape[0], _BLOCK
    starts = list(range(0, n, bs))
    V = torch.zeros_like(L)
    for j0 in starts:
        j1 = min(j0 + bs, n)
        rhs = torch.zeros(n - j0, j1 - j0, dtype=L.dtype, device=L.device)
        rhs[: j1 - j0].fill_diagonal_(1.0)
        V[j0:, j0:j1] = torch.linalg.solve_triangular(L[j0:, j0:], rhs, upper=False)
    Hinv = torch.zeros_like(L) if lower else torch.empty_like(L)
    for i0 in starts:
        i1 = min(i0 + bs, n)
        Hinv[i0:i1, :i1] = V[i0:, i0:i1].T @ V[i0:, :i1]
        if not lower:  # mirror: exact symmetry, block by block (cheaper than tril + tril.T)
            block = Hinv[i0:i1, i0:i1]
            block.copy_(torch.tril(block) + torch.tril(block, -1).T)
            Hinv[:i0, i0:i1] = Hinv[i0:i1, :i0].T
    return Hinv


def _index(cols, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(cols, dtype=torch.long, device=device).reshape(-1)


def _rows(Hinv: torch.Tensor, g: torch.Tensor, lower: bool) -> torch.Tensor:
    """Hinv_g: (b, k) of a symmetric matrix stored in full or as its lower triangle."""
    if not lower:
        return Hinv[g]
    left = torch.arange(Hinv.shape[0], device=Hinv.device)[None, :] <= g[:, None]  # (b, k): c ≤ g_i
    return torch.where(left, Hinv[g], Hinv[:, g].T)


def _group_costs(W: torch.Tensor, Hinv: torch.Tensor, groups: torch.Tensor, lower: bool = False) -> torch.Tensor:
    """(m,) costs tr((Hinv_gg)⁻¹ W_:gᵀW_:g) = tr(W_:g (Hinv_gg)⁻¹ W_:gᵀ) of m groups at once.

    Args:
        W: (d_out, k) current weights; Hinv: (k, k) current inverse Hessian (full, or its lower
            triangle if `lower`).
        groups: (m, b) positions, one group of b columns per row.
    """
    Wg = W[:, groups].permute(1, 2, 0)  # (m, b, d_out)
    G = Wg @ Wg.transpose(1, 2)  # (m, b, b) = W_:gᵀ W_:g
    Hgg = Hinv[groups[:, :, None], groups[:, None, :]]  # (m, b, b)
    if lower:  # entry (i, j) is stored at (g_i, g_j) only if g_j ≤ g_i
        Hgg = torch.where(groups[:, None, :] <= groups[:, :, None], Hgg, Hgg.transpose(1, 2))
    return torch.linalg.solve(Hgg, G).diagonal(dim1=1, dim2=2).sum(-1)


def _eliminate_(W: torch.Tensor, Hinv: torch.Tensor, g: torch.Tensor, lower: bool = False) -> float:
    """One OBS step in place on the full-size layout; returns cost(g).

    Args:
        W: (d_out, k) current weights, updated to W − W_:g (Hinv_gg)⁻¹ Hinv_g: with W_:g = 0.
        Hinv: (k, k) current inverse Hessian, updated to Hinv − Hinv_:g (Hinv_gg)⁻¹ Hinv_g:
            with rows and columns g = 0. Columns removed earlier are zero rows/columns of Hinv,
            so they stay untouched.
        g: (b,) positions of the removed group, all currently kept.
        lower: Hinv holds only its lower triangle; only that is updated, by row blocks of
            `_BLOCK` (about half the flops of the full rank-b update).
    """
    Wg = W[:, g]  # (d_out, b)
    Hg = _rows(Hinv, g, lower)  # (b, k) = Hinv_g: (= Hinv_:gᵀ)
    C = torch.linalg.inv(Hg[:, g])  # (b, b) = (Hinv_gg)⁻¹
    M = C @ Hg  # (b, k) = (Hinv_gg)⁻¹ Hinv_g:
    cost = float((Wg * (Wg @ C)).sum())
    W.addmm_(Wg, M, alpha=-1)
    if lower:
        k = Hinv.shape[0]
        for i0 in range(0, k, _BLOCK):
            i1 = min(i0 + _BLOCK, k)
            Hinv[i0:i1, :i1].addmm_(Hg[:, i0:i1].T, M[:, :i1], alpha=-1)
    else:
        Hinv.addmm_(Hg.T, M, alpha=-1)
    W[:, g] = 0
    Hinv[g, :] = 0
    Hinv[:, g] = 0
    return cost


def _check_kept(Hinv: torch.Tensor, g: torch.Tensor) -> None:
    if g.numel() == 0:
        raise ValueError("empty column group")
    if len(set(g.tolist())) != g.numel():
        raise ValueError(f"repeated columns in group {g.tolist()}")
    if not bool((torch.diagonal(Hinv)[g] > 0).all()):
        raise ValueError(f"group {g.tolist()} contains already removed columns")


def obs_cost(W: torch.Tensor, Hinv: torch.Tensor, cols) -> float:
    """cost(g) = tr(W_:g (Hinv_gg)⁻¹ W_:gᵀ): the error increase of removing columns g.

    Args:
        W: (d_out, d_in) current weights, full-size (removed columns are zero).
        Hinv: (d_in, d_in) current inverse Hessian, full-size (removed rows/columns zero).
        cols: b distinct column indices, all currently kept.
    """
    g = _index(cols, W.device)
    _check_kept(Hinv, g)
    return float(_group_costs(W, Hinv, g[None]))


def obs_remove(W: torch.Tensor, Hinv: torch.Tensor, cols) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Remove columns g with the optimal compensation of the others (full-size layout).

    Args:
        W: (d_out, d_in) current weights (removed columns zero); not modified.
        Hinv: (d_in, d_in) current inverse Hessian (removed rows/columns zero); not modified.
        cols: b distinct column indices, all currently kept.

    Returns:
        (cost(g), W', Hinv') with W' = W − W_:g (Hinv_gg)⁻¹ Hinv_g: and
        Hinv' = Hinv − Hinv_:g (Hinv_gg)⁻¹ Hinv_g:, then W'_:g = 0 and Hinv'_g: = Hinv'_:g = 0.
    """
    g = _index(cols, W.device)
    _check_kept(Hinv, g)
    W, Hinv = W.clone(), Hinv.clone()
    cost = _eliminate_(W, Hinv, g)
    return cost, W, Hinv


@dataclass
class ObsState:
    """One state of a removal chain.

    Attributes:
        kept: kept units, ascending: columns (neuron_chain) or query heads (gqa_head_chain).
        weight: (d_out, kept columns) compensated weights of the kept columns, in W's dtype.
        cost: cumulative removal cost from the full state, tr(D H Dᵀ) for D = W − W'.
        kv_heads: kept KV groups, ascending (gqa_head_chain only).
    """

    kept: list[int]
    weight: torch.Tensor
    cost: float
    kv_heads: list[int] = field(default_factory=list)


class _Active:
    """The (W, Hinv) of a chain over its active columns `cols` (original indices, ascending).

    Hinv is stored as its lower triangle only. Steps run in place on the full-size layout
    (`_eliminate_`, lower-triangular update: ≈ k²b flops); once removed columns make up 1/8
    of the active ones, the matrices are compacted to the kept columns (index order kept, so
    the lower triangle stays the lower triangle), without a copy per step.
    """

    def __init__(self, W: torch.Tensor, H: torch.Tensor, dead: torch.Tensor | None, percdamp: float,
                 dtype: torch.dtype | None):
        if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
            raise ValueError(f"W {tuple(W.shape)} and H {tuple(H.shape)} do not match")
        self.out_dtype = W.dtype
        dt = compute_dtype(W.shape[1], dtype)
        self.W = W.detach().to(dt).clone()
        if dead is not None:
            self.W[:, dead.to(W.device)] = 0
        self.Hinv = inverse_hessian(H.to(W.device), percdamp, dt, lower=True)  # lower triangle only
        self.cols = torch.arange(W.shape[1], device=W.device)
        self.alive = torch.ones(W.shape[1], dtype=torch.bool, device=W.device)
        self.count = W.shape[1]  # kept columns
        self.cost = 0.0  # cumulative

    def kept(self) -> list[int]:
        return self.cols[self.alive].tolist()

    def weight(self) -> torch.Tensor:
        """(d_out, count) weights of the kept columns, in the dtype of the input W."""
        return self.W[:, self.alive].to(self.out_dtype)

    def positions(self, cols: list[int]) -> torch.Tensor:
        """Positions of original columns `cols` (all kept) in the active matrices."""
        return torch.searchsorted(self.cols, _index(cols, self.cols.device))

    def group_costs(self, groups: list[list[int]]) -> list[float]:
        """Costs of removing each group of original columns (all groups of one size)."""
        pos = self.positions([c for cols in groups for c in cols]).reshape(len(groups), -1)
        return _group_costs(self.W, self.Hinv, pos, lower=True).tolist()

    def column_scores(self) -> torch.Tensor:
        """(active,) single-column costs ‖W_:j‖² / Hinv_jj, +inf at removed positions."""
        scores = (self.W * self.W).sum(0) / torch.diagonal(self.Hinv).clamp_min(torch.finfo(self.W.dtype).tiny)
        return scores.masked_fill_(~self.alive, float("inf"))

    def remove(self, pos: torch.Tensor) -> float:
        cost = _eliminate_(self.W, self.Hinv, pos, lower=True)
        self.alive[pos] = False
        self.count -= pos.numel()
        self.cost += cost
        if 8 * (self.cols.numel() - self.count) >= self.cols.numel():
            keep = self.alive.nonzero().flatten()
            self.W = self.W[:, keep]
            self.Hinv = self.Hinv.index_select(0, keep).index_select(1, keep)
            self.cols, self.alive = self.cols[keep], self.alive[keep]
        return cost


def neuron_chain(W: torch.Tensor, H: torch.Tensor, record: set[int] | None = None, step: int = 1, *,
                 dead: torch.Tensor | None = None, percdamp: float = 0.01,
                 dtype: torch.dtype | None = None) -> dict[int, ObsState]:
    """Greedy OBS removal of single columns (MLP neurons), from all d_in kept down.

    Each step removes the `step` kept columns of lowest single-column cost ‖W_:j‖² / Hinv_jj
    (ties: lowest index) as one group update; the last step before a recorded count is
    shortened so that every count in `record` is visited exactly. The chain stops at the
    smallest recorded count. step = 1 is exact greedy; larger steps do the same O(d_in³) flops
    as few BLAS-3 products instead of d_in memory-bound rank-1 updates (for d_in ~ 14336 use
    step ~256-512; the Cholesky inverse, ~d_in³ flops, then takes about half the time).

    Args:
        W: (d_out, d_in) weight of the output projection (any float dtype, not modified).
        H: (d_in, d_in) dampened Hessian of its inputs (`HessianAccumulator.hessian`).
        record: kept counts to return, each in [0, d_in]; None records every visited count
            (d_in, d_in − step, …, 0).
        step: columns removed per greedy step (≥ 1).
        dead: optional (d_in,) bool mask of dead inputs, whose weights are zeroed first.
        percdamp: unit of extra damping if H is not positive definite.
        dtype: compute dtype; None follows `compute_dtype(d_in)`.

    Returns:
        {kept count: ObsState(kept columns, weight (d_out, count), cumulative cost)}; the full
        state (if recorded) has the original weights and cost 0.
    """
    d_in = W.shape[1]
    if step < 1:
        raise ValueError(f"step must be at least 1, got {step}")
    every = record is None
    targets = [0] if every else sorted(set(record), reverse=True)
    if targets and not 0 <= targets[-1] <= targets[0] <= d_in:
        raise ValueError(f"recorded counts must lie in [0, {d_in}], got {sorted(targets)}")
    states: dict[int, ObsState] = {}
    if every or (targets and targets[0] == d_in):
        states[d_in] = ObsState(list(range(d_in)), W.detach().clone(), 0.0)
    if not targets or targets[-1] == d_in:
        return states
    act = _Active(W, H, dead, percdamp, dtype)
    for target in targets:
        while act.count > target:
            b = min(step, act.count - target)
            order = torch.sort(act.column_scores(), stable=True).indices
            act.remove(order[:b].sort().values)
            if every:
                states[act.count] = ObsState(act.kept(), act.weight(), act.cost)
        states[target] = ObsState(act.kept(), act.weight(), act.cost)
    return states


def head_columns(heads: list[int], head_dim: int) -> list[int]:
    """Input columns of query heads `heads`: head h owns [h·head_dim, (h+1)·head_dim)."""
    return [h * head_dim + j for h in heads for j in range(head_dim)]


def gqa_head_chain(W: torch.Tensor, H: torch.Tensor, num_kv_heads: int, heads_per_group: int, head_dim: int,
                   params_per_head: int | None = None, params_per_kv_head: int | None = None, *,
                   dead: torch.Tensor | None = None, percdamp: float = 0.01,
                   dtype: torch.dtype | None = None) -> list[ObsState]:
    """Greedy OBS ladder of an attention block under grouped-query attention, full to empty.

    Query head h owns columns [h·hd, (h+1)·hd) of `o_proj` and belongs to KV group
    h // heads_per_group. Legal states keep the same number s ≥ 1 of query heads in every kept
    group (which heads may differ per group), or nothing. Each step takes the candidate of
    lowest cost per parameter removed among

    (a) remove kept group q with its s heads: cost(columns of its heads), saving
        s·params_per_head + params_per_kv_head;
    (b) only while s > 1: remove from every kept group its cheapest remaining head by single
        OBS cost (ties: lowest head), as one group update: cost(their columns), saving
        (#kept groups)·params_per_head.

    Candidates are compared in the order (a) by ascending group, then (b); the first of equal
    cost per parameter wins, so the chain is deterministic.

    Args:
        W: (d_out, num_kv_heads·heads_per_group·head_dim) o_proj weight (not modified).
        H: dampened Hessian of the o_proj inputs, (d_in, d_in).
        num_kv_heads, heads_per_group, head_dim: the attention geometry.
        params_per_head: parameters of one query head (q rows + o columns); default 2·d_out·hd.
        params_per_kv_head: parameters of one KV head (k and v rows); default 2·d_out·hd.
        dead, percdamp, dtype: as in `neuron_chain`.

    Returns:
        Every visited state, full first (original W, cost 0) to empty (kept = [], weight
        (d_out, 0), cost of removing everything); `kept` are query heads, `kv_heads` groups.
    """
    d_out, d_in = W.shape
    num_heads = num_kv_heads * heads_per_group
    if d_in != num_heads * head_dim:
        raise ValueError(f"W has {d_in} input columns, expected {num_kv_heads}·{heads_per_group}·{head_dim}")
    per_head = 2 * d_out * head_dim if params_per_head is None else params_per_head
    per_kv = 2 * d_out * head_dim if params_per_kv_head is None else params_per_kv_head
    groups = {q: list(range(q * heads_per_group, (q + 1) * heads_per_group)) for q in range(num_kv_heads)}
    states = [ObsState(list(range(num_heads)), W.detach().clone(), 0.0, list(range(num_kv_heads)))]
    if num_heads == 0:
        return states
    act = _Active(W, H, dead, percdamp, dtype)
    while groups:
        s = len(next(iter(groups.values())))
        moves = []  # (cost per parameter, removed heads, removed groups), in tie-break order
        costs = act.group_costs([head_columns(heads, head_dim) for heads in groups.values()])
        for (q, heads), cost in zip(groups.items(), costs):
            moves.append((cost / (s * per_head + per_kv), heads, [q]))
        if s > 1:
            heads = [h for hs in groups.values() for h in hs]
            single = dict(zip(heads, act.group_costs([head_columns([h], head_dim) for h in heads])))
            row = [min(hs, key=lambda h: (single[h], h)) for hs in groups.values()]
            cost = act.group_costs([head_columns(row, head_dim)])[0]
            moves.append((cost / (len(groups) * per_head), row, []))
        best = min(range(len(moves)), key=lambda i: (moves[i][0], i))
        _, heads, dropped = moves[best]
        act.remove(act.positions(head_columns(sorted(heads), head_dim)))
        for h in heads:
            groups[h // heads_per_group].remove(h)
        for q in dropped:
            del groups[q]
        kept = sorted(h for hs in groups.values() for h in hs)
        states.append(ObsState(kept, act.weight(), act.cost, sorted(groups)))
    return states
