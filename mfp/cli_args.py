"""``key=value`` command-line overrides onto a typed dataclass (hydra style, via OmegaConf); unknown keys fail."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import TypeVar, cast

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


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

    ``-h``/``--help`` prints :func:`usage` and exits 0; an unknown key, a bad value or a missing required field
    (default ``"???"``) exits 2 with a message naming it.
    """
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage(schema, command))
        raise SystemExit(0)
    removed = getattr(schema, "REMOVED", {})
    gone = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in removed]
    if gone:
        print(f"{command}: '{gone[0]}' was removed: {removed[gone[0]]}", file=sys.stderr)
        raise SystemExit(2)
    bad = [a for a in argv if "=" not in a or a.startswith("=")]
    if bad:
        print(f"{command}: arguments must be key=value, got {bad}\n\n{usage(schema, command)}", file=sys.stderr)
        raise SystemExit(2)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_cli(argv))
        return cast(T, OmegaConf.to_object(merged))
    except (OmegaConfBaseException, ValueError, TypeError) as e:
        print(f"{command}: {e}\n\n{usage(schema, command)}", file=sys.stderr)
        raise SystemExit(2) from None
