"""Reading saved models: parameter JSON files and checkpoints (Lightning's, or any ``torch.save`` file).

``load_model`` is what ``bifurcation-callback find``, ``scan``, ``landscape`` and ``analyse`` read models with;
``read_checkpoint``, ``model_from_checkpoint`` and ``checkpoint_step`` let ``offline.analyse_checkpoints`` read
the model and the training step from one load of each file.  Without Lightning: a checkpoint is a dict.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "checkpoint_step", "load_model", "model_from_checkpoint", "read_checkpoint"]


class CheckpointError(ValueError):
    """A model file that cannot be read as asked (the message names the file and what was expected).

    The command line reports it as one line and exits with status 2.
    """


# Lightning's default checkpoint file name: "epoch=3-step=400.ckpt" (the step is the trainer's global_step).
_STEP_IN_NAME = re.compile(r"(?:^|[-_])step=(\d+)")


def checkpoint_step(checkpoint: Any, path: str | Path) -> int:
    """The number of optimizer steps taken when the checkpoint was saved: Lightning's ``global_step``, else
    the ``step=N`` in a Lightning-style file name (``epoch=3-step=400.ckpt``).

    The monitor records the weights after batch ``s`` at step ``s`` (the first batch is step 0), so a checkpoint
    saved after ``N`` optimizer steps holds the weights of step ``N - 1``.

    Raises
    ------
    CheckpointError
        Neither is there.

    Examples
    --------
    >>> checkpoint_step({"global_step": 400}, "any.ckpt")
    400
    >>> checkpoint_step({}, "runs/epoch=3-step=400.ckpt")
    400
    >>> checkpoint_step({}, "weights.pt")
    Traceback (most recent call last):
    ...
    bifurcation_callback.checkpoints.CheckpointError: weights.pt: no training step inside (no 'global_step') nor in its name (as in 'epoch=3-step=400.ckpt')
    """
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
        return step
    named = _STEP_IN_NAME.search(Path(path).stem)
    if named:
        return int(named.group(1))
    raise CheckpointError(
        f"{path}: no training step inside (no 'global_step') nor in its name (as in 'epoch=3-step=400.ckpt')"
    )


def load_model(
    path: str | Path,
    *,
    model_class: str | None = None,
    config: dict[str, Any] | None = None,
    prefix: str | None = None,
):
    """Load a model from a parameter JSON (see ``model_to_state``) or a checkpoint.

    A checkpoint is a Lightning checkpoint or a ``torch.save`` file of a dict / state_dict.  The model is
    read from, in this order:

    1. ``model_class`` when given: a name of ``MODEL_SPECS`` (its parameters are looked up by name in the
       state_dict, under ``prefix`` if given), or ``"package.module:Class"``, a user's own model: the
       class is imported and built by ``Class.from_state_dict(sub_state_dict)`` if it has that classmethod,
       else by ``Class(**config)`` and ``load_state_dict(sub_state_dict)``.  ``sub_state_dict`` holds the
       entries under ``prefix`` with the prefix removed; without ``prefix`` every prefix is tried and
       exactly one must fit.
    2. the model identity ``DSRModule`` stores under ``models.CHECKPOINT_MODEL_KEY``;
    3. a guess from the parameter names, which must match exactly one built-in class (PLRNN and ALRNN,
       or ShallowPLRNN and ClippedShallowPLRNN, share their names: such a guess is refused).

    Raises
    ------
    CheckpointError
        Missing file, unreadable content, unknown or ambiguous model kind, wrong parameter shapes, a
        user class that cannot be imported, built or does not follow the PiecewiseLinear protocol.

    Examples
    --------
    >>> import tempfile
    >>> from bifurcation_callback.models import PLRNN, model_to_state
    >>> path = Path(tempfile.mkdtemp()) / "rnn.json"
    >>> _ = path.write_text(json.dumps(model_to_state(PLRNN(2))))
    >>> type(load_model(path)).__name__
    'PLRNN'
    """
    from .models import model_from_state

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".json":
        if model_class is not None:
            raise CheckpointError(f"{path}: --model-class is for checkpoints; a parameter JSON names its model itself")
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path}: not valid JSON ({error})") from None
        try:
            return model_from_state(state)
        except ValueError as error:
            raise CheckpointError(f"{path}: {error}") from None
    return model_from_checkpoint(read_checkpoint(path), path, model_class=model_class, config=config, prefix=prefix)


def model_from_checkpoint(
    checkpoint: Any,
    path: str | Path,
    *,
    model_class: str | None = None,
    config: dict[str, Any] | None = None,
    prefix: str | None = None,
):
    """The model inside a checkpoint's content (``read_checkpoint``), found as :func:`load_model` finds it.

    ``path`` only names the file in error messages.

    Raises
    ------
    CheckpointError
        As :func:`load_model`.

    Examples
    --------
    >>> from bifurcation_callback.models import CHECKPOINT_MODEL_KEY, PLRNN, model_to_state
    >>> checkpoint = {"global_step": 5, CHECKPOINT_MODEL_KEY: model_to_state(PLRNN(2))}  # as DSRModule saves it
    >>> type(model_from_checkpoint(checkpoint, "run.ckpt")).__name__, checkpoint_step(checkpoint, "run.ckpt")
    ('PLRNN', 5)
    """
    from .models import CHECKPOINT_MODEL_KEY, model_from_state

    path = Path(path)
    described = checkpoint.get(CHECKPOINT_MODEL_KEY) if isinstance(checkpoint, dict) else None
    if model_class is None and isinstance(described, dict):
        try:
            return model_from_state(described)
        except ValueError as error:
            raise CheckpointError(f"{path}: {CHECKPOINT_MODEL_KEY!r}: {error}") from None
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors inside")
    tensors = {name: value for name, value in state_dict.items() if isinstance(value, torch.Tensor)}
    if model_class is not None and ":" in model_class:
        return _user_model(path, model_class, tensors, config or {}, prefix)
    return _builtin_model(path, model_class, tensors, config or {}, prefix)


def read_checkpoint(path: str | Path) -> Any:
    """The content of a checkpoint file (``torch.load`` on the CPU), whatever wrote it.

    Raises
    ------
    CheckpointError
        A missing file, or one torch cannot read (the message names the file and torch's reason).

    Examples
    --------
    >>> read_checkpoint("no/such.ckpt")
    Traceback (most recent call last):
    ...
    bifurcation_callback.checkpoints.CheckpointError: no/such.ckpt: no such file
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for foreign files
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({error})") from None


def _sub_state_dicts(tensors: dict[str, torch.Tensor], prefix: str | None) -> dict[str, dict[str, torch.Tensor]]:
    """prefix -> its entries with the prefix removed, for every dotted prefix of a key (and "")."""
    prefixes = {""}
    for name in tensors:
        parts = name.split(".")[:-1]
        prefixes.update(".".join(parts[: k + 1]) + "." for k in range(len(parts)))
    if prefix is not None:
        prefix = prefix if prefix == "" or prefix.endswith(".") else prefix + "."
        if prefix not in prefixes:
            listed = ", ".join(sorted(prefixes - {""}))
            raise CheckpointError(f"--prefix {prefix!r} matches no state_dict entry; prefixes: {listed}")
        prefixes = {prefix}
    return {p: {n[len(p) :]: v for n, v in tensors.items() if n.startswith(p)} for p in sorted(prefixes)}


def _builtin_model(path: Path, kind: str | None, tensors: dict, config: dict, prefix: str | None):
    """A registry model whose parameter names appear, as a group, in the state_dict."""
    from .models import MODEL_SPECS, build_model

    groups = {p: {n: v for n, v in sub.items() if "." not in n} for p, sub in _sub_state_dicts(tensors, prefix).items()}
    fits = [
        (p, name)
        for p, params in groups.items()
        for name, spec in MODEL_SPECS.items()
        if set(params) == set(spec.parameters) and (kind is None or name == kind)
    ]
    if not fits:
        wanted = f"the parameters of {kind} ({', '.join(MODEL_SPECS[kind].parameters)})" if kind else (
            f"the parameters of any of {', '.join(MODEL_SPECS)}"
        )
        raise CheckpointError(
            f"{path}: found no group of state_dict entries with exactly {wanted}; for your own model "
            "pass --model-class package.module:Class"
        )
    prefixes = sorted({p for p, _ in fits})
    if len(prefixes) > 1:
        listed = ", ".join(map(repr, prefixes))
        raise CheckpointError(f"{path}: several models in the state_dict (prefixes {listed}); choose with --prefix")
    kinds = [name for _, name in fits]
    if len(kinds) > 1:
        raise CheckpointError(
            f"{path}: the checkpoint does not name its model and its parameters "
            f"({', '.join(MODEL_SPECS[kinds[0]].parameters)}) fit {' and '.join(kinds)}; "
            f"choose with --model-class NAME (one of {', '.join(MODEL_SPECS)})"
        )
    params = groups[prefixes[0]]
    spec = MODEL_SPECS[kinds[0]]
    if config or spec.infer is None:
        # Every built-in model's A has shape (M,): the state dimension is always known.
        known = {arg: int(params["A"].shape[0]) for arg, attribute in spec.config.items() if attribute == "state_dim"}
        config = {**known, **(spec.infer(params) if spec.infer else {}), **config}
        missing = [arg for arg in spec.config if arg not in config]
        if missing:
            raise CheckpointError(
                f"{path}: {kinds[0]} needs its constructor arguments {', '.join(spec.config)}; "
                f"pass {' '.join(f'--config {arg}=INT' for arg in missing)}"
            )
    try:
        return build_model(kinds[0], params, config or None)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def _import_class(spec: str) -> type:
    module_name, _, qualname = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as error:
        raise CheckpointError(f"--model-class {spec}: cannot import it ({error})") from None
    if not isinstance(target, type):
        raise CheckpointError(f"--model-class {spec}: not a class")
    return target


def _user_model(path: Path, spec: str, tensors: dict, config: dict, prefix: str | None):
    """A user's own PiecewiseLinear model class, built from the checkpoint's tensors (see ``load_model``)."""
    from .models import require_piecewise_linear

    cls = _import_class(spec)
    subs = _sub_state_dicts(tensors, prefix)
    built: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if callable(getattr(cls, "from_state_dict", None)):
        how = f"{cls.__name__}.from_state_dict(state_dict)"
        for p, sub in subs.items():
            try:
                model = cls.from_state_dict(sub)
                require_piecewise_linear(model)
            except Exception as error:  # the user's code: any failure means "not this prefix"
                errors[p] = f"{type(error).__name__}: {error}"
            else:
                built[p] = model
    else:
        how = f"{cls.__name__}(**CONFIG) and load_state_dict"
        try:
            template = cls(**config)
        except Exception as error:
            raise CheckpointError(
                f"--model-class {spec}: {cls.__name__}(**{config}) failed ({type(error).__name__}: {error}); pass its "
                "constructor arguments as --config NAME=VALUE, or give the class a classmethod from_state_dict(state_dict)"
            ) from None
        expected = set(template.state_dict())
        for p, sub in subs.items():
            if set(sub) == expected:
                try:
                    template.load_state_dict(sub)
                    require_piecewise_linear(template)
                except Exception as error:
                    errors[p] = f"{type(error).__name__}: {error}"
                else:
                    built[p] = template
        if not built and not errors:
            errors["(any)"] = f"no prefix holds exactly the entries {sorted(expected)}"
    if len(built) > 1:
        raise CheckpointError(f"{path}: {how} fits several prefixes ({', '.join(map(repr, built))}); choose with --prefix")
    if not built:
        tried = "; ".join(f"{p or '(no prefix)'}: {e}" for p, e in errors.items())
        raise CheckpointError(f"{path}: cannot build {spec} by {how} from the checkpoint ({tried})")
    model = next(iter(built.values()))
    return model.double() if isinstance(model, torch.nn.Module) else model


