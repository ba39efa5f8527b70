"""Argument checks shared by every module, so an error names the argument, the bad value and what is allowed
in one wording everywhere."""

from __future__ import annotations

import numpy as np

__all__ = ["require_int"]


def require_int(name: str, value: object, minimum: int, *, owner: str | None = None) -> int:
    """Return ``value`` as an int, or raise ``ValueError`` unless it is an integer ``>= minimum`` (bools rejected).

    Examples
    --------
    >>> require_int("n_starts", 4, 0)
    4
    >>> require_int("every_n_steps", 0, 1, owner="BifurcationMonitor")
    Traceback (most recent call last):
    ...
    ValueError: BifurcationMonitor: every_n_steps must be an int >= 1, got 0
    """
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}{name} must be an int >= {minimum}, got {value!r}")
    return int(value)
