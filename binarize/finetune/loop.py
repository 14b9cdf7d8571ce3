"""The training loop: :func:`finetune` and the trainer that runs phases, epochs and steps."""
from __future__ import annotations

import dataclasses
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .. import batchnorm
from .. import checkpoint as ckpt
from ..convert import binary_layers
from ..methods import training_policy
from .config import FinetuneConfig, History, method_defaults
from .distributed import all_reduce_max, all_reduce_sum, barrier, world
from .evaluation import BATCHNORM_CHECK_SAMPLES, check_batchnorm, evaluate, refresh_batchnorm
from .objective import AdversarialFeatures, Batch, CenterTerm, build_objective
from .phases import Phase, Schedule
from .reporting import Reporter
from .state import Attribute, Module, Optimizers, RandomState, TrainingState, read_training_state


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; ``checkpoint`` is the file saved on the way out (None without run_dir)."""

    def __init__(self, message: str, checkpoint: Optional[Path]):
        super().__init__(message)
        self.checkpoint = checkpoint


def finetune(student: nn.Module, teacher: Optional[nn.Module], train_loader: DataLoader,
             val_loader: Optional[DataLoader], config: Optional[FinetuneConfig] = None) -> Tuple[nn.Module, History]:
    """Fine-tune ``student`` (from :func:`binarize.convert`) against the frozen ``teacher``.

    ``teacher`` None trains on the labels alone (no KD, no discriminators). Under torchrun (after
    :func:`init_distributed`), pass loaders built with ``distributed=True``; the batch size is per rank.
    Returns the student (unwrapped, eval mode, on ``config.device``) and its :class:`History`.
    Ctrl-C saves a checkpoint and raises :class:`TrainingInterrupted`. The teacher is the caller's
    model: it is frozen and in eval mode while training runs, and gets its train/eval mode and its
    parameters' ``requires_grad`` back afterwards (it stays on ``config.device``).
    """
    saved = None if teacher is None else (teacher.training, [p.requires_grad for p in teacher.parameters()])
    try:
        return _Trainer(student, teacher, train_loader, val_loader, config or FinetuneConfig()).run()
    finally:
        if saved is not None:
            teacher.train(saved[0])
            for parameter, requires_grad in zip(teacher.parameters(), saved[1]):
                parameter.requires_grad_(requires_grad)


class _StopRequest:
    """Turns the first Ctrl-C into a request to stop after the current step (a second one aborts)."""

    def __init__(self, announce: Callable[[str], None]):
        self.requested = False
        self.announce = announce
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.announce("\nCtrl-C: stopping after this step and saving a checkpoint (press again to abort at once)")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _flatten_order(order: Optional[List[List[int]]]) -> Optional[Dict[str, torch.Tensor]]:
    if order is None:
        return None
    return {"indices": torch.tensor([i for b in order for i in b], dtype=torch.int64),
            "sizes": torch.tensor([len(b) for b in order], dtype=torch.int64)}


def _unflatten_order(data: Optional[Dict[str, torch.Tensor]]) -> Optional[List[List[int]]]:
    if data is None:
        return None
    flat, sizes = data["indices"].tolist(), data["sizes"].tolist()
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [flat[s:s + n] for s, n in zip(starts, sizes)]


class _Trainer:
    def __init__(self, student, teacher, train_loader, val_loader, config: FinetuneConfig):
        self.config = config
        self.rank, self.world = world()
        self.is_main = self.rank == 0
        self.device = torch.device(config.device or (f"cuda:{torch.cuda.current_device()}"
                                                     if torch.cuda.is_available() else "cpu"))
        self.train_loader, self.val_loader = train_loader, val_loader
        if getattr(train_loader, "batch_sampler", None) is None:
            raise ValueError("finetune needs a train_loader with a batch size (DataLoader(batch_size=...))")
        self.resume_path = ckpt.latest_checkpoint(config.resume) if config.resume else None
        resumed = read_training_state(self.resume_path) if self.resume_path else None
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if config.seed is not None and resumed is None:
            _seed_everything(config.seed + self.rank)

        self.model = student.to(self.device).train()
        self.teacher = teacher.to(self.device).eval().requires_grad_(False) if teacher is not None else None
        self.policy = training_policy(student)
        phases = [] if resumed else self.policy.training_phases(student, config)
        self.schedule = Schedule(phases, config)
        self.run_dir = Path(config.run_dir) if config.run_dir else None
        defaults = method_defaults(config, self.policy)
        self.bn_refresh = defaults["bn_refresh"]
        sample = train_loader.dataset[0][0][None].to(self.device)
        self.objective = build_objective(config, self.model, self.teacher, sample, defaults, self.device)
        adversarial = self.objective.find(AdversarialFeatures)
        self.discriminators = adversarial.discriminators if adversarial else nn.ModuleDict()
        center = self.objective.find(CenterTerm)
        # A stage that leaves some parameters unused (BiPer's stage 1: the scales) must be declared to DDP.
        self.ddp = (nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=self.policy.stages > 1)
                    if self.world > 1 else self.model)

        self.phase_index, self.epoch, self.step = 0, 0, 0
        self.epoch_order: Optional[List[List[int]]] = None
        self.epoch_stats: Dict[str, float] = {}
        self.history = History()
        self.last_checkpoint: Optional[Path] = None
        self.reporter = Reporter(self.run_dir, config.progress, self.is_main)
        self.optimizers = Optimizers(self._build_optimizers)

        self.state = TrainingState()
        self.state.register("phases", self.schedule)
        for name, attribute in (("phase", "phase_index"), ("epoch", "epoch"), ("step", "step")):
            self.state.register(name, Attribute(self, attribute))
        self.state.register("model", Module(self.model, lambda: self.resume_path))
        self.state.register("discriminators", Module(self.discriminators, lambda: self.resume_path))
        if center is not None:
            self.state.register("center_loss", Module(center.center_loss, lambda: self.resume_path))
        self.state.register("optimizers", self.optimizers)
        # A DistributedSampler's order is replayed from the epoch number, not saved.
        distributed_order = isinstance(train_loader.sampler, DistributedSampler)
        self.state.register("epoch_order", Attribute(self, "epoch_order",
                                                     save=lambda o: None if distributed_order else _flatten_order(o),
                                                     load=self._order_after_resume))
        self.state.register("epoch_stats", Attribute(self, "epoch_stats", save=dict, load=dict))
        self.state.register("history", Attribute(self, "history", save=dataclasses.asdict,
                                                 load=lambda d: History(**d)))
        self.state.register("rng", RandomState(train_loader), per_rank=True)
        if resumed is not None:
            self._restore(resumed)
        else:
            self.optimizers.rebuild()

    # -- set-up ------------------------------------------------------------------------------

    def _make_optimizer(self, groups, lr: float) -> torch.optim.Optimizer:
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=self.config.momentum)
        return torch.optim.Adam(groups, lr=lr)

    def _build_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """Fresh optimizers for the current phase (a new stage starts from zero momentum): the
        student's (weight decay on conv/linear weights only), one per parameter group of the
        method (RBCN's C), then the objective's own (the discriminators').

        The stored weights of binary layers with a ``latent_gain`` g other than 1 get a group of
        their own at ``lr / g`` with weight decay ``weight_decay * g``: with the gain's
        straight-through gradient, SGD and Adam then take the steps on the latent weights that they
        take with ``latent_gain=1``, so a recipe's learning rates mean what they were measured with."""
        config, phase = self.config, self.schedule.phases[self.phase_index]
        groups = self.policy.parameter_groups(self.model, config)
        apart = {id(p) for group in groups for p in group.params}
        stored_by_gain: Dict[float, List[nn.Parameter]] = {}
        for _, layer in binary_layers(self.model):
            if layer.latent_gain != 1.0 and layer.weight.requires_grad and id(layer.weight) not in apart:
                stored_by_gain.setdefault(layer.latent_gain, []).append(layer.weight)
                apart.add(id(layer.weight))
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad and id(p) not in apart:
                (decay if p.dim() > 1 else no_decay).append(p)
        optimizers = {"student": self._make_optimizer(
            [{"params": decay, "weight_decay": config.weight_decay, "base_lr": phase.lr},
             {"params": no_decay, "weight_decay": 0.0, "base_lr": phase.lr},
             *({"params": stored, "weight_decay": config.weight_decay * gain, "lr": phase.lr / gain,
                "base_lr": phase.lr / gain} for gain, stored in stored_by_gain.items())], phase.lr)}
        for group in groups:
            if group.name in optimizers:
                raise ValueError(f"parameter group name {group.name!r} is taken")
            optimizers[group.name] = self._make_optimizer(
                [{"params": group.params, "weight_decay": 0.0, "base_lr": group.lr}], group.lr)
        self.student_optimizers = dict(optimizers)
        optimizers.update(self.objective.optimizers(torch.optim.Adam))
        return optimizers

    # -- epochs and batches --------------------------------------------------------------------

    @property
    def phases(self) -> List[Phase]:
        return self.schedule.phases

    @property
    def total_epochs(self) -> int:
        return self.schedule.total_epochs

    def _order_for_epoch(self, epoch: int) -> List[List[int]]:
        sampler = self.train_loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        batches = [list(b) for b in self.train_loader.batch_sampler]
        return batches[: self.config.steps_per_epoch] if self.config.steps_per_epoch else batches

    def _order_after_resume(self, saved: Optional[Dict[str, torch.Tensor]]) -> Optional[List[List[int]]]:
        order = _unflatten_order(saved)
        if order is None and self.step:  # mid-epoch with a DistributedSampler: replay its order
            return self._order_for_epoch(self.epoch)
        return order

    def _loader_for(self, batches: List[List[int]]) -> DataLoader:
        """A loader over a fixed list of batches, otherwise like the user's train loader. The order
        is fixed before the epoch starts, so a resumed run continues at the exact batch. Its own
        generator (seeding the workers) keeps it from drawing from the global RNG, which a resumed
        run would otherwise draw from once more than an uninterrupted one."""
        src = self.train_loader
        workers = src.num_workers
        generator = torch.Generator().manual_seed((self.config.seed or 0) * 1_000_003 + self.epoch)
        return DataLoader(src.dataset, batch_sampler=batches, num_workers=workers, collate_fn=src.collate_fn,
                          generator=generator,
                          pin_memory=src.pin_memory, timeout=src.timeout, worker_init_fn=src.worker_init_fn,
                          multiprocessing_context=src.multiprocessing_context if workers else None,
                          prefetch_factor=src.prefetch_factor if workers else None)

    def _lr_step(self) -> None:
        self.schedule.set_lr(self.student_optimizers, self.phase_index, self.epoch, self.step, len(self.epoch_order))

    # -- one step ------------------------------------------------------------------------------

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor,
                    only: Optional[List[nn.Parameter]] = None) -> Tuple[torch.Tensor, Dict[str, float], torch.Tensor]:
        """One step of the objective; ``only``: the student's optimizers update just these parameters
        (the others' gradients are dropped after the backward pass, which DDP still runs in full)."""
        config = self.config
        teacher_logits = None
        if self.teacher is not None and self.objective.needs_teacher:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
        logits = self.ddp(images)
        decay = config.loss_weight_decay ** (self.epoch // config.loss_weight_decay_every)
        batch = Batch(images, labels, logits, teacher_logits, decay)
        terms = self.objective.losses(batch)
        loss = sum(terms.values())
        for optimizer in self.student_optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if only is not None:
            kept = {id(p) for p in only}
            for p in self.model.parameters():
                if id(p) not in kept:
                    p.grad = None  # an optimizer skips a parameter without a gradient (no decay, no momentum)
        for optimizer in self.student_optimizers.values():
            optimizer.step()
        self.objective.after_step(batch)
        for key, value in batch.reports.items():
            self.epoch_stats[f"{key}_sum"] = self.epoch_stats.get(f"{key}_sum", 0.0) + value * len(labels)
        return loss.detach(), {k: float(v.detach()) for k, v in terms.items()}, logits.detach()

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> Tuple[nn.Module, History]:
        start_time = time.time()
        with batchnorm.paused(self.model):  # the recipes' own BatchNorm policy (bn_refresh), as measured
            self._run(start_time)
        return self.model.eval(), self.history

    def _run(self, start_time: float) -> None:
        config = self.config
        self.reporter.open()
        if self.resume_path is None and config.evaluate_initial and self.is_main and self.val_loader is not None:
            self.history.initial["student_val_acc"] = evaluate(self.model, self.val_loader, self.device,
                                                               config.progress, "student before")["acc"]
            if self.teacher is not None:
                self.history.initial["teacher_val_acc"] = evaluate(self.teacher, self.val_loader, self.device,
                                                                   config.progress, "teacher")["acc"]
        try:
            with _StopRequest(self.reporter.log) as stop:
                while self.epoch < self.total_epochs:
                    self._run_epoch(stop)
        finally:
            self.objective.close()
            self.reporter.close()
        self.history.checkpoint = str(self.last_checkpoint) if self.last_checkpoint else None
        self.reporter.summary(self.history, self.phases, time.time() - start_time, self.last_checkpoint)

    def _run_epoch(self, stop: _StopRequest) -> None:
        config = self.config
        phase_index = self.schedule.phase_of(self.epoch)
        if phase_index != self.phase_index:  # a new stage: fresh optimizers
            self.phase_index = phase_index
            self.optimizers.rebuild()
            self.history.best_val_acc = self.history.best_epoch = None  # stage-1 accuracy is not binary accuracy
        phase = self.phases[self.phase_index]
        if self.step == 0:
            self.policy.prepare_phase(self.model, phase)
        if self.epoch_order is None:
            self.epoch_order = self._order_for_epoch(self.epoch)
        batches = self.epoch_order
        bar = tqdm(total=len(batches), initial=self.step, disable=not (config.progress and self.is_main),
                   desc=f"epoch {self.epoch + 1}/{self.total_epochs} {phase.name}", dynamic_ncols=True)
        stats = self.epoch_stats
        segment_start, segment_images = time.time(), 0
        self.model.train()
        for images, labels in self._loader_for(batches[self.step:]):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            self._lr_step()
            loss, terms, logits = self._train_step(images, labels)
            n = len(labels)
            stats["count"] = stats.get("count", 0.0) + n
            stats["loss_sum"] = stats.get("loss_sum", 0.0) + float(loss) * n
            stats["correct"] = stats.get("correct", 0.0) + float((logits.argmax(1) == labels).sum())
            for key, value in terms.items():
                stats[f"{key}_sum"] = stats.get(f"{key}_sum", 0.0) + value * n
            self.step += 1
            segment_images += n * self.world
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss_sum'] / stats['count']:.3f}",
                            acc=f"{stats['correct'] / stats['count']:.3f}",
                            img_s=f"{segment_images / max(time.time() - segment_start, 1e-9):.0f}",
                            lr=f"{self.student_optimizers['student'].param_groups[0]['lr']:.2g}")
            if self._stop_requested(stop):
                bar.close()
                path = self._save_training_state()
                where = (f"saved {path}" if path else "rank 0 saved the checkpoint" if not self.is_main
                         else "nothing saved (no run_dir)")
                raise TrainingInterrupted(
                    f"training interrupted at epoch {self.epoch + 1}, step {self.step}; {where}. Resume with "
                    f"FinetuneConfig(resume={str(path)!r}, ...) or `binarize finetune --resume {path}`", path)
            if config.checkpoint_every and self.step % config.checkpoint_every == 0 and self.step < len(batches):
                self._save_training_state()
        bar.close()
        self._finish_epoch(phase, segment_images / max(time.time() - segment_start, 1e-9))

    def _stop_requested(self, stop: _StopRequest) -> bool:
        """All ranks must stop at the same step, so the flag is agreed on with an all-reduce."""
        flag = torch.tensor(float(stop.requested))
        if self.world > 1:
            flag = flag.to(self.device)
            all_reduce_max(flag)
        return bool(flag.item())

    def _finish_epoch(self, phase: Phase, images_per_s: float) -> None:
        config, stats = self.config, self.epoch_stats
        if self.bn_refresh:
            if config.bn_refresh_mode == "affine":
                self._train_batchnorm_affine()
            refresh_batchnorm(self.model, self._loader_for(self.epoch_order), self.device)
        elif config.bn_final_check and self.epoch + 1 == self.total_epochs:
            self._check_batchnorm()
        keys = sorted(stats)
        totals = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
        all_reduce_sum(totals)
        totals = dict(zip(keys, totals.tolist()))
        count = totals["count"]
        row: Dict[str, Any] = {"epoch": self.epoch + 1, "phase": phase.name,
                               "lr": self.student_optimizers["student"].param_groups[0]["lr"],
                               "train_loss": totals["loss_sum"] / count, "train_acc": totals["correct"] / count}
        for key in keys:
            if key.endswith("_sum") and key != "loss_sum":
                row[f"train_{key[:-4]}"] = totals[key] / count
        if self.is_main and self.val_loader is not None:
            result = evaluate(self.model, self.val_loader, self.device, config.progress, "validation")
            row.update(val_loss=result["loss"], val_acc=result["acc"])
        row["images_per_s"] = images_per_s
        self.history.epochs.append(row)
        final_phase = self.phase_index == len(self.phases) - 1
        improved = final_phase and "val_acc" in row and (self.history.best_val_acc is None
                                                         or row["val_acc"] > self.history.best_val_acc)
        if improved:
            self.history.best_val_acc, self.history.best_epoch = row["val_acc"], row["epoch"]
        self.reporter.epoch(row)
        self.epoch, self.step = self.epoch + 1, 0
        self.epoch_order, self.epoch_stats = None, {}
        if self.is_main and self.run_dir:
            if improved:
                ckpt.atomic_save(ckpt.student_checkpoint(self.model, config.recipe), self.run_dir / "best.pt")
            self.reporter.write_metrics(self.history.epochs)
        self._save_training_state()
        barrier()  # the other ranks wait for rank 0's evaluation and files

    def _check_batchnorm(self) -> None:
        """``bn_final_check``: the epoch's last batches (until they hold ``BATCHNORM_CHECK_SAMPLES``
        samples, at most a quarter of the epoch; an epoch of under 4 batches is not checked) judge
        the statistics that as many batches before them recompute. Training data only: the
        validation score stays a fair estimate."""
        order, count, samples = self.epoch_order, 0, 0
        while count < len(order) // 4 and samples < BATCHNORM_CHECK_SAMPLES:
            samples += len(order[-1 - count])
            count += 1
        if count == 0:
            return
        result = check_batchnorm(self.model, self._loader_for(order[-count:]),
                                 self._loader_for(order[-2 * count:-count]), self.device)
        if result is None:
            return
        self.history.batchnorm_check = result
        if result["kept"] == "recomputed":
            self.reporter.log(
                f"BatchNorm check: eval-mode accuracy on {result['check_samples']} training samples "
                f"{100 * result['running_acc']:.1f} % with the running averages, {100 * result['recomputed_acc']:.1f} % "
                f"with statistics recomputed from other training batches: keeping the recomputed ones "
                f"(bn_final_check=False keeps the running averages)")

    def _train_batchnorm_affine(self) -> None:
        """``bn_refresh_mode="affine"``: one pass over the epoch's batches in which the objective trains
        only the BatchNorm weights and biases, W and C fixed (RBCN algorithm 1, line 17), at the
        learning rate of the epoch's last step. Its numbers are not the epoch's: the epoch's
        statistics are kept aside meanwhile."""
        affine = [p for m in self.model.modules() if isinstance(m, _BatchNorm) for p in m.parameters()]
        epoch_stats, self.epoch_stats = self.epoch_stats, {}
        self.model.train()
        for images, labels in self._loader_for(self.epoch_order):
            self._train_step(images.to(self.device), labels.to(self.device), only=affine)
        self.epoch_stats = epoch_stats

    # -- checkpoints -----------------------------------------------------------------------------

    def _save_training_state(self) -> Optional[Path]:
        """Every rank calls this (the random states are gathered from all of them); rank 0 writes."""
        if not self.run_dir:
            return None
        header = {"recipe": self.config.recipe, "config": self.config.to_data(), "world_size": self.world}
        state = self.state.state_dict(header, self.is_main)
        if state is None:
            return None
        folder = self.run_dir / "checkpoints"
        path = ckpt.atomic_save(state, folder / ckpt.checkpoint_name(self.epoch, self.step))
        ckpt.prune_checkpoints(folder, self.config.keep_checkpoints)
        self.last_checkpoint = path
        return path

    def _restore(self, state: Dict[str, Any]) -> None:
        path = self.resume_path
        if state.get("world_size", 1) != self.world and state["step"] != 0:
            raise ckpt.CheckpointError(f"{path} was saved mid-epoch by {state['world_size']} process(es); resume it "
                                       f"with the same number ({self.world} now), or from an epoch-end checkpoint")
        try:
            self.state.load_state_dict(state)
        except ckpt.CheckpointError:
            raise
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise ckpt.CheckpointError(f"{path} does not fit this run (different loss options or model?): {err}") from err
        self.last_checkpoint = path
        self.reporter.log(f"resumed from {path}: epoch {self.epoch + 1}, step {self.step}")
