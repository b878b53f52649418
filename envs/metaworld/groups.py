"""Meta-World difficulty groups (Seo et al. 2022, "Masked World Models"; the grouping DP3 and MP1 report by).

Data only: ``difficulty(task)`` names a task's group, ``tasks_by_group()`` lists all 50 v3 tasks by group. Both check
the tables against metaworld's own task list first, so a renamed task fails loudly instead of silently counting as
"easy".

DESIGN section 5 names the Medium and Hard tasks that MP1's tables use (4 each); Seo et al.'s published grouping,
which DP3 and LeRobot follow, also puts basketball, bin-picking, box-close, coffee-push, push-wall, sweep and
sweep-into in Medium and pick-out-of-hole and push-back in Hard. Those tasks are placed here as Seo et al. place
them (the DESIGN lists are a subset of these), so an Easy average never contains a Medium or Hard task.
"""

from __future__ import annotations

from functools import lru_cache

GROUPS = ("easy", "medium", "hard", "very_hard")
GROUP_LABELS = {"easy": "Easy", "medium": "Medium", "hard": "Hard", "very_hard": "Very hard"}

# Task base names (without "-v3"); every task not listed here is Easy.
MEDIUM = (
    "basketball",
    "bin-picking",
    "box-close",
    "coffee-pull",
    "coffee-push",
    "hammer",
    "peg-insert-side",
    "push-wall",
    "soccer",
    "sweep",
    "sweep-into",
)
HARD = ("assembly", "hand-insert", "pick-out-of-hole", "pick-place", "push", "push-back")
VERY_HARD = ("disassemble", "pick-place-wall", "shelf-place", "stick-pull", "stick-push")
VERSION_SUFFIX = "-v3"

_NON_EASY: dict[str, str] = {
    **{name: "medium" for name in MEDIUM},
    **{name: "hard" for name in HARD},
    **{name: "very_hard" for name in VERY_HARD},
}


@lru_cache(maxsize=1)
def _checked_task_names() -> tuple[str, ...]:
    """metaworld's v3 task names, after checking every non-Easy entry above is one of them."""
    from envs.metaworld.env import task_names

    names = tuple(task_names())
    missing = sorted(f"{base}{VERSION_SUFFIX}" for base in _NON_EASY if f"{base}{VERSION_SUFFIX}" not in names)
    if missing:
        raise RuntimeError(f"difficulty tables name tasks this metaworld does not have: {', '.join(missing)}")
    return names


def difficulty(task: str) -> str:
    """The difficulty group (one of :data:`GROUPS`) of a Meta-World v3 task; unknown names list close matches."""
    from envs.metaworld.env import check_task

    _checked_task_names()
    check_task(task)  # raises UnknownTaskError with close matches
    return _NON_EASY.get(task.removesuffix(VERSION_SUFFIX), "easy")


def tasks_by_group() -> dict[str, list[str]]:
    """All v3 tasks by group, in :data:`GROUPS` order, each list in metaworld's order."""
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    for task in _checked_task_names():
        groups[_NON_EASY.get(task.removesuffix(VERSION_SUFFIX), "easy")].append(task)
    return groups
