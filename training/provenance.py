"""Which code produced a run: recorded in its summary and policy checkpoint, so a success figure or a deployed
policy can be traced to a commit (and flagged when the working tree had uncommitted changes)."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def code_version() -> dict[str, str | None | bool]:
    """``{"package": version, "git_commit": sha or None, "git_dirty": bool or None}``; the git fields are None
    outside a git checkout (an installed wheel). Dirty: files differ from the commit, or new files not ignored.
    Cached: the first call names the code this process imported, so call it when a run starts, not when it ends."""
    try:
        package = metadata.version("meanflow-policy")
    except metadata.PackageNotFoundError:
        package = None
    # Only this package's own checkout counts, not a repository that happens to enclose an installed copy.
    top = _git("rev-parse", "--show-toplevel")
    commit = _git("rev-parse", "HEAD") if top and Path(top).resolve() == REPO else None
    status = _git("status", "--porcelain") if commit else None
    return {"package": package, "git_commit": commit, "git_dirty": None if status is None else bool(status)}
