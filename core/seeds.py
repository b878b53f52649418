"""The one convention for episode seeds: demonstration seeds and evaluation seeds never overlap.

A seed fixes a Meta-World task variation (object and goal positions, see :class:`envs.metaworld.env.MetaWorldEnv`)
and any action noise, so disjoint seeds mean evaluation never replays a demonstrated variation.
"""

from __future__ import annotations

from core.errors import ConfigError

DEMO_SEED_BASE = 0
FINETUNE_SEED_BASE = 50_000  # online fine-tuning's training episodes: the upper half of the demo range
EVAL_SEED_BASE = 100_000


def demo_seeds(n: int, start: int = 0) -> list[int]:
    """``n`` demonstration seeds beginning at offset ``start`` of the demo range."""
    return _range(DEMO_SEED_BASE, EVAL_SEED_BASE, n, start, "demo")


def finetune_seeds(n: int, start: int = 0) -> list[int]:
    """``n`` seeds for online fine-tuning's training episodes (never evaluation seeds, never the first demos)."""
    return _range(FINETUNE_SEED_BASE, EVAL_SEED_BASE, n, start, "fine-tuning")


def eval_seeds(n: int, start: int = 0) -> list[int]:
    """``n`` evaluation seeds beginning at offset ``start`` of the eval range."""
    return _range(EVAL_SEED_BASE, 2**31 - 1, n, start, "eval")


def is_demo_seed(seed: int) -> bool:
    return DEMO_SEED_BASE <= seed < EVAL_SEED_BASE


def _range(base: int, end: int, n: int, start: int, name: str) -> list[int]:
    if n < 0 or start < 0:
        raise ConfigError(f"{name} seeds: n and start must be >= 0, got n={n}, start={start}")
    if base + start + n > end:
        raise ConfigError(f"{name} seeds {base + start}..{base + start + n - 1} leave the {name} range [{base}, {end})")
    return list(range(base + start, base + start + n))
