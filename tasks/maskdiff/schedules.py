"""The K-shot stage's detector learning-rate schedule: constant (finetune.schedule fixed), or TFA's (tfa)."""

from __future__ import annotations

import torch

from maskforge.tasks.maskdiff.config import TFA_FINETUNE_DECAY_AT, MaskdiffFinetuneConfig

#: TFA's fine-tuning warm-up: 10 iterations (configs/COCO-detection/faster_rcnn_R_101_FPN_ft_all_*shot.yaml:24,
#: WARMUP_ITERS; detectron2's linear warm-up from 0.001 x lr).
TFA_WARMUP_ITERS, TFA_WARMUP_FACTOR = 10, 0.001


def kshot_lr_factor(steps: int) -> callable:
    """Return TFA's fine-tuning LR factor of a step: linear warm-up over 10 steps, then 1, x0.1 from 90 % of `steps`."""
    drop = int(TFA_FINETUNE_DECAY_AT * steps)

    def factor(step: int) -> float:
        value = 0.1 if step >= drop else 1.0
        if step < TFA_WARMUP_ITERS:
            value *= TFA_WARMUP_FACTOR + (1 - TFA_WARMUP_FACTOR) * step / TFA_WARMUP_ITERS
        return value

    return factor


def kshot_lr_schedule(
    optimiser: torch.optim.Optimizer, finetune: MaskdiffFinetuneConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Return the K-shot detector's LR schedule: None (constant lr) for schedule fixed, TFA's for schedule tfa over
    finetune.detector_iters() steps."""
    if finetune.schedule != "tfa":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimiser, kshot_lr_factor(finetune.detector_iters()))
