"""The wall clock in the unit the wire and the logs use: milliseconds since the Unix epoch.

Role: the one reading of the clock outside Bytewax's own. The pure domain never
reads it: its events carry the time they arrived (``at_ms``) from here.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch, now."""
    return time.time_ns() // 1_000_000
