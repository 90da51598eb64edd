"""The small optimisation problems inside the gradient-level weightings, as plain tensor functions.

Each takes the stacked task gradients ``G`` (``(T, P)``, row t is ``g_t``) and works through the T×T Gram
matrix ``M = G Gᵀ`` where it can, so its cost does not grow with the number of parameters. Chapter 7
derives each one; the checks of its exercises compare with these.
"""
from __future__ import annotations

import torch


def _two_point(aa: torch.Tensor, bb: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """``γ ∈ [0, 1]`` minimising ``‖γ a + (1 − γ) b‖²`` from the inner products ``a·a, b·b, a·b``:
    ``γ = clip((b − a)·b / ‖a − b‖², 0, 1)`` (MGDA-UB, Sener & Koltun 2018, Alg. 1)."""
    denom = aa + bb - 2 * ab
    if denom <= 0:          # a == b: every point of the segment is the same
        return torch.zeros((), dtype=aa.dtype)
    return ((bb - ab) / denom).clamp(0.0, 1.0)


def min_norm_two(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """The two-task MGDA weights ``(α₁, α₂)``: ``α₁ = clip((g₂ − g₁)·g₂ / ‖g₁ − g₂‖², 0, 1)``, ``α₂ = 1 − α₁``;
    ``α₁ g₁ + α₂ g₂`` is the point of the segment ``[g₁, g₂]`` nearest to the origin."""
    g1, g2 = g1.reshape(-1).double(), g2.reshape(-1).double()
    a1 = _two_point(g1 @ g1, g2 @ g2, g1 @ g2)
    return torch.stack([a1, 1 - a1])


def min_norm(grads: torch.Tensor, method: str = "frank_wolfe", iterations: int = 1000, tol: float = 1e-6
             ) -> torch.Tensor:
    """MGDA's min-norm weights ``α ∈ Δ`` minimising ``‖Σ_t α_t g_t‖²`` (Sener & Koltun 2018).

    Two tasks: the closed form (:func:`min_norm_two`). More, ``method="frank_wolfe"`` (the paper's Alg. 2):
    from uniform weights, each iteration moves towards the vertex ``e_t̂`` with the smallest ``(Mα)_t`` by
    the exact line search of the two-point problem, until the Frank–Wolfe duality gap
    ``αᵀMα − min_t (Mα)_t`` (at least half the distance of ``‖Σ α g‖²`` to its minimum) falls below
    ``tol · αᵀMα``.
    ``method="exact"``: every face of the simplex is tried (the affine min-norm point of each subset of
    tasks, kept if its weights are non-negative), for T up to 12."""
    g = grads.reshape(grads.shape[0], -1).double()
    t = g.shape[0]
    if t == 1:
        return torch.ones(1, dtype=torch.float64)
    if t == 2:
        return min_norm_two(g[0], g[1])
    m = g @ g.T
    if method == "exact":
        return _min_norm_exact(m)
    if method != "frank_wolfe":
        raise ValueError(f"method must be 'frank_wolfe' or 'exact', got {method!r}")
    alpha = torch.full((t,), 1.0 / t, dtype=torch.float64)
    for _ in range(iterations):
        m_alpha = m @ alpha
        value = alpha @ m_alpha
        vertex = int(torch.argmin(m_alpha))
        if float(value - m_alpha[vertex]) <= tol * max(float(value), 1e-30):
            break
        # the current point θ = Σ α g against g_vertex: θ·θ = αᵀMα, g·g = M_tt, θ·g = (Mα)_t
        gamma = _two_point(m[vertex, vertex], value, m_alpha[vertex])
        alpha = (1 - gamma) * alpha
        alpha[vertex] += gamma
    return alpha


def _min_norm_exact(m: torch.Tensor) -> torch.Tensor:
    """Exact min-norm weights from the Gram matrix by trying every face of the simplex."""
    import itertools

    t = m.shape[0]
    if t > 12:
        raise ValueError(f"the exact min-norm solver tries 2^T faces; T = {t} is too many (use frank_wolfe)")
    best, best_value = None, float("inf")
    for size in range(1, t + 1):
        for subset in itertools.combinations(range(t), size):
            idx = list(subset)
            sub = m[idx][:, idx]
            # minimise aᵀ sub a s.t. Σa = 1: sub a = λ 1 -> a ∝ sub⁺ 1
            a = torch.linalg.pinv(sub) @ torch.ones(size, dtype=m.dtype)
            if float(a.sum()) <= 0:
                continue
            a = a / a.sum()
            if bool((a < -1e-12).any()):
                continue
            alpha = torch.zeros(t, dtype=m.dtype)
            alpha[idx] = a.clamp_min(0.0) / a.clamp_min(0.0).sum()
            value = float(alpha @ m @ alpha)
            if value < best_value - 1e-15:
                best, best_value = alpha, value
    return best


def pcgrad(grads: torch.Tensor, order: list[list[int]] | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad's projected gradients (Yu et al. 2020, Alg. 1), returned stacked ``(T, P)``; the update is
    their sum. For each task i: ``g_i' = g_i``; for every other task j in a random order, if
    ``g_i'·g_j < 0`` (a conflict), ``g_i' ← g_i' − (g_i'·g_j / ‖g_j‖²) g_j``. ``order[i]`` fixes the order of
    the others for task i (default: a random permutation per task, from ``generator``)."""
    g = grads.reshape(grads.shape[0], -1)
    t = g.shape[0]
    out = g.clone()
    for i in range(t):
        others = order[i] if order is not None else \
            [j for j in torch.randperm(t, generator=generator).tolist() if j != i]
        for j in others:
            dot = out[i] @ g[j]
            if dot < 0:
                out[i] = out[i] - dot / (g[j] @ g[j]).clamp_min(1e-20) * g[j]
    return out.reshape(grads.shape)


def _project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto the probability simplex (sort-based, exact)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1
    k = torch.arange(1, len(v) + 1, dtype=v.dtype)
    rho = int(torch.nonzero(u - css / k > 0)[-1])
    return (v - css[rho] / (rho + 1)).clamp_min(0.0)


def _cagrad_dual(m: torch.Tensor, b: torch.Tensor, sqrt_phi: float, w: torch.Tensor, iterations: int
                 ) -> torch.Tensor:
    """Minimise ``F(w) = bᵀw + √φ √(wᵀMw)`` over the simplex: projected gradient descent with a
    backtracking (Armijo) step, so F never increases."""
    def value(v: torch.Tensor) -> torch.Tensor:
        return b @ v + sqrt_phi * (v @ m @ v).clamp_min(0.0).sqrt()

    step = 1.0 / (float(m.diagonal().max()) + float(b.abs().max()) + 1e-30)
    f = value(w)
    for _ in range(iterations):
        norm = (w @ m @ w).clamp_min(1e-30).sqrt()
        grad = b + sqrt_phi * (m @ w) / norm
        while True:
            candidate = _project_simplex(w - step * grad)
            f_new = value(candidate)
            if f_new <= f - 1e-4 * float(grad @ (w - candidate)) or step < 1e-30:
                break
            step *= 0.5
        if float((candidate - w).abs().sum()) < 1e-14:
            break
        w, f = candidate, f_new
        step *= 2.0
    return w


def cagrad(grads: torch.Tensor, c: float = 0.4, rescale: int = 1, iterations: int = 300
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """CAGrad's update (Liu et al. 2021): ``d = g₀ + (√φ / ‖g_w‖) g_w`` with ``g₀`` the mean gradient,
    ``φ = c²‖g₀‖²`` and ``w ∈ Δ`` minimising the dual ``g_wᵀ g₀ + √φ ‖g_w‖`` (``g_w = Σ_t w_t g_t``),
    solved on the Gram matrix by projected gradient descent. ``d`` maximises the worst task's
    improvement ``min_t ⟨g_t, d⟩`` within ``‖d − g₀‖ ≤ c‖g₀‖``; ``c = 0`` gives ``g₀``. ``rescale``: the
    authors' division of d by ``1 + c²`` (1), ``1 + c`` (2) or nothing (0). Returns ``(d, w)``."""
    g = grads.reshape(grads.shape[0], -1).double()
    t = g.shape[0]
    g0 = g.mean(0)
    m = g @ g.T
    b = g @ g0                                  # g_tᵀ g₀
    sqrt_phi = c * g0.norm()
    w = torch.full((t,), 1.0 / t, dtype=torch.float64)
    if c > 0:
        w = _cagrad_dual(m, b, float(sqrt_phi), w, iterations)
    gw = w @ g
    d = g0 + (sqrt_phi / gw.norm().clamp_min(1e-20)) * gw if c > 0 else g0
    if rescale == 1:
        d = d / (1 + c ** 2)
    elif rescale == 2:
        d = d / (1 + c)
    elif rescale != 0:
        raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}")
    return d.reshape(grads.shape[1:]).to(grads.dtype), w
