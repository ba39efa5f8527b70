"""Run the same Lightning classes under ``lightning.pytorch`` and ``pytorch_lightning``.

The two namespaces ship separate class hierarchies: a ``pytorch_lightning.Trainer`` rejects a
``lightning.pytorch.LightningModule`` (``TypeError: ... Please switch to a single import style``) and
silently skips the hooks of a ``lightning.pytorch.LightningDataModule``.  Our classes therefore keep
their logic in a plain mixin and are built on ``lightning.pytorch``; ``for_namespace`` re-bases
the same mixin on the other namespace's base class on demand.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

__all__ = ["LIGHTNING_NAMESPACES", "for_namespace"]

# The single list of supported import styles; validation errors read it.
LIGHTNING_NAMESPACES = ("lightning.pytorch", "pytorch_lightning")

T = TypeVar("T", bound=type)
_CACHE: dict[tuple[type, str], type] = {}


def for_namespace(cls: T, namespace: str) -> T:
    """Return ``cls`` rebuilt on the Lightning base classes of ``namespace``.

    ``cls`` must be declared as ``class Name(Mixin, lightning.pytorch.<Base>)``, where ``Mixin`` holds
    every method (zero-argument ``super()`` in the mixin then resolves to the new base).  The result is
    cached, so ``for_namespace(C, ns) is for_namespace(C, ns)``.

    Parameters
    ----------
    cls : type
        A class whose last base is a ``lightning.pytorch`` class.
    namespace : str
        One of ``LIGHTNING_NAMESPACES``.

    Returns
    -------
    type
        ``cls`` itself for ``"lightning.pytorch"``, otherwise a sibling class with the same name, mixins
        and docstring whose Lightning base comes from ``namespace``.

    Raises
    ------
    ValueError
        Unknown namespace.
    ImportError
        The namespace's package is not installed.

    Examples
    --------
    >>> import lightning.pytorch as pl
    >>> class _Mixin:
    ...     pass
    >>> class Demo(_Mixin, pl.Callback):
    ...     pass
    >>> for_namespace(Demo, "pytorch_lightning").__mro__[2].__module__.split(".")[0]
    'pytorch_lightning'
    """
    if namespace not in LIGHTNING_NAMESPACES:
        raise ValueError(f"namespace must be one of {', '.join(LIGHTNING_NAMESPACES)}, got {namespace!r}")
    if namespace == "lightning.pytorch":
        return cls
    key = (cls, namespace)
    if key not in _CACHE:
        *mixins, base = cls.__bases__
        if not base.__module__.startswith("lightning.pytorch"):
            raise TypeError(f"{cls.__name__} must list a lightning.pytorch class as its last base, got {base}")
        new_base = getattr(importlib.import_module(namespace), base.__name__)
        _CACHE[key] = type(
            cls.__name__,
            (*mixins, new_base),
            {"__doc__": cls.__doc__, "__module__": cls.__module__, "__qualname__": cls.__qualname__},
        )
    return _CACHE[key]  # type: ignore[return-value]
