"""Learning-rate schedule: linear warm-up then polynomial decay, by iteration."""

from __future__ import annotations


def poly_lr(
    iteration: int,
    total_iterations: int,
    base_lr: float,
    power: float = 0.9,
    warmup_iterations: int = 0,
    warmup_ratio: float = 0.1,
    min_lr: float = 0.0,
) -> float:
    """Learning rate at ``iteration`` (0-based) of ``total_iterations``.

    During warm-up the rate rises linearly from ``warmup_ratio * base_lr`` to ``base_lr``;
    afterwards it follows ``base_lr * (1 - t / T) ** power`` (t counted from the start, as in
    the official code), never below ``min_lr``.
    """
    if iteration < warmup_iterations:
        fraction = iteration / max(1, warmup_iterations)
        return base_lr * (warmup_ratio + (1.0 - warmup_ratio) * fraction)
    progress = min(iteration, total_iterations) / max(1, total_iterations)
    return max(min_lr, base_lr * (1.0 - progress) ** power)
