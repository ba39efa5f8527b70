"""ModelStack: N weight settings of one piecewise-linear model, analysed as one batched map.

The monitor analyses the snapshots of several training steps at once.  The work per step is small (a few
hundred 3x3 solves, a few hundred simulated points) and dominated by the cost of each torch call, so the
analysis of N steps in one call per operation costs little more than the analysis of one.  A ``ModelStack``
holds the N weight settings and answers the protocol calls for all of them at once: every input carries a
leading step axis, ``codes (N, ..., S)`` and ``z (N, ..., M)``, and so does every output.

For the package's four models the parameters are stacked along that axis and the models' own methods run
once (their maps are written to broadcast a stacked parameter, see ``models._row``); each step's slice of the
result is bit-for-bit what that step alone gives (batched matrix products compute each slice separately),
so analysing steps together or one by one gives the same records.  Any other model (a user's own
``PiecewiseLinear``) is called once per step.

Private: the finder, the attractor search and the monitor's analysis use it.  It knows nothing of Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._scyfi import model_functions
from .models import ALRNN, PLRNN, ClippedShallowPLRNN, ShallowPLRNN, detached_copy, model_tensors

__all__ = ["ModelStack", "STACKABLE_MODELS"]

# Exactly these classes (not subclasses, which may override a method with code that does not broadcast a
# stacked parameter): their maps run once for all steps.
STACKABLE_MODELS: tuple[type, ...] = (PLRNN, ALRNN, ShallowPLRNN, ClippedShallowPLRNN)


class ModelStack:
    """N weight settings of one model as one map with a leading step axis.

    Parameters
    ----------
    template : torch.nn.Module
        The model (PiecewiseLinear protocol); only its structure is used, it is copied.
    weights : sequence of sequences of array-like
        Per step, the model's parameters then buffers in module order (``analysis.model_tensors``).
    dtype, device
        Where and in which precision the stack computes.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(2)
    >>> weights = [[t.detach() * scale for t in model_tensors(model)] for scale in (1.0, 0.5)]
    >>> stack = ModelStack(model, weights)
    >>> z = torch.randn(2, 5, 2, dtype=torch.float64)
    >>> after, codes = stack.step_with_codes(z)
    >>> bool(torch.allclose(after[1], stack.model(1).step(z[1])))
    True
    """

    def __init__(
        self,
        template: torch.nn.Module,
        weights: Sequence[Sequence[Any]],
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        if not weights:
            raise ValueError("ModelStack needs the weights of at least one step")
        self.n_steps = len(weights)
        self.state_dim: int = template.state_dim
        self.n_switches: int = template.n_switches
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._template = detached_copy(template).to(device=self.device, dtype=dtype)
        expected = len(model_tensors(self._template))
        columns: list[list[Tensor]] = [[] for _ in range(expected)]
        for index, tensors in enumerate(weights):
            if len(tensors) != expected:
                raise ValueError(f"step {index} of the stack has {len(tensors)} tensors, the model {expected}")
            for column, tensor in zip(columns, tensors):
                column.append(tensor.detach() if isinstance(tensor, Tensor) else torch.as_tensor(np.asarray(tensor)))
        self._columns = [torch.stack(column).to(device=self.device) for column in columns]
        self._columns = [c.to(dtype) if c.is_floating_point() else c for c in self._columns]
        self._models: dict[int, torch.nn.Module] = {}
        self.owns_models = True  # model(i) is a model of the stack's own, which nothing changes afterwards
        self.stacked = type(template) in STACKABLE_MODELS
        self._stacked_model = self._build_stacked() if self.stacked else None

    @classmethod
    def single(cls, model: object, *, dtype: torch.dtype, device: torch.device) -> ModelStack:
        """A stack of one: ``model`` itself (any PiecewiseLinear object, not copied), called as it is."""
        stack = cls.__new__(cls)
        stack.n_steps, stack.state_dim, stack.n_switches = 1, model.state_dim, model.n_switches
        stack.dtype, stack.device = dtype, torch.device(device)
        stack._template, stack._columns, stack._models, stack.owns_models = model, [], {0: model}, False
        stack.stacked, stack._stacked_model = False, None
        return stack

    def _build_stacked(self) -> torch.nn.Module:
        model = detached_copy(self._template)
        names = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
        for name, column in zip(names, self._columns):
            owner, _, attribute = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            if attribute in module._parameters:
                module._parameters[attribute] = torch.nn.Parameter(column, requires_grad=False)
            else:
                module._buffers[attribute] = column
        return model

    def model(self, step: int) -> torch.nn.Module:
        """The ``step``-th weight setting as an ordinary model (made on first use, then kept)."""
        if step not in self._models:
            model = detached_copy(self._template)
            with torch.no_grad():
                for mine, column in zip(model_tensors(model), self._columns):
                    mine.copy_(column[step])
            self._models[step] = model
        return self._models[step]

    def select(self, steps: Sequence[int]) -> ModelStack:
        """The stack of the given steps only (in that order)."""
        chosen = ModelStack.__new__(ModelStack)
        chosen.__dict__.update(self.__dict__)
        index = torch.as_tensor(list(steps), dtype=torch.long, device=self.device)
        chosen.n_steps = len(steps)
        chosen._columns = [column[index] for column in self._columns]
        chosen._models = {new: self._models[old] for new, old in enumerate(steps) if old in self._models}
        chosen._stacked_model = chosen._build_stacked() if self.stacked else None
        return chosen

    # ------------------------------------------------------------------------------------------ the protocol

    def _call(self, method: str, values: Tensor) -> Any:
        """``method`` of every step on ``values (N, ..., last)``, results with the same leading axes."""
        if values.shape[0] != self.n_steps:
            raise ValueError(f"the leading axis of the input ({values.shape[0]}) must be the stack's {self.n_steps} steps")
        if self._stacked_model is not None:
            flat = values.reshape(self.n_steps, -1, values.shape[-1])
            result = getattr(self._stacked_model, method)(flat)
            return _unflatten(result, values.shape[:-1])
        per_step = [getattr(self.model(i), method)(values[i]) for i in range(self.n_steps)]
        if isinstance(per_step[0], tuple):
            return tuple(torch.stack(parts) for parts in zip(*per_step))
        return torch.stack(per_step)

    def affine_pieces(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """``(J (N, ..., M, M), c (N, ..., M))`` for ``codes (N, ..., S)``."""
        return self._call("affine_pieces", codes)

    def step_with_codes(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(step(z), region_codes(z))`` for ``z (N, ..., M)``."""
        if self._stacked_model is not None:
            return self._call("step_with_codes", z)
        per_step = [_scyfi_step_with_codes(self.model(i))(z[i]) for i in range(self.n_steps)]
        return torch.stack([after for after, _ in per_step]), torch.stack([codes for _, codes in per_step])

    def step(self, z: Tensor) -> Tensor:
        return self._call("step", z)

    def simulation_step(self) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """``step_with_codes`` for states ``(N, B, M)`` over many iterations with these weights: the model's
        own ``simulation_step`` (weights prepared once, no checks per call) where it has one."""
        model = self._stacked_model if self._stacked_model is not None else (self.model(0) if self.n_steps == 1 else None)
        make = getattr(model, "simulation_step", None)
        return make() if make is not None else self.step_with_codes

    def region_codes(self, z: Tensor) -> Tensor:
        return self._call("region_codes", z)

    def each(self, function: Callable[[torch.nn.Module], Any]) -> list[Any]:
        """``function`` applied to every step's model, in step order."""
        return [function(self.model(i)) for i in range(self.n_steps)]


def _scyfi_step_with_codes(model: torch.nn.Module) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    return model_functions(model)[1]


def _unflatten(result: Any, leading: torch.Size) -> Any:
    """Outputs computed on ``(N, B, ...)`` reshaped back to the input's leading axes ``leading`` (``(N, ...)``)."""
    if isinstance(result, tuple):
        return tuple(_unflatten(part, leading) for part in result)
    return result.reshape(tuple(leading) + tuple(result.shape[2:]))
