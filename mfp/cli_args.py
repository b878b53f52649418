"""``key=value`` command-line overrides onto a typed dataclass (hydra style, via OmegaConf); unknown keys fail."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TypeVar, cast

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.errors import ConfigError

T = TypeVar("T")


def full_errors() -> bool:
    """True when the user asked for tracebacks (``--debug``, or hydra's ``HYDRA_FULL_ERROR=1``)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(prefix: str, error: BaseException) -> str:
    """``prefix: message`` on one line (a multi-line message is joined with '; ')."""
    text = "; ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return f"{prefix}: {text or type(error).__name__}"


def usage(schema: type, command: str) -> str:
    """One line per field: name, type and default, plus the field's ``help`` metadata."""
    lines = [f"usage: {command} [key=value ...]", ""]
    if schema.__doc__ and not schema.__doc__.startswith(schema.__name__ + "("):
        lines += [schema.__doc__.strip(), ""]
    for f in dataclasses.fields(schema):  # ClassVar attributes (e.g. REMOVED) are not fields
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        )
        type_name = getattr(f.type, "__name__", str(f.type))
        lines.append(f"  {f'{f.name}={default}':<28} {type_name:<6} {f.metadata.get('help', '')}".rstrip())
    return "\n".join(lines)


def parse_overrides(schema: type[T], argv: Sequence[str], command: str) -> T:
    """Merge ``argv`` (``key=value`` items) onto ``schema``'s defaults and build the dataclass.

    ``-h``/``--help`` prints :func:`usage` and exits 0; an unknown key, a bad value, a removed setting or a missing
    required field (default ``"???"``) is a :class:`ConfigError` naming it (one line; exit 2 at the command line).
    """
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage(schema, command))
        raise SystemExit(0)
    removed = getattr(schema, "REMOVED", {})
    gone = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in removed]
    if gone:
        raise ConfigError(f"'{gone[0]}' was removed: {removed[gone[0]]}")
    bad = [a for a in argv if "=" not in a or a.startswith("=")]
    if bad:
        raise ConfigError(f"arguments must be key=value, got {bad} (`{command} --help` lists the keys)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_cli(argv))
        return cast(T, OmegaConf.to_object(merged))
    except ConfigError:
        raise
    except (OmegaConfBaseException, ValueError, TypeError) as e:
        raise ConfigError(f"{omegaconf_message(e)} (`{command} --help` lists the keys)") from None


def omegaconf_message(error: BaseException) -> str:
    """An omegaconf/hydra error (and its causes) in one line, naming the key it is about."""
    lines: list[str] = []
    key = None
    cause: BaseException | None = error
    while cause is not None:
        for line in str(cause).splitlines():
            line = line.strip().rstrip(".")
            if line.startswith("Config search path"):
                break
            if line.startswith("full_key:"):
                key = key or line.split(":", 1)[1].strip()
            elif line and not line.startswith(("object_type=", "reference_type=")) and line not in lines:
                lines.append(line)
        cause = cause.__cause__
    message = "; ".join(lines).replace(":;", ":")
    return f"{message} (key '{key}')" if key and f"'{key}'" not in message else message
