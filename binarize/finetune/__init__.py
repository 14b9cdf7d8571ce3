"""``binarize.finetune``: train a converted (binary) student against its frozen float teacher.

    student = binarize.convert(model, "biper")
    student, history = binarize.finetune(student, model, train_loader, val_loader,
                                         binarize.FinetuneConfig(epochs=5, run_dir="runs/biper"))

The objective (:mod:`.objective`), each term switched by a :class:`FinetuneConfig` field (0 switches it off):

- cross-entropy on the labels (``ce_weight``);
- knowledge distillation on the logits, ``T^2 KL(softmax(t/T) || softmax(s/T))`` (``kd_weight``,
  ``kd_temperature``; Hinton et al., 2015);
- RBCN's adversarial feature distillation (Liu et al., IJCAI 2019, eqs. 2 and 4, algorithm 1): one
  discriminator per selected feature map, teacher maps "real", student maps "fake". Every step the
  discriminators take one step of their own optimizer on ``-[log D(R) + log(1 - D(T))]``, then the
  student gets ``lambda2 / 2 * ||1 - D(T)||^2`` (``gan_weight``);
- the losses the binary layers add (``binarize.extra_losses``: RBCN's kernel loss, lambda1 set by
  ``RBCNConfig.kernel_loss_weight``);
- the center loss on the features entering the classifier (``center_loss_weight``; Wen et al., 2016).

What depends on the method comes from its record in :mod:`binarize.methods` (its training policy):
the phases (BiPer trains in two stages, Vargas et al., 2024, section 3.1: stage 1 with the
real-valued ``sin(omega w)`` weights at ``stage1_lr``, then ``binarize.set_stage(model, 2)``, which
re-fits the scales from the stage-1 weights, and stage 2 at ``lr``, each with fresh optimizers and
its own schedule; others train in one phase), parameter groups with their own optimizer and
learning rate (RBCN's C at ``rbcn_c_lr``), and defaults for options left at None (CBCN: the center
loss; RBCN: the BatchNorm refresh after every epoch, ``bn_refresh``). Each paper's own recipe:
``FinetuneConfig.paper(method, dataset)``. A run ends with a check of the BatchNorm statistics on
training batches, which replaces the running averages only where they are clearly broken
(``bn_final_check``, :func:`.evaluation.check_batchnorm`).

Runs are resumable exactly (``resume=``; :mod:`.state` lists what a checkpoint holds), Ctrl-C saves a
checkpoint, and under ``torchrun`` the student is wrapped in ``DistributedDataParallel`` (see
:func:`init_distributed`). Modules: :mod:`.config` (options, history), :mod:`.objective`,
:mod:`.phases` (phases, schedule), :mod:`.loop` (the trainer), :mod:`.state` (saved state),
:mod:`.distributed`, :mod:`.evaluation`, :mod:`.reporting` (log, metrics.csv, plot, summary).
"""
from .config import FinetuneConfig, History
from .distributed import init_distributed
from .evaluation import evaluate, refresh_batchnorm
from .loop import TrainingInterrupted, _Trainer, finetune
from .objective import (CenterLoss, FeatureDiscriminator, adversarial_loss, default_feature_maps,
                        discriminator_loss, kd_loss)
from .phases import Phase, cosine_lr

__all__ = ["FinetuneConfig", "History", "TrainingInterrupted", "finetune", "evaluate", "init_distributed",
           "kd_loss", "discriminator_loss", "adversarial_loss", "FeatureDiscriminator", "CenterLoss",
           "cosine_lr", "refresh_batchnorm", "default_feature_maps", "Phase"]
