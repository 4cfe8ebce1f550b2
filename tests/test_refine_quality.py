"""Measured refinement quality on the toy world: refined masks beat corrupted coarse masks in IoU to the truth."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from maskforge.eval.corruption import CORRUPTIONS, CorruptionError, corrupt, dilate, erode, object_radius
from maskforge.eval.metrics import iou

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "models" / "checkpoints" / "hsnet-toy-f0.safetensors"
CONFIG = ROOT / "configs" / "hsnet-toy-refine.yaml"

#: The study's setup (docs/generation.md, refinement): fold 0's 4 novel classes, toy val images (never trained on),
#: K real shots per class as D_good, the next PER_CLASS images of the class with corrupted true masks as D_bad
#: (78 images: some classes have fewer), corruption recipes cycled per image, one rng (seed 0) for the whole run.
K, PER_CLASS, N_VAL = 1, 20, 200
#: Strong corruptions: coarse masks at ~0.33 mean IoU to truth.
STRONG = [
    [("dilate", 0.6)],
    [("erode", 0.5), ("holes", 0.4)],
    [("blobs", 0.7)],
    [("shift", 0.8)],
    [("shift", 0.4), ("blobs", 0.5)],
]
#: Two corruptions per mask: coarse masks at ~0.37 mean IoU to truth.
MIXED = [
    [("shift", 0.5), ("dilate", 0.2)],
    [("erode", 0.3), ("blobs", 0.5)],
    [("dilate", 0.5), ("holes", 0.4)],
    [("shift", 0.6), ("erode", 0.2)],
    [("blobs", 0.6), ("holes", 0.4)],
]


def square(size: int = 64) -> np.ndarray:
    """A 20 x 30 rectangle on a size x size canvas."""
    mask = np.zeros((size, size), bool)
    mask[20:40, 15:45] = True
    return mask


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corruptions_are_deterministic_and_degrade(kind):
    mask = square()
    a = corrupt(mask, np.random.default_rng(3), kind, strength=0.4)
    b = corrupt(mask, np.random.default_rng(3), (kind, 0.4))
    assert a.dtype == bool and a.shape == mask.shape and (a == b).all()
    assert iou(a, mask) < 0.95  # visibly wrong
    assert (corrupt(mask, np.random.default_rng(3), (kind, 0.0)) == mask).all()  # strength 0 is the identity
    assert mask.sum() == 600  # the input is never changed in place


def test_corruption_directions_and_errors():
    mask = square()
    rng = np.random.default_rng(0)
    grown, shrunk = dilate(mask, rng, 0.3), erode(mask, rng, 0.3)
    assert (grown >= mask).all() and grown.sum() > mask.sum()
    assert (shrunk <= mask).all() and shrunk.sum() < mask.sum()
    assert object_radius(mask) == pytest.approx(np.sqrt(600 / np.pi))
    with pytest.raises(CorruptionError, match="unknown corruption 'blur'"):
        corrupt(mask, rng, "blur")
    with pytest.raises(CorruptionError, match="strength must be >= 0"):
        corrupt(mask, rng, ("dilate", -1))


def quality(segmenter, kinds, alpha: float = 0.8) -> dict:
    """Run the study on fold 0's novel classes; return mean IoUs to truth of coarse and refined masks, per branch."""
    from maskforge.eval.datasets import build_dataset
    from maskforge.eval.datasets.config import ToyConfig
    from maskforge.eval.episodes import sample_shots
    from maskforge.eval.folds import get_fold
    from maskforge.storage.labels import binary_mask
    from maskforge.tasks.refine import refine_masks

    dataset = build_dataset("toy", None, ToyConfig(image_size=64, n_train=400, n_val=N_VAL))
    index = dataset.class_index("val")
    rng = np.random.default_rng(0)
    coarse_iou, refined_iou, branches = [], [], {"semi-accepted": [], "semi-reestimated": []}
    for class_id in get_fold("toy", 0).novel:
        shots = sample_shots(index, "toy", 0, class_id, K, 0)
        others = [i for i in sorted(index[class_id]) if i not in shots][:PER_CLASS]

        def pair(image_id):
            record = dataset.load(image_id)
            return record.image, binary_mask(record.label, class_id)

        real = [pair(i) for i in shots]
        truth = [pair(i) for i in others]
        coarse = [(image, corrupt(mask, rng, *kinds[j % len(kinds)])) for j, (image, mask) in enumerate(truth)]
        for (_, mask), (_, rough), refined in zip(truth, coarse, refine_masks(segmenter, real, coarse, alpha=alpha)):
            before, after = iou(rough, mask), iou(refined.mask, mask)
            coarse_iou.append(before)
            refined_iou.append(after)
            branches[refined.method].append((before, after))

    def summary(pairs):
        """(count, mean coarse IoU, mean refined IoU) of one branch; the means are None when it is empty."""
        return (len(pairs), *(float(np.mean(col)) for col in zip(*pairs))) if pairs else (0, None, None)

    return {
        "n": len(coarse_iou),
        "coarse": float(np.mean(coarse_iou)),
        "refined": float(np.mean(refined_iou)),
        "branches": {k: summary(v) for k, v in branches.items()},
    }


@pytest.fixture(scope="module")
def segmenter():
    """The shipped toy HSNet (fold 0 base classes), one torch thread."""
    from maskforge.models.device import torch_threads
    from maskforge.models.hsnet.checkpoint import load_checkpoint
    from maskforge.models.hsnet.segmenter import HSNetSegmenter

    with torch_threads(1):
        net, _ = load_checkpoint(CHECKPOINT)
        yield HSNetSegmenter(net, "cpu", batch_size=16)


def test_shipped_checkpoint_matches_its_config():
    from maskforge.models.hsnet.checkpoint import read_state

    assert CHECKPOINT.stat().st_size < 15 * 2**20
    _, meta = read_state(CHECKPOINT)
    config = yaml.safe_load(CONFIG.read_text())
    for section in ("dataset", "model", "train"):
        assert meta["config"][section] == {**meta["config"][section], **config[section]}, section


@pytest.mark.parametrize(("name", "kinds", "margin"), [("strong", STRONG, 0.05), ("mixed", MIXED, 0.03)])
def test_refinement_beats_corrupted_masks(segmenter, name, kinds, margin):
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        result = quality(segmenter, kinds)
    print(name, result)
    # Measured (shipped checkpoint, K=1, alpha 0.8, 78 images; the segmenter alone scores 0.429 mean IoU):
    #   strong: coarse 0.330 -> refined 0.431 (1 accepted 0.840 -> 0.840, 77 re-estimated 0.323 -> 0.425)
    #   mixed:  coarse 0.368 -> refined 0.429 (78 re-estimated)
    # Milder corruptions (coarse >= 0.46) come out worse after refinement: the tiny segmenter is the ceiling.
    assert result["n"] == 78
    assert result["refined"] > result["coarse"] + margin
    accepted, _, _ = result["branches"]["semi-accepted"]
    reestimated, before, after = result["branches"]["semi-reestimated"]
    assert accepted + reestimated == 78 and after > before  # the gain comes from the re-estimated branch
