"""Semi-supervised mask refinement (AlignDiff Alg. 1) and the out-of-distribution filter (AlignDiff App. D.4)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from maskforge.eval.metrics import iou
from maskforge.models.device import resolve_device
from maskforge.models.hsnet.checkpoint import load_checkpoint
from maskforge.models.hsnet.segmenter import HSNetSegmenter, vote_masks
from maskforge.storage.codec import ShardSample
from maskforge.storage.labels import LABEL_DTYPE
from maskforge.tasks.config import RefinementConfig


@dataclass(frozen=True)
class Refined:
    """One generated sample after Algorithm 1: its mask, the branch taken and the consensus IoU."""

    mask: np.ndarray  # (H, W) bool
    method: str  # "semi-accepted" (coarse mask kept, joined D_good) or "semi-reestimated" (segmenter's mask)
    consensus_iou: float  # IoU(first prediction from the real shots, coarse mask)


def _by_size(images: Sequence[np.ndarray]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[image.shape].append(i)
    return groups


def predict_masks(segmenter: HSNetSegmenter, state, images: Sequence[np.ndarray], threshold: float) -> list[np.ndarray]:
    """Return the k-shot voted mask of every image (batched per image size; `threshold` is the vote cut)."""
    out: list[np.ndarray | None] = [None] * len(images)
    for indices in _by_size(images).values():
        votes = vote_masks(segmenter.shot_masks(state, [images[i] for i in indices]), threshold).cpu().numpy()
        for row, i in enumerate(indices):
            out[i] = votes[row]
    return out  # type: ignore[return-value]


def refine_masks(
    segmenter: HSNetSegmenter,
    real: Sequence[tuple[np.ndarray, np.ndarray]],
    generated: Sequence[tuple[np.ndarray, np.ndarray]],
    alpha: float = 0.8,
    max_added: int = 4,
    vote_threshold: float = 0.5,
) -> list[Refined]:
    """AlignDiff Algorithm 1 on one class: D_good = the real (image, mask) shots, D_bad = (image, coarse mask).

    1. Condition the segmenter on D_good; predict every generated image.
    2. Where IoU(prediction, coarse) >= alpha, the sample joins D_good with its coarse mask ("semi-accepted").
    3. Re-condition on the real shots plus the top-`max_added` accepted samples by IoU (the cap bounds the k-shot
       vote's cost: one 1-shot pass per support); support features are computed once per conditioning.
    4. Every remaining sample's mask is re-estimated with the re-conditioned prediction ("semi-reestimated").
    """
    if not real:
        raise ValueError("refine_masks: no real shots; D_good needs at least one (image, mask) pair")
    if not generated:
        return []
    state = segmenter.condition(list(real))
    images = [image for image, _ in generated]
    first = predict_masks(segmenter, state, images, vote_threshold)
    consensus = [iou(p, coarse.astype(bool)) for p, (_, coarse) in zip(first, generated)]
    accepted = [
        i for i, (score, (_, coarse)) in enumerate(zip(consensus, generated)) if score >= alpha and coarse.any()
    ]
    joining = sorted(accepted, key=lambda i: -consensus[i])[:max_added]
    if joining:
        state = segmenter.condition([(generated[i][0], generated[i][1].astype(bool)) for i in joining], base=state)
    remaining = [i for i in range(len(generated)) if i not in set(accepted)]
    if not joining:  # D_good did not grow: the re-conditioned prediction is the first one
        second = [first[i] for i in remaining]
    else:
        second = predict_masks(segmenter, state, [images[i] for i in remaining], vote_threshold) if remaining else []
    results: list[Refined | None] = [None] * len(generated)
    for i in accepted:
        results[i] = Refined(generated[i][1].astype(bool), "semi-accepted", consensus[i])
    for i, mask in zip(remaining, second):
        results[i] = Refined(mask, "semi-reestimated", consensus[i])
    return results  # type: ignore[return-value]


def ood_scores(
    segmenter: HSNetSegmenter,
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    real: Sequence[tuple[np.ndarray, np.ndarray]],
) -> list[float]:
    """AlignDiff D.4: each generated (image, mask) is a 1-shot support segmenting the real shots; return its mean
    IoU to the real masks (a sample with an empty mask cannot be a support and scores 0)."""
    scores = [0.0] * len(samples)
    usable = [i for i, (_, mask) in enumerate(samples) if mask.any()]
    if not usable or not real:
        return scores
    state = segmenter.condition([(samples[i][0], samples[i][1].astype(bool)) for i in usable])
    real_images = [image for image, _ in real]
    totals = np.zeros(len(usable))
    for indices in _by_size(real_images).values():
        # (supports, images, H, W): every generated sample's 1-shot mask of every real shot of this size
        masks = segmenter.shot_masks(state, [real_images[j] for j in indices]).cpu().numpy()
        for col, j in enumerate(indices):
            truth = real[j][1].astype(bool)
            totals += np.array([iou(masks[row, col], truth) for row in range(len(usable))])
    for row, i in enumerate(usable):
        scores[i] = float(totals[row] / len(real))
    return scores


#: Sources whose prompt is text only: the OOD filter applies to them (ControlNet images follow a real mask).
TEXT_SOURCES = ("text", "embedding")

_SEGMENTERS: dict[tuple, HSNetSegmenter] = {}


def load_segmenter(cfg: RefinementConfig) -> HSNetSegmenter:
    """Return an HSNetSegmenter for a RefinementConfig's checkpoint (loaded strictly once per process)."""
    device = resolve_device(cfg.device, "refinement.device")
    key = (cfg.checkpoint, device, cfg.batch_size)
    if key not in _SEGMENTERS:
        _SEGMENTERS.clear()
        net, _ = load_checkpoint(cfg.checkpoint)
        _SEGMENTERS[key] = HSNetSegmenter(net, device=device, batch_size=cfg.batch_size)
    return _SEGMENTERS[key]


def refine_class(
    segmenter: HSNetSegmenter,
    samples: list,
    real: list[tuple[np.ndarray, np.ndarray]],
    class_id: int,
    cfg: RefinementConfig,
    dropped_samples: list | None = None,
) -> tuple[list, dict[str, list[str]]]:
    """Refine one class's diffusion samples, drop those left without a class pixel, then filter OOD text/embedding
    samples; return (kept samples, {"empty": keys, "ood": keys}).

    A sample's starting mask is its label's class pixels (the coarse mask for text/embedding images, the support
    mask for ControlNet images); it is kept as KEY.coarse.png. Kept samples carry the refined label, the branch
    as mask_method, and scores consensus_iou (and ood_iou where the filter ran). `dropped_samples`, when given,
    receives the dropped samples, scored and with their refined labels.
    """
    starting = [s.label == class_id for s in samples]
    refined = refine_masks(
        segmenter, real, [(s.image, m) for s, m in zip(samples, starting)], cfg.alpha, cfg.max_added, cfg.vote_threshold
    )
    out = []
    for sample, start, result in zip(samples, starting, refined):
        meta = {
            **sample.meta,
            "mask_method": result.method,
            "scores": {**sample.meta["scores"], "consensus_iou": result.consensus_iou},
            "refinement": {
                "starting_mask_method": sample.meta["mask_method"],
                "alpha": cfg.alpha,
                "max_added": cfg.max_added,
                "vote_threshold": cfg.vote_threshold,
                "checkpoint": cfg.checkpoint,
            },
        }
        label = np.where(result.mask, class_id, 0).astype(LABEL_DTYPE)
        out.append(ShardSample(sample.key, sample.image, label, meta, {**sample.extras, "coarse.png": start}))
    # a sample whose refined mask holds no pixel of the class cannot teach the class (nor be a support): drop it
    rejected = {"empty": [s.key for s in out if not (s.label == class_id).any()], "ood": []}
    if cfg.ood_filter:
        text = [i for i, s in enumerate(out) if s.meta["source"] in TEXT_SOURCES and s.key not in rejected["empty"]]
        scores = ood_scores(segmenter, [(out[i].image, out[i].label == class_id) for i in text], real)
        for i, score in zip(text, scores):
            out[i].meta["scores"]["ood_iou"] = score
        rejected["ood"] = [out[i].key for i, score in zip(text, scores) if score < cfg.beta]
    dropped = set(rejected["empty"]) | set(rejected["ood"])
    if dropped_samples is not None:  # the caller keeps what was dropped (for the run's rejected-samples view)
        dropped_samples.extend(s for s in out if s.key in dropped)
    return [s for s in out if s.key not in dropped], rejected
