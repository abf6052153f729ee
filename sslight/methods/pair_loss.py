"""The multi-crop pair loss shared by every method, vectorised over view pairs.

With L_g the summed loss over the P_gg global-global pairs and L_l over the P_gl
global-local pairs, the loss is ``alpha * L_g / P_gg + (1 - alpha) * L_l / P_gl``
(SSLight, alpha = 0.4). With alpha = P_gg / (P_gg + P_gl) every pair weighs
1 / (P_gg + P_gl): the baseline's plain average over pairs. A weight matrix over
(teacher view, student view) pairs encodes this, so a loss is one weighted sum.
"""

from __future__ import annotations

import torch

from sslight.config import AUTO


def pair_counts(teacher_ids, student_ids, n_global: int) -> tuple[int, int]:
    pairs = [(t, s) for t in teacher_ids for s in student_ids if t != s]
    p_gg = sum(1 for _, s in pairs if s < n_global)
    return p_gg, len(pairs) - p_gg


def resolve_alpha(alpha, p_gg: int, p_gl: int) -> float:
    if alpha == AUTO:
        return p_gg / (p_gg + p_gl)
    return float(alpha)


def pair_weights(teacher_ids: list[int], student_ids: list[int], n_global: int, alpha,
                 device=None) -> torch.Tensor:
    """(T, S) weights: view ids index the full view list (globals first); a view is never
    paired with itself; student views below ``n_global`` are globals."""
    p_gg, p_gl = pair_counts(teacher_ids, student_ids, n_global)
    a = resolve_alpha(alpha, p_gg, p_gl) if p_gl else 1.0
    w = torch.zeros(len(teacher_ids), len(student_ids))
    for i, t in enumerate(teacher_ids):
        for j, s in enumerate(student_ids):
            if t != s:
                w[i, j] = a / p_gg if s < n_global else (1 - a) / p_gl
    return w.to(device)


def cross_entropy_pairs(targets: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """(T, S) mean over the batch of -sum_k target * log_prob, for every (teacher, student) view
    pair, as one matmul. ``targets`` (T, B, K) are probabilities, ``log_probs`` (S, B, K)."""
    t, b, k = targets.shape
    return -(targets.reshape(t, b * k) @ log_probs.reshape(-1, b * k).T) / b


def weighted_pair_loss(pair_losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (pair_losses * weights).sum()


def pair_loss_terms(pair_losses: torch.Tensor, weights: torch.Tensor, global_students: int) -> dict:
    """The weighted loss split into its global-global and global-local parts (detached), so a
    bad loss can be traced to the views it came from; the first ``global_students`` student
    columns are global views."""
    weighted = (pair_losses * weights).detach()
    return dict(global_global=weighted[:, :global_students].sum(), global_local=weighted[:, global_students:].sum())
