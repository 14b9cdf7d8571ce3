"""Checkpoint files: atomic writes, safe loading, and the plain-data recipe that rebuilds a run's models.

Every file binarize writes is a ``torch.save`` of a dict holding only tensors, numbers, strings,
lists and dicts, so ``torch.load(weights_only=True)`` reads it and loading runs no pickled code.
Two kinds share the format (``"format": "binarize"``):

- ``"student"``: a converted model, ``{"recipe", "model"}`` (``binarize convert --out``, ``best.pt``);
- ``"finetune"``: a whole training state (adds optimizers, epoch, step, RNG states, history).

The *recipe* says how to rebuild the float model and the student without pickling them::

    {"model": "torchvision:resnet18", "model_kwargs": {"num_classes": 10},
     "weights": "resnet18.pt" or None, "convert": {"method": "biper", "options": {...}}}

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the
target (``os.replace`` is atomic), so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import random
import re
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .config import ConvertConfig
from .convert import convert
from .methods import get_method

FORMAT = "binarize"
PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint or weights file is missing, unreadable, or does not fit the model."""


# ---------------------------------------------------------------------------------------- files

def atomic_write(path: PathLike, write: Callable[[IO], None], binary: bool = True) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it over ``path``
    (``os.replace`` is atomic): ``path`` is either the previous file or the complete new one, never
    a partial write. The temporary file is opened with "x", not ``mkstemp``, so the result gets the
    usual umask permissions rather than mkstemp's 0600."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(temporary, "xb" if binary else "x", **({} if binary else {"newline": ""})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write`, creating the folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: PathLike) -> None:
    """Write a text file (metrics CSV, report) through :func:`atomic_write`."""
    atomic_write(path, lambda handle: handle.write(text), binary=False)


def load_file(path: PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "Unsupported global" in str(err):
            reason = ("it contains pickled Python objects, which are not loaded for safety "
                      "(save a state_dict of tensors instead)")
        else:
            reason = f"it is truncated or corrupted, or not a PyTorch file ({type(err).__name__}: {text})"
        raise CheckpointError(f"cannot read {what} {path}: {reason}") from err


def load_checkpoint(path: PathLike, kind: Optional[str] = None) -> Dict[str, Any]:
    """Read a binarize checkpoint; ``kind`` ("student" or "finetune") is checked when given.
    A "finetune" checkpoint also serves where a "student" one is expected (it holds the model)."""
    data = load_file(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a binarize checkpoint (no 'format': 'binarize' entry); "
                              f"for plain float weights use --weights")
    if kind == "finetune" and data.get("kind") != "finetune":
        raise CheckpointError(f"{path} is a {data.get('kind')!r} checkpoint, not a training state to resume")
    for key in ("recipe", "model") + (("optimizers", "epoch", "step", "rng") if kind == "finetune" else ()):
        if key not in data:
            raise CheckpointError(f"{path} lacks the {key!r} entry: incomplete or from another program")
    return data


def checkpoint_name(epoch: int, step: int) -> str:
    return f"epoch{epoch:04d}-step{step:06d}.pt"


_NAME = re.compile(r"epoch(\d+)-step(\d+)\.pt")


def list_checkpoints(folder: PathLike) -> List[Path]:
    """Training checkpoints in ``folder``, oldest first (by the epoch and step in their names)."""
    found = [(tuple(map(int, m.groups())), p) for p in Path(folder).glob("epoch*-step*.pt")
             if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(path: PathLike) -> Path:
    """``path`` itself if it is a file; for a run folder, its newest training checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no training checkpoint (epoch*-step*.pt) in {path} or {path / 'checkpoints'}")
        return found[-1]
    return path


def prune_checkpoints(folder: PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` training checkpoints in ``folder``."""
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ RNG states

def rng_state() -> Dict[str, Any]:
    """Every global random state a training step may touch, as tensors and numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(python_state), "gauss": python_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------- models, weights

def _import_object(spec: str, what: str) -> Any:
    """``package.module:name`` or ``path/to/file.py:name`` -> the object."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {spec!r}: expected 'package.module:name' (or 'path/file.py:name')")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise FileNotFoundError(f"{file} does not exist")
            module_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, FileNotFoundError) as err:
        raise ValueError(f"{what} {spec!r}: cannot import {module_name}: {err}") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def build_model(spec: str, **kwargs) -> nn.Module:
    """A float model from ``torchvision:NAME`` (architecture only, never downloads weights) or
    ``package.module:factory`` / ``file.py:factory``; ``kwargs`` go to the constructor."""
    if spec.startswith("torchvision:"):
        import torchvision

        name = spec.split(":", 1)[1]
        if name not in torchvision.models.list_models():
            raise ValueError(f"model {spec!r}: torchvision has no model {name!r} "
                             f"(see torchvision.models.list_models())")
        return torchvision.models.get_model(name, weights=None, **kwargs)
    factory = _import_object(spec, "model")
    if not callable(factory):
        raise ValueError(f"model {spec!r} is not callable")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def load_float_weights(model: nn.Module, path: PathLike) -> nn.Module:
    """Load a float state_dict file (also ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and
    DDP's ``module.`` prefixes) into ``model``, strictly, with errors naming the file."""
    data = load_file(path, "weights file")
    if isinstance(data, dict) and data.get("format") == FORMAT:
        raise CheckpointError(f"{path} is a binarize {data.get('kind')} checkpoint, not float weights: "
                              f"pass it with --checkpoint / --resume instead")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"weights file {path} does not hold a state_dict (a dict of tensors)")
    if data and all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    load_state(model, data, path)
    return model


def load_state(model: nn.Module, state: Dict[str, torch.Tensor], path: PathLike) -> None:
    """``model.load_state_dict(state)`` with an error naming the file and the keys that do not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                problems.append(f"{len(items)} {label} ({', '.join(items[:5])}{', ...' if len(items) > 5 else ''})")
        raise CheckpointError(f"{path} does not match the model {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state)


# ------------------------------------------------------------------------------------- recipes

def config_to_data(config: ConvertConfig) -> Dict[str, Any]:
    """A conversion config as plain data (:meth:`binarize.config.VersionedConfig.to_data`)."""
    return {"method": config.method, "options": config.to_data()}


def config_from_data(data: Dict[str, Any]) -> ConvertConfig:
    spec = get_method(data["method"])
    return spec.config.from_data(data["options"], lambda v, key: _import_object(v, key))


def make_recipe(model: str, convert_config: ConvertConfig, weights: Optional[PathLike] = None,
                **model_kwargs) -> Dict[str, Any]:
    # An absolute path, so the recipe still finds the weights from another working directory.
    return {"model": model, "model_kwargs": model_kwargs,
            "weights": None if weights is None else str(Path(weights).resolve()),
            "convert": config_to_data(convert_config)}


def build_from_recipe(recipe: Dict[str, Any], load_weights: bool = True) -> Tuple[nn.Module, nn.Module]:
    """(float model, freshly converted student) from a recipe. ``load_weights=False`` skips the
    float weights (when a checkpoint's student weights will be loaded over the student anyway)."""
    float_model = build_model(recipe["model"], **recipe.get("model_kwargs", {}))
    if load_weights and recipe.get("weights"):
        load_float_weights(float_model, recipe["weights"])
    return float_model, convert(float_model, config_from_data(recipe["convert"]))


def student_checkpoint(student: nn.Module, recipe: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    return {"format": FORMAT, "kind": "student", "recipe": recipe,
            "model": {k: v.detach().cpu() for k, v in student.state_dict().items()}}


def load_student(path: PathLike) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the student stored in a student or finetune checkpoint; returns (student, checkpoint)."""
    data = load_checkpoint(path)
    if not data.get("recipe"):
        raise CheckpointError(f"{path} has no recipe (it was written by binarize.finetune without "
                              f"FinetuneConfig.recipe), so its model cannot be rebuilt from the file alone")
    _, student = build_from_recipe(data["recipe"], load_weights=False)
    load_state(student, data["model"], path)
    return student, data
