"""A run's saved state: a registry of stateful parts, each with ``state_dict``/``load_state_dict``.

Saving and restoring walk the same registry, in registration order, so they cannot disagree; a
part restored later may rely on the parts before it (the optimizers are rebuilt for the phase the
counters came back with). Shared parts are the same on every rank and are saved by rank 0;
per-rank parts (the random states) are gathered from every rank and stored as a list by rank, and
every rank restores its own entry.

File layout (``kind: "finetune"``): the header (``format``, ``kind``, ``version``, ``recipe``,
``config``, ``world_size``), one entry per shared part, and ``rng``: a list with one entry per rank.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from .. import checkpoint as ckpt
from .distributed import gather_objects, world

#: Version of the training-state layout. 2: parts by name, optimizers named by the method's
#: parameter groups, phases with ``stage``, random states per rank (version 1 had rank 0's only).
STATE_VERSION = 2


class Attribute:
    """A part that is one attribute of an object, saved through ``save``/``load`` converters."""

    def __init__(self, owner: Any, name: str, save: Callable[[Any], Any] = lambda v: v,
                 load: Callable[[Any], Any] = lambda v: v):
        self.owner, self.name, self.save, self.load = owner, name, save, load

    def state_dict(self) -> Any:
        return self.save(getattr(self.owner, self.name))

    def load_state_dict(self, state: Any) -> None:
        setattr(self.owner, self.name, self.load(state))


class Module:
    """A module's tensors, copied to the CPU; loading checks names and shapes against the file."""

    def __init__(self, module: torch.nn.Module, path: Callable[[], Optional[Path]]):
        self.module, self.path = module, path

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        ckpt.load_state(self.module, state, self.path())


class Optimizers:
    """The optimizers of the current phase, rebuilt by ``build`` before their state is loaded."""

    def __init__(self, build: Callable[[], Dict[str, torch.optim.Optimizer]]):
        self.build = build
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}

    def rebuild(self) -> None:
        self.optimizers = self.build()

    def state_dict(self) -> Dict[str, Any]:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.rebuild()
        if set(state) != set(self.optimizers):
            raise ValueError(f"it has optimizers {sorted(state)}, this run {sorted(self.optimizers)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state[name])


class RandomState:
    """This process's random states: torch, numpy, random (and CUDA), and the train loader's own
    generators (the loader's and its sampler's)."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.generators: Dict[str, torch.Generator] = {}
        for key, owner in (("loader", loader), ("sampler", loader.sampler)):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator) and all(generator is not g for g in self.generators.values()):
                self.generators[key] = generator

    def state_dict(self) -> Dict[str, Any]:
        return dict(ckpt.rng_state(), loader={k: g.get_state() for k, g in self.generators.items()})

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        ckpt.set_rng_state(state)
        for key, generator_state in state["loader"].items():
            if key in self.generators:
                self.generators[key].set_state(generator_state)


class TrainingState:
    """The registry. ``state_dict`` is a collective under torchrun: every rank must call it."""

    def __init__(self):
        self.shared: Dict[str, Any] = {}
        self.per_rank: Dict[str, Any] = {}

    def register(self, name: str, part: Any, per_rank: bool = False) -> None:
        if name in self.shared or name in self.per_rank:
            raise ValueError(f"training state part {name!r} is registered twice")
        (self.per_rank if per_rank else self.shared)[name] = part

    def state_dict(self, header: Dict[str, Any], main: bool) -> Optional[Dict[str, Any]]:
        """The whole state on rank 0 (None on the others), after ``header``."""
        ranks = gather_objects({name: part.state_dict() for name, part in self.per_rank.items()})
        if not main:
            return None
        state = dict(header, format=ckpt.FORMAT, kind="finetune", version=STATE_VERSION)
        state.update({name: part.state_dict() for name, part in self.shared.items()})
        for name in self.per_rank:
            state[name] = [entry[name] for entry in ranks]
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for name, part in self.shared.items():
            part.load_state_dict(state[name])
        rank = world()[0]
        for name, part in self.per_rank.items():
            entries = state[name]
            # A run resumed at an epoch end on more processes than saved it: the extra ranks take
            # rank 0's states (the DistributedSampler's order does not depend on them).
            part.load_state_dict(entries[rank] if rank < len(entries) else entries[0])


def read_training_state(path) -> Dict[str, Any]:
    """A training checkpoint, refused with a :class:`~binarize.checkpoint.CheckpointError` naming the
    file and both versions when another version of binarize wrote it in another layout."""
    state = ckpt.load_checkpoint(path, "finetune")
    version = state.get("version")
    if version != STATE_VERSION:
        raise ckpt.CheckpointError(
            f"{path} is a training checkpoint of version {version}; this binarize resumes version "
            f"{STATE_VERSION} only. Finish the run with the binarize that wrote it, or start a new run from "
            f"its weights (binarize finetune --student {path} ...)")
    ckpt.check_entries(path, state, _PART_TYPES)
    if not state["rng"]:
        raise ckpt.CheckpointError(f"{path}: entry 'rng' holds no process's random states")
    for rank, entry in enumerate(state["rng"]):
        problem = ckpt.rng_state_problem(entry)
        if problem is None and not isinstance(entry.get("loader"), dict):
            problem = "lacks the train loader's generator states ('loader')"
        if problem:
            raise ckpt.CheckpointError(f"{path}: entry 'rng' of rank {rank} {problem}")
    return state


#: The parts a version-2 training state holds (registered in binarize.finetune.loop) and their types,
#: checked before any is restored so that a damaged file is an error naming it, not a crash mid-restore.
_PART_TYPES = {"phases": list, "phase": int, "epoch": int, "step": int, "model": dict, "discriminators": dict,
               "optimizers": dict, "epoch_order": (dict, type(None)), "epoch_stats": dict, "history": dict,
               "rng": list}
