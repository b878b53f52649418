"""Write files and directories so that readers, and a process killed half-way, see the old or the new contents,
never a torn file or no file at all.

A file is written beside its path and renamed over it (:func:`write_text`). For a directory, two renames (old out,
new in) leave a moment with no directory at all: a run killed there has no checkpoint, and an evaluation started
there fails. On Linux the kernel swaps two paths in one step (``renameat2`` with
``RENAME_EXCHANGE``); elsewhere, or on a file system without it, the two renames are the fallback and a checkpoint
caught between them is found beside its path as ``.<name>.old-<pid>`` (:func:`interrupted_swap` names it).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from core.errors import MfpError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths atomically; False where the platform or file system cannot (nothing is changed)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the finished directory ``new`` to ``dest`` (a sibling), replacing any ``dest`` atomically.

    The files of ``new`` are flushed to disk first, so a power loss cannot leave ``dest`` pointing at empty files."""
    new, dest = Path(new), Path(dest)
    for file in new.iterdir():
        if file.is_file():
            _fsync(file)
    _fsync(new)
    if not dest.exists():
        os.rename(new, dest)
    elif exchange(new, dest):
        _remove(new)  # now holds the replaced contents (a directory, or a file the caller chose to replace)
    else:
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
        os.rename(new, dest)
        _remove(old)
    _fsync(dest.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file to write that replaces ``path`` (temporary sibling, fsync, rename) only when the block ends without an
    error; otherwise ``path`` keeps its contents and the temporary is removed. The parent is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (:func:`open_atomic`)."""
    with open_atomic(path) as f:
        f.write(text)


def interrupted_swap(dest: str | os.PathLike) -> Path | None:
    """The previous ``dest`` left beside it by a fallback swap that was killed between its two renames, if any."""
    dest = Path(dest)
    found = sorted(dest.parent.glob(f".{dest.name}.old-*")) if dest.parent.is_dir() else []
    return found[-1] if found and not dest.exists() else None


class OutputError(MfpError, FileExistsError, ValueError):
    """An output path that would overwrite something the command did not make, or one of its own inputs."""


def check_output(
    out: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
    what: str = "out",
    ours: Callable[[Path], bool] | None = None,
    offer_overwrite: bool = True,
) -> None:
    """Refuse to write ``out`` unless it is new, an empty directory, something this command made before (``ours``
    says so) or ``overwrite`` is set; and never when it is, contains or lies inside one of ``inputs`` (writing
    there would destroy what the command reads).

    Call it before the first write: it changes nothing.
    """
    target = Path(out).resolve()
    for source in inputs:
        src = Path(source).resolve()
        if target == src or src.is_relative_to(target) or target.is_relative_to(src):
            raise OutputError(f"{what}={out} is, contains or lies inside the input '{source}'; choose another {what}")
    if not target.exists():
        return
    if target.is_dir() and not any(target.iterdir()):
        return
    if overwrite or (ours is not None and ours(target)):
        return
    kind = "a non-empty directory" if target.is_dir() else "an existing file"
    advice = "choose a new path or pass overwrite=true to replace it" if offer_overwrite else "choose a new path"
    raise OutputError(f"{what}={out} is {kind} this command did not make; {advice}")
