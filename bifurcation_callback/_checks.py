"""Argument checks shared by every module, so an error names the argument, the bad value and what is allowed
in one wording everywhere.

Each ``require_*`` returns the value normalised (a plain ``int``, ``float``, ``bool``, ``torch.dtype``) or raises
``ValueError`` (``TypeError`` for a wrong kind of object where the caller asked for that).  ``owner`` prefixes the
message with the class or function that received the argument, e.g. ``"BifurcationMonitor: ..."``.
``optional=True`` lets ``None`` through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "FLOAT_DTYPES",
    "require_int",
    "require_int_sequence",
    "require_real",
    "require_bool",
    "require_choice",
    "require_text",
    "require_monitor_max_order",
    "require_dtype",
    "finite_or_none",
    "FINDER_KEYS",
    "check_finder_kwargs",
]

# The finder's precisions and the spellings accepted for them: "float32", torch.float32 and np.float32 all work,
# so a dtype read from a YAML/CLI config is not a silent run-time failure.
FLOAT_DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}


def _prefix(owner: str | None) -> str:
    return f"{owner}: " if owner else ""


def require_int(
    name: str,
    value: object,
    minimum: int | None = None,
    *,
    maximum: int | None = None,
    owner: str | None = None,
    optional: bool = False,
) -> Any:
    """Return ``value`` as an int, or raise ``ValueError`` unless it is an integer in ``[minimum, maximum]``
    (bools rejected).

    Examples
    --------
    >>> require_int("n_starts", 4, 0)
    4
    >>> require_int("every_n_steps", 0, 1, owner="BifurcationMonitor")
    Traceback (most recent call last):
    ...
    ValueError: BifurcationMonitor: every_n_steps must be an int >= 1, got 0
    """
    if optional and value is None:
        return None
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_int or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = [f">= {minimum}"] if minimum is not None else []
        bounds += [f"<= {maximum}"] if maximum is not None else []
        wanted = "an int" + (" " + " and ".join(bounds) if bounds else "") + (" or None" if optional else "")
        raise ValueError(f"{_prefix(owner)}{name} must be {wanted}, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def require_int_sequence(name: str, value: object, minimum: int = 1, *, owner: str | None = None) -> tuple[int, ...]:
    """Return ``value`` as a sorted tuple of distinct ints ``>= minimum``, or raise ``ValueError`` (an empty
    sequence, a string, a repeated or out-of-range value).

    Examples
    --------
    >>> require_int_sequence("jump_scales", [10, 1, 3])
    (1, 3, 10)
    >>> require_int_sequence("jump_scales", [1, 1], owner="BifurcationMonitor")
    Traceback (most recent call last):
    ...
    ValueError: BifurcationMonitor: jump_scales must be a non-empty sequence of distinct ints >= 1, got [1, 1]
    """
    values = () if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) else tuple(value)
    valid = [isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= minimum for v in values]
    if not values or not all(valid) or len(set(values)) < len(values):
        raise ValueError(f"{_prefix(owner)}{name} must be a non-empty sequence of distinct ints >= {minimum}, got {value!r}")
    return tuple(sorted(int(v) for v in values))


def require_real(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    exclusive_minimum: bool = False,
    maximum: float | None = None,
    owner: str | None = None,
    optional: bool = False,
) -> Any:
    """Return ``value`` as a finite float, or raise ``ValueError`` (bools, strings, NaN and inf rejected).

    ``exclusive_minimum=True`` asks for ``value > minimum`` instead of ``>=``.

    Examples
    --------
    >>> require_real("jump_min_change", 1, minimum=0.0)
    1.0
    >>> require_real("time_budget_s", True, minimum=0.0, exclusive_minimum=True, optional=True)
    Traceback (most recent call last):
    ...
    ValueError: time_budget_s must be a finite number > 0.0 or None, got True
    """
    if optional and value is None:
        return None
    is_real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = is_real and math.isfinite(float(value))  # type: ignore[arg-type]
    if ok and minimum is not None:
        ok = float(value) > minimum if exclusive_minimum else float(value) >= minimum  # type: ignore[arg-type]
    if ok and maximum is not None:
        ok = float(value) <= maximum  # type: ignore[arg-type]
    if not ok:
        bounds = [f"{'>' if exclusive_minimum else '>='} {minimum}"] if minimum is not None else []
        bounds += [f"<= {maximum}"] if maximum is not None else []
        wanted = "a finite number" + (" " + " and ".join(bounds) if bounds else "") + (" or None" if optional else "")
        raise ValueError(f"{_prefix(owner)}{name} must be {wanted}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def require_bool(name: str, value: object, *, owner: str | None = None) -> bool:
    """Return ``value`` if it is a bool (numpy bools too), else raise ``ValueError``.

    Examples
    --------
    >>> require_bool("localize_events", False)
    False
    >>> require_bool("localize_events", 1)
    Traceback (most recent call last):
    ...
    ValueError: localize_events must be True or False, got 1
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{_prefix(owner)}{name} must be True or False, got {value!r}")
    return bool(value)


def require_choice(
    name: str, value: object, choices: Iterable[Any], *, owner: str | None = None, optional: bool = False
) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them.

    Examples
    --------
    >>> require_choice("training", "gtf", ("bptt", "stf", "gtf"))
    'gtf'
    >>> require_choice("training", "tf", ("bptt", "stf", "gtf"))
    Traceback (most recent call last):
    ...
    ValueError: training must be one of 'bptt', 'stf', 'gtf', got 'tf'
    """
    allowed = tuple(choices)
    if optional and value is None:
        return None
    # True == 1: a bool is allowed only where a bool itself is a choice.
    valid = any(c == value and isinstance(c, bool) == isinstance(value, bool) for c in allowed)
    if not valid:
        listed = ", ".join(repr(c) for c in allowed) + (" or None" if optional else "")
        raise ValueError(f"{_prefix(owner)}{name} must be one of {listed}, got {value!r}")
    return value


def require_dtype(name: str, value: object, *, owner: str | None = None) -> torch.dtype:
    """Return the ``torch.dtype`` for a floating precision the finder supports.

    Accepts ``torch.float64`` / ``torch.float32``, their numpy twins and the strings ``"float64"`` /
    ``"float32"`` (``"torch.float32"`` too).

    Examples
    --------
    >>> require_dtype("dtype", "float32")
    torch.float32
    >>> require_dtype("dtype", torch.float16)
    Traceback (most recent call last):
    ...
    ValueError: dtype must be one of torch.float64, torch.float32 (or 'float64', 'float32'), got torch.float16
    """
    if isinstance(value, torch.dtype) and value in FLOAT_DTYPES.values():
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in FLOAT_DTYPES:
        return FLOAT_DTYPES[value.removeprefix("torch.")]
    if isinstance(value, type) and issubclass(value, np.floating) and np.dtype(value).name in FLOAT_DTYPES:
        return FLOAT_DTYPES[np.dtype(value).name]
    if isinstance(value, np.dtype) and value.name in FLOAT_DTYPES:
        return FLOAT_DTYPES[value.name]
    torch_names = ", ".join(str(d) for d in FLOAT_DTYPES.values())
    strings = ", ".join(repr(s) for s in FLOAT_DTYPES)
    raise ValueError(f"{_prefix(owner)}{name} must be one of {torch_names} (or {strings}), got {value!r}")


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float when finite, else None: strict JSON and the loggers take no NaN or inf.

    Examples
    --------
    >>> finite_or_none(2), finite_or_none(float("nan")), finite_or_none(None)
    (2.0, None, None)
    """
    return float(value) if value is not None and math.isfinite(value) else None


# The single list of find_cycles options a user may override; validation and its error message read it.
FINDER_KEYS: tuple[str, ...] = ("device", "dtype", "exhaustive_limit", "inner", "n_starts", "outer")


def check_finder_kwargs(finder_kwargs: object, *, owner: str | None = None) -> dict[str, Any]:
    """Validate and normalise overrides of the finder's options.

    Parameters
    ----------
    finder_kwargs : mapping or None
        Keys from ``FINDER_KEYS``: ``n_starts``, ``inner``, ``outer`` (ints >= 1), ``dtype`` (``torch.float64``
        / ``torch.float32`` or their names) and ``device`` (``torch.device``, a device string or None).
    owner : str, optional
        Prefix of the error message (the class that received the argument).

    Returns
    -------
    dict
        A new dict with ``dtype`` as a ``torch.dtype`` and ``device`` as a ``torch.device``.

    Raises
    ------
    ValueError
        Not a mapping, an unknown key (the message lists the allowed ones) or a bad value.

    Examples
    --------
    >>> check_finder_kwargs({"dtype": "float32", "n_starts": 8})
    {'dtype': torch.float32, 'n_starts': 8}
    >>> check_finder_kwargs({"speed": 2})
    Traceback (most recent call last):
    ...
    ValueError: finder_kwargs has unknown keys ['speed']; allowed: ['device', 'dtype', 'exhaustive_limit', 'inner', 'n_starts', 'outer']
    """
    prefix = f"{owner}: " if owner else ""
    if finder_kwargs is None:
        return {}
    if not isinstance(finder_kwargs, Mapping):
        raise ValueError(f"{prefix}finder_kwargs must be a dict or None, got {finder_kwargs!r}")
    unknown = sorted(set(finder_kwargs) - set(FINDER_KEYS), key=str)
    if unknown:
        raise ValueError(f"{prefix}finder_kwargs has unknown keys {unknown}; allowed: {list(FINDER_KEYS)}")
    checked: dict[str, Any] = {}
    for key, value in finder_kwargs.items():
        name = f"finder_kwargs[{key!r}]"
        if key == "dtype":
            checked[key] = require_dtype(name, value, owner=owner)
        elif key == "device":
            checked[key] = _device(name, value, prefix)
        else:  # exhaustive_limit 0 turns enumeration off; the search itself needs at least one start
            checked[key] = require_int(name, value, 0 if key == "exhaustive_limit" else 1, owner=owner)
    return checked


def _device(name: str, value: object, prefix: str) -> torch.device | None:
    if value is None or isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        try:
            return torch.device(value)
        except (RuntimeError, ValueError):
            pass
    raise ValueError(f"{prefix}{name} must be a torch.device, a device string such as 'cpu' or None, got {value!r}")


def require_text(name: str, value: object, *, optional: bool = False, owner: str = "") -> str | None:
    """``value`` when it is a non-empty string (or None with ``optional``), else a ValueError naming it.

    >>> require_text("loss_key", "train_loss")
    'train_loss'
    """
    if optional and value is None:
        return None
    if not isinstance(value, str) or not value:
        wanted = "a non-empty string" + (" or None" if optional else "")
        raise ValueError(f"{_prefix(owner)}{name} must be {wanted}, got {value!r}")
    return value


# The monitor searches every order up to max_order at every monitored step: beyond this it refuses.
MONITOR_MAX_ORDER_LIMIT = 1000
# Jacobian products of the monitor's first search above which it warns (minutes to hours of work).
FIRST_SEARCH_WARNING_PRODUCTS = 2e9


def require_monitor_max_order(max_order: object, *, chains: int, owner: str = "") -> tuple[int, str | None]:
    """The monitor's ``max_order`` checked (an int from 1 to ``MONITOR_MAX_ORDER_LIMIT``), and a warning when
    its first search would take minutes or more (None otherwise).  ``chains``: the first search's chains per
    order (``n_starts * inner * outer`` of ``tracking.THOROUGH_SEARCH``), each of ``k`` products at order ``k``.

    >>> require_monitor_max_order(4, chains=256 * 20 * 4)
    (4, None)
    """
    order = require_int("max_order", max_order, 1, owner=owner)
    products = chains * order * (order + 1) / 2
    if order > MONITOR_MAX_ORDER_LIMIT:
        raise ValueError(
            f"{_prefix(owner)}max_order must be at most {MONITOR_MAX_ORDER_LIMIT}, got {max_order}: every order is "
            f"searched at every monitored step, and the first search alone would multiply {products:.1e} Jacobians; "
            "for long cycles use find_cycles(model, orders=[...]) on checkpoints"
        )
    if products <= FIRST_SEARCH_WARNING_PRODUCTS:
        return order, None
    return order, (f"{_prefix(owner)}max_order={order} makes the first search multiply about {products:.1e} Jacobians "
                   "(minutes to hours); a lower max_order keeps the monitor quick")
