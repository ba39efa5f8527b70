"""Localise a bifurcation between two weight snapshots by bisection along the straight line joining them.

Detection (``events.detect_bifurcations``) brackets an event between two training steps; ``localize``
finds the parameter ``t*`` on ``θ(t) = (1 − t) θ_a + t θ_b`` where the set of cycles changes, to a
tolerance, and places the events at the matching sub-step position inside their bracket.
This module imports neither Lightning nor TensorBoard.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .._search import _region_count_bound
from ..cycles import CycleSet, _free_finder_kwargs, _prepare_model, exhaustive_cycles, find_cycles
from ..models import detached_copy, model_from_state, require_piecewise_linear
from .events import BifurcationEvent, detect_bifurcations

__all__ = ["EXHAUSTIVE_LIMIT", "Localization", "localize"]

# Exhaustive enumeration is used along a path when R**max_order sequences per evaluation stay below this.
EXHAUSTIVE_LIMIT = 100_000


@dataclass(frozen=True)
class Localization:
    """Where, along ``θ(t) = (1 − t) θ_a + t θ_b``, the set of cycles changes.

    Attributes
    ----------
    t_lo, t_hi : float
        The final bracket: the signature differs between ``t_lo`` and ``t_hi``; ``t_hi - t_lo <= tol``
        when converged.
    t_star : float
        Midpoint of the bracket.
    converged : bool
        False when there was nothing to localise (equal endpoint signatures); ``reason`` says why.
    n_evaluations : int
        Cycle searches made (two endpoints included).
    events : tuple[BifurcationEvent, ...]
        ``detect_bifurcations`` between the bracket ends, with ``location`` set to the position of
        ``t_star`` inside ``step_interval``.
    step_interval : tuple[int, int]
        The training steps of the two snapshots (``(0, 1)`` by default).
    reason : str
        Empty when converged.
    """

    t_lo: float
    t_hi: float
    t_star: float
    converged: bool
    n_evaluations: int
    events: tuple[BifurcationEvent, ...] = ()
    step_interval: tuple[int, int] = (0, 1)
    reason: str = ""

    @property
    def location(self) -> float:
        """``t_star`` mapped into ``step_interval``."""
        lo, hi = self.step_interval
        return lo + self.t_star * (hi - lo)

    def to_dict(self) -> dict:
        """JSON-ready dict; ``from_dict`` inverts it."""
        return {
            "t_lo": self.t_lo,
            "t_hi": self.t_hi,
            "t_star": self.t_star,
            "converged": self.converged,
            "n_evaluations": self.n_evaluations,
            "events": [event.to_dict() for event in self.events],
            "step_interval": list(self.step_interval),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Localization":
        """Inverse of ``to_dict``."""
        lo, hi = data.get("step_interval", (0, 1))
        return cls(
            t_lo=float(data["t_lo"]),
            t_hi=float(data["t_hi"]),
            t_star=float(data["t_star"]),
            converged=bool(data["converged"]),
            n_evaluations=int(data["n_evaluations"]),
            events=tuple(BifurcationEvent.from_dict(e) for e in data.get("events", [])),
            step_interval=(int(lo), int(hi)),
            reason=data.get("reason", ""),
        )


def _as_model(value: object, template: torch.nn.Module | None, name: str) -> torch.nn.Module:
    """A detached float64 model from a model, a ``model_to_state`` dict or a plain state_dict."""
    if isinstance(value, torch.nn.Module):
        require_piecewise_linear(value)
        return detached_copy(value).double()
    if isinstance(value, dict) and "model" in value and "params" in value:
        return model_from_state(value)
    if isinstance(value, dict):
        if template is None:
            raise TypeError(
                f"{name} is a plain state_dict; pass a model (or a model_to_state dict) as model_a so its class is known"
            )
        model = detached_copy(template).double()
        try:
            model.load_state_dict({k: torch.as_tensor(v, dtype=torch.float64) for k, v in value.items()}, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{name} does not fit {type(template).__name__}: {error}") from None
        return model
    raise TypeError(f"{name} must be a model, a model_to_state dict or a state_dict, got {type(value).__name__}")


def _require_same_model(model_a: torch.nn.Module, model_b: torch.nn.Module) -> None:
    if type(model_a) is not type(model_b):
        raise TypeError(f"models must be of the same class, got {type(model_a).__name__} and {type(model_b).__name__}")
    shapes_a = {n: tuple(p.shape) for n, p in model_a.named_parameters()}
    shapes_b = {n: tuple(p.shape) for n, p in model_b.named_parameters()}
    if shapes_a != shapes_b:
        raise ValueError(f"models have different parameter shapes: {shapes_a} vs {shapes_b}")


def _exhaustive_feasible(model, max_order: int) -> bool:
    return _region_count_bound(model) ** max_order <= EXHAUSTIVE_LIMIT


def _signature(cycles: CycleSet) -> tuple:
    # Exact stability (no neutral band): the bracket is narrower than the band, so the band would bias t*.
    return tuple(sorted((c.order, c.key, int((np.abs(c.eigenvalues) > 1).sum())) for c in cycles))


def localize(
    model_a: object,
    model_b: object,
    *,
    max_order: int = 4,
    tol: float = 1e-6,
    finder_kwargs: dict | None = None,
    exhaustive: bool | None = None,
    step_interval: tuple[int, int] = (0, 1),
    max_evaluations: int = 200,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Localization:
    """Bisect along ``θ(t) = (1 − t) θ_a + t θ_b`` (all parameters) to where the cycle set changes.

    The signature compared is the sorted list of (order, region-code key, number of multipliers with
    ``|λ| > 1``) of all cycles up to ``max_order``.  When the endpoints' signatures differ, the bracket
    ``[t_lo, t_hi]`` is halved until ``t_hi − t_lo <= tol``; if several changes lie on the path, one of
    them is found.  Equal endpoint signatures are not an error (the callback must never raise): the
    result then has ``converged=False`` and a ``reason``.

    Cycles are found exactly by ``exhaustive_cycles`` when the region
    count bound ``R**max_order <= EXHAUSTIVE_LIMIT`` (or ``exhaustive=True``), else by
    ``find_cycles`` warm-started from the cycles at both bracket ends
    with a fixed seed, so the finder's randomness cannot move the bracket.

    Parameters
    ----------
    model_a, model_b : model, model_to_state dict or state_dict
        The two snapshots (same class and shapes); a plain state_dict is loaded into a copy of ``model_a``.
    max_order : int
        Compare cycles of orders ``1 .. max_order``.
    tol : float
        Final bracket width in ``t``.
    finder_kwargs : dict, optional
        Extra keyword arguments of ``find_cycles`` (``n_starts``, ``seed``, ...).
    exhaustive : bool, optional
        Force (True) or forbid (False) exhaustive enumeration; None decides by size.
    step_interval : tuple[int, int]
        Training steps of the two snapshots; events get ``location = lo + t* (hi − lo)``.
    max_evaluations : int
        Safety cap on cycle searches.
    device, dtype
        Where and in which precision to search (float64 by default; float32 brackets are only as
        narrow as float32's tolerances allow).

    Returns
    -------
    Localization

    Raises
    ------
    TypeError
        Models of different classes, or something that is not a model / state.
    ValueError
        Different parameter shapes, ``tol`` not in (0, 1), bad ``step_interval``, a bad ``dtype``, or
        ``finder_kwargs`` that set what ``localize`` sets itself (orders, warm start, dtype, device).

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> a, b = PLRNN(1), PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = a.A.fill_(-0.5); _ = b.A.fill_(-1.5); _ = a.h.fill_(1.0); _ = b.h.fill_(1.0)
    >>> where = localize(a, b, max_order=2)            # z' = A z + 1 flips at A = -1, i.e. t = 0.5
    >>> round(where.t_star, 6), [(e.kind, e.crossing) for e in where.events]
    (0.5, [('stability_change', '-1')])
    """
    first = _as_model(model_a, None, "model_a")
    second = _as_model(model_b, first, "model_b")
    _require_same_model(first, second)
    # The search's own detached copies in dtype and device (validated: finite parameters, the protocol).
    first, device = _prepare_model(first, dtype, device)
    second, _ = _prepare_model(second, dtype, device)
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    lo_step, hi_step = (int(x) for x in step_interval)
    if lo_step > hi_step:
        raise ValueError(f"step_interval must be (lo, hi) with lo <= hi, got {step_interval}")
    finder_kwargs = _free_finder_kwargs(finder_kwargs, "localize")
    use_exhaustive = _exhaustive_feasible(first, max_order) if exhaustive is None else bool(exhaustive)

    start = dict(first.named_parameters())
    end = {name: p.detach().clone() for name, p in second.named_parameters()}
    origin = {name: p.detach().clone() for name, p in start.items()}
    path_model = first

    def cycles_at(t: float, warm: CycleSet | None) -> CycleSet:
        with torch.no_grad():
            for name, parameter in start.items():
                parameter.copy_((1.0 - t) * origin[name] + t * end[name])
        if use_exhaustive:
            return exhaustive_cycles(
                path_model, max_order, max_sequences=max(EXHAUSTIVE_LIMIT, 1), device=device, dtype=dtype
            )
        return find_cycles(path_model, max_order, warm_start=warm, device=device, dtype=dtype, **finder_kwargs)

    def merged(*sets: CycleSet) -> CycleSet:
        cycles = tuple(c for s in sets for c in s)
        return CycleSet(cycles, tuple(range(1, max_order + 1)))

    t_lo, t_hi = 0.0, 1.0
    set_lo = cycles_at(t_lo, None)
    set_hi = cycles_at(t_hi, set_lo)
    evaluations = 2
    sig_lo, sig_hi = _signature(set_lo), _signature(set_hi)
    if not use_exhaustive and sig_lo != sig_hi:
        # Re-search the first end warm-started from the second so both ends saw the same candidate sequences.
        set_lo = cycles_at(t_lo, set_hi)
        sig_lo = _signature(set_lo)
        evaluations += 1
    if sig_lo == sig_hi:
        return Localization(
            0.0, 1.0, 0.5, False, evaluations, (), (lo_step, hi_step),
            reason="the cycle sets at both ends have the same signature: nothing to localise "
            "(changes that undo each other on the path are invisible)",
        )
    while t_hi - t_lo > tol and evaluations < max_evaluations:
        t_mid = 0.5 * (t_lo + t_hi)
        set_mid = cycles_at(t_mid, None if use_exhaustive else merged(set_lo, set_hi))
        evaluations += 1
        if _signature(set_mid) == sig_lo:
            t_lo, set_lo = t_mid, set_mid
        else:
            t_hi, set_hi = t_mid, set_mid
            sig_hi = _signature(set_mid)
    t_star = 0.5 * (t_lo + t_hi)
    location = lo_step + t_star * (hi_step - lo_step)
    # The bracket can be narrower than Cycle's neutral band, so classify with exact unit-circle counts.
    raw = detect_bifurcations(set_lo, set_hi, step=hi_step, prev_step=lo_step, neutral_tolerance=0.0)
    events = tuple(_with_location(event, location) for event in raw)
    converged = t_hi - t_lo <= tol
    reason = "" if converged else f"stopped after max_evaluations={max_evaluations}"
    return Localization(t_lo, t_hi, t_star, converged, evaluations, events, (lo_step, hi_step), reason)


def _with_location(event: BifurcationEvent, location: float) -> BifurcationEvent:
    lo, hi = event.step_interval
    return replace(event, location=min(max(location, float(lo)), float(hi)))

