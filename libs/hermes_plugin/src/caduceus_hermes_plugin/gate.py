"""The executor's last check: Hermes runs a tool here only for the call the executor just authorized.

The executor verifies a decision, then authorizes exactly that call on its own
thread; the plugin's middleware refuses every other execution in the process
(a tool a tool starts, a stray import, a second use), so nothing runs on the
workspace without a decision.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from caduceus_contracts import canonical_json

_local = threading.local()


def _fingerprint(tool: str, args: dict[str, Any]) -> bytes:
    try:
        from model_tools import (
            coerce_tool_args,  # Hermes coerces before middleware sees the args
        )

        args = coerce_tool_args(tool, copy.deepcopy(args))
    except Exception:
        pass
    return canonical_json({"tool": tool, "args": args})


@contextmanager
def authorized(tool: str, args: dict[str, Any]) -> Iterator[None]:
    """Allow one execution of this exact call on this thread, for the duration of the block."""
    _local.allowed = _fingerprint(tool, args)
    try:
        yield
    finally:
        _local.allowed = None


def consume(tool: str, args: dict[str, Any]) -> bool:
    """True once for the authorized call on this thread; False for anything else."""
    allowed = getattr(_local, "allowed", None)
    if allowed is None:
        return False
    try:
        matches = allowed == canonical_json({"tool": tool, "args": args})
    except Exception:
        matches = False
    if matches:
        _local.allowed = None
    return matches
