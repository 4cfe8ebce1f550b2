"""TFA detector: spec bounds, tiny training and negative images, cosine maths, randinit surgery, freezing, targets,
checkpoints and strict local ResNet-50 backbone loading."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet50
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops.misc import FrozenBatchNorm2d

from maskforge.eval.instances import Instance
from maskforge.models.maskdiff.detector import (
    CosineBoxPredictor,
    DetectorError,
    DetectorSpec,
    build_detector,
    detect,
    detector_loss,
    freeze_for_finetune,
    instances_to_target,
    labels_for,
    load_backbone_file,
    load_detector,
    predictor_kind,
    save_detector,
    surgery_randinit,
    tiny_spec,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


def toy_batch(classes=3):
    """Four 64-px dark noisy images, each with one coloured rectangle of known box and label."""
    gen = torch.Generator().manual_seed(0)
    images, targets = [], []
    colours = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.9, 0.2], [0.2, 0.1, 0.9]])
    for i in range(4):
        image = torch.rand(3, 64, 64, generator=gen) * 0.2
        x0, y0, w, h = 8 + 6 * i, 10 + 4 * i, 24 - 2 * i, 20 + i
        label = 1 + i % classes
        image[:, y0 : y0 + h, x0 : x0 + w] = colours[label - 1][:, None, None]
        images.append(image)
        targets.append(
            {"boxes": torch.tensor([[x0, y0, x0 + w, y0 + h]], dtype=torch.float32), "labels": torch.tensor([label])}
        )
    return images, targets


# --- spec ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, field",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 1001}, "num_classes"),
        ({"min_size": 31}, "min_size"),
        ({"max_size": 4096}, "max_size"),
        ({"min_size": 128, "max_size": 64}, "min_size"),
        ({"backbone": "vgg16"}, "backbone"),
        ({"tiny_widths": (16, 32)}, "tiny_widths"),
        ({"detections_per_img": 0}, "detections_per_img"),
    ],
)
def test_spec_rejects_out_of_range_values_naming_the_field(change, field):
    """Typed sizes are bounded; the error names the field."""
    values = {"backbone": "tiny", "num_classes": 3, "min_size": 64, "max_size": 64} | change
    with pytest.raises(DetectorError, match=rf"DetectorSpec\.{field}"):
        DetectorSpec(**values)


def test_spec_dict_round_trip():
    """to_dict/from_dict give the same spec; unknown keys are refused by name."""
    spec = DetectorSpec("tiny", 7, 64, 96, tiny_widths=(8, 16, 24), seed=3)
    assert DetectorSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(DetectorError, match="bogus"):
        DetectorSpec.from_dict(spec.to_dict() | {"bogus": 1})


# --- training and detection ---------------------------------------------------------------------------------------


def test_tiny_detector_is_seeded_and_has_the_classes():
    """Same seed, same weights; another seed, other weights; predictor rows = background + classes."""
    a, b = build_detector(tiny_spec(3)), build_detector(tiny_spec(3))
    c = build_detector(tiny_spec(3, seed=1))
    key = "roi_heads.box_head.fc6.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])
    assert a.roi_heads.box_predictor.cls_score.out_features == 4
    assert a.roi_heads.box_predictor.bbox_pred.out_features == 16
    assert predictor_kind(a) == "linear"


def test_tiny_training_reduces_the_loss():
    """Twenty SGD steps on four known boxes: finite losses, the last five average well under the first three."""
    torch.manual_seed(0)  # torchvision's RPN/ROI samplers draw from the global RNG
    model = build_detector(tiny_spec(3))
    images, targets = toy_batch()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    totals = []
    for _ in range(20):
        losses = detector_loss(model, images, targets)
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        total = sum(losses.values())
        assert math.isfinite(total.item())
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        totals.append(total.item())
    assert np.mean(totals[-5:]) < 0.5 * np.mean(totals[:3]), totals


def test_negative_image_trains():
    """An image without instances (an empty (0, 4) target) gives finite losses and gradients."""
    torch.manual_seed(0)
    model = build_detector(tiny_spec(3))
    images, targets = toy_batch()
    empty = instances_to_target([], {1: 1})
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    losses = detector_loss(model, images[:2], [targets[0], empty])
    total = sum(losses.values())
    assert all(math.isfinite(v.item()) for v in losses.values())
    total.backward()
    grad = model.roi_heads.box_predictor.cls_score.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    only_negative = detector_loss(model, images[:1], [empty])
    assert only_negative["loss_box_reg"].item() == 0.0
    assert math.isfinite(only_negative["loss_classifier"].item())


def test_detector_loss_rejects_bad_labels():
    """Labels outside 1..C are refused before torchvision sees them."""
    model = build_detector(tiny_spec(2))
    images, targets = toy_batch(2)
    bad = [dict(t) for t in targets]
    bad[1] = {"boxes": targets[1]["boxes"], "labels": torch.tensor([3])}
    with pytest.raises(DetectorError, match=r"targets\[1\]\['labels'\]"):
        detector_loss(model, images, bad)


def test_detect_formats_and_threshold():
    """detect gives xyxy boxes inside the image, labels 1..C, scores above the threshold, and restores the model's."""
    model = build_detector(tiny_spec(3))
    images, _ = toy_batch()
    saved = model.roi_heads.score_thresh
    out = detect(model, images, score_threshold=0.0)
    assert len(out) == 4 and not model.training
    assert model.roi_heads.score_thresh == saved
    for det in out:
        assert set(det) == {"boxes", "labels", "scores"}
        assert 0 < len(det["boxes"]) <= 20
        assert det["boxes"].shape[1] == 4
        assert (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all() and det["boxes"].min() >= 0
        assert det["boxes"].max() <= 64
        assert det["labels"].min() >= 1 and det["labels"].max() <= 3
    top = max(float(d["scores"].max()) for d in out)
    strict = detect(model, images, score_threshold=top - 1e-6)
    assert sum(len(d["scores"]) for d in strict) >= 1
    assert all((d["scores"] > top - 1e-6).all() for d in strict)
    with pytest.raises(DetectorError, match="score_threshold"):
        detect(model, images, score_threshold=1.0)


# --- cosine predictor ---------------------------------------------------------------------------------------------


def test_cosine_predictor_is_scaled_cosine_of_known_vectors():
    """scores = 20 x cosine(feature, row), no bias; box deltas are the plain linear layer."""
    head = CosineBoxPredictor(2, 3)
    assert head.cls_score.bias is None and head.bbox_pred.out_features == 12
    with torch.no_grad():
        head.cls_score.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5], [1.0, 1.0]]))
    x = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    scores, deltas = head(x.view(2, 2, 1, 1))
    s = 1 / math.sqrt(2)
    expected = 20 * torch.tensor([[0.6, 0.8, 7 * s / 5], [0.0, -1.0, -s]])
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(deltas, x @ head.bbox_pred.weight.T + head.bbox_pred.bias)


# --- surgery and freezing -----------------------------------------------------------------------------------------


BASE, NOVEL, ALL = [3, 7], [1, 5], [1, 3, 5, 7]


def base_model():
    """A tiny base detector over classes 3 and 7 with non-zero biases (so copying them shows)."""
    model = build_detector(dataclasses.replace(tiny_spec(len(BASE)), tiny_head_size=256))
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.uniform_(-1, 1)
        model.roi_heads.box_predictor.bbox_pred.bias.uniform_(-1, 1)
    return model


def test_surgery_randinit_copies_base_rows_and_randomises_novel_ones():
    """Background and base rows are the base model's (by class id); novel rows are seeded N(0, 0.01)/N(0, 0.001)."""
    model = base_model()
    old = model.roi_heads.box_predictor
    old_w, old_b = old.cls_score.weight.detach().clone(), old.cls_score.bias.detach().clone()
    old_bw, old_bb = old.bbox_pred.weight.detach().clone(), old.bbox_pred.bias.detach().clone()
    surgery_randinit(model, BASE, NOVEL, ALL, seed=0, cosine=False)
    new = model.roi_heads.box_predictor
    assert isinstance(new, FastRCNNPredictor)
    assert new.cls_score.weight.shape == (5, 256) and new.bbox_pred.weight.shape == (20, 256)
    for new_row, old_row in ((0, 0), (2, 1), (4, 2)):  # background, class 3, class 7
        assert torch.equal(new.cls_score.weight[new_row], old_w[old_row])
        assert torch.equal(new.cls_score.bias[new_row], old_b[old_row])
        assert torch.equal(new.bbox_pred.weight[4 * new_row : 4 * new_row + 4], old_bw[4 * old_row : 4 * old_row + 4])
        assert torch.equal(new.bbox_pred.bias[4 * new_row : 4 * new_row + 4], old_bb[4 * old_row : 4 * old_row + 4])
    novel = [1, 3]  # classes 1 and 5
    cls_rows = new.cls_score.weight[novel].detach()
    box_rows = torch.cat([new.bbox_pred.weight[4 * r : 4 * r + 4] for r in novel]).detach()
    assert 0.008 < cls_rows.std().item() < 0.012
    assert 0.0008 < box_rows.std().item() < 0.0012
    assert (new.cls_score.bias[novel] == 0).all()
    assert all((new.bbox_pred.bias[4 * r : 4 * r + 4] == 0).all() for r in novel)
    again = surgery_randinit(base_model(), BASE, NOVEL, ALL, seed=0).roi_heads.box_predictor
    other = surgery_randinit(base_model(), BASE, NOVEL, ALL, seed=1).roi_heads.box_predictor
    assert torch.equal(again.cls_score.weight, new.cls_score.weight)
    assert not torch.equal(other.cls_score.weight[novel], new.cls_score.weight[novel])


def test_surgery_cosine_takes_base_weights_without_bias():
    """cosine=True: a CosineBoxPredictor (scale 20) whose base rows are the base classifier weights; it detects."""
    model = base_model()
    old_w = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    surgery_randinit(model, BASE, NOVEL, ALL, seed=0, cosine=True)
    new = model.roi_heads.box_predictor
    assert isinstance(new, CosineBoxPredictor) and new.scale == 20.0 and new.cls_score.bias is None
    assert predictor_kind(model) == "cosine"
    assert torch.equal(new.cls_score.weight[[0, 2, 4]], old_w)
    images, _ = toy_batch()
    out = detect(model, images[:1], score_threshold=0.0)
    assert out[0]["labels"].max() <= 4


@pytest.mark.parametrize(
    "base, novel, all_ids, match",
    [
        ([3, 7], [3, 5], [3, 5, 7], "base and novel"),
        ([3, 7], [1, 5], [1, 3, 5], "exactly the base and novel"),
        ([3], [1, 5], [1, 3, 5], "classifier rows"),
        ([3, 3], [1], [1, 3, 3], "repeats"),
    ],
)
def test_surgery_rejects_inconsistent_ids(base, novel, all_ids, match):
    """Overlaps, missing ids, repeats and a base count that does not match the predictor are errors."""
    with pytest.raises(DetectorError, match=match):
        surgery_randinit(base_model(), base, novel, all_ids)


def test_freeze_for_finetune_trains_only_the_box_predictor():
    """Only roi_heads.box_predictor's parameters keep gradients, and a step changes nothing else."""
    model = surgery_randinit(base_model(), BASE, NOVEL, ALL, cosine=True)
    names = freeze_for_finetune(model)
    assert names == [
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    ]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(names)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, targets = toy_batch()
    torch.manual_seed(0)
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(detector_loss(model, images, [dict(t, labels=t["labels"].clamp(max=4)) for t in targets]).values()).backward()
    optimiser.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(names)
    linear = build_detector(tiny_spec(2))
    parts = ("cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias")
    assert freeze_for_finetune(linear) == [f"roi_heads.box_predictor.{n}" for n in parts]


# --- targets ------------------------------------------------------------------------------------------------------


def box_mask(x0, y0, x1, y1, shape=(32, 40)):
    """A boolean mask with pixels [y0, y1) x [x0, x1) set."""
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_instances_to_target_converts_boxes_and_skips_crowd():
    """COCO xywh of the visible pixels becomes xyxy pixel edges; crowd instances are left out by default."""
    l_shape = box_mask(2, 3, 10, 8) | box_mask(2, 3, 4, 20)  # an L: its box spans both arms
    instances = [
        Instance(5, l_shape),
        Instance(9, box_mask(20, 0, 40, 1)),
        Instance(5, box_mask(0, 0, 40, 32), iscrowd=True),
        Instance(7, box_mask(11, 12, 12, 13)),
    ]
    mapping = labels_for([5, 7, 9])
    assert mapping == {5: 1, 7: 2, 9: 3}
    target = instances_to_target(instances, mapping)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[2, 3, 10, 20], [20, 0, 40, 1], [11, 12, 12, 13]]
    assert target["labels"].tolist() == [1, 3, 2]
    with_crowd = instances_to_target(instances, mapping, skip_crowd=False)
    assert with_crowd["boxes"][2].tolist() == [0, 0, 40, 32] and with_crowd["labels"].tolist() == [1, 3, 1, 2]
    only_crowd = instances_to_target(instances[2:3], mapping)
    assert only_crowd["boxes"].shape == (0, 4)
    with pytest.raises(DetectorError, match="class 7 has no label"):
        instances_to_target(instances, {5: 1, 9: 2})


# --- checkpoints --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cosine", [False, True])
def test_save_load_round_trip_gives_identical_detections(tmp_path, cosine):
    """The reloaded model (linear or cosine predictor) detects exactly as the saved one; spec, ids, metadata kept."""
    model = surgery_randinit(base_model(), BASE, NOVEL, ALL, seed=2, cosine=cosine)
    spec = dataclasses.replace(tiny_spec(4), tiny_head_size=256)
    with torch.no_grad():  # move the box head off its seeded init, so a load that rebuilt rather than read shows
        model.roi_heads.box_head.fc7.weight.mul_(1.5)
    path = str(tmp_path / "det.safetensors")
    save_detector(path, model, spec, ALL, {"stage": "finetune", "shots": 5})
    loaded, spec2, ids, meta = load_detector(path)
    assert spec2 == spec and ids == ALL and meta == {"stage": "finetune", "shots": 5}
    assert predictor_kind(loaded) == ("cosine" if cosine else "linear") and not loaded.training
    images, _ = toy_batch()
    first, second = detect(model, images, 0.0), detect(loaded, images, 0.0)
    assert sum(len(d["boxes"]) for d in first) > 0
    for a, b in zip(first, second):
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(a[key], b[key])


def test_save_and_load_refuse_mismatches(tmp_path):
    """A class list that disagrees with the predictor, and a file missing a tensor, are errors naming them."""
    model = build_detector(tiny_spec(2))
    with pytest.raises(DetectorError, match="class_ids"):
        save_detector(str(tmp_path / "x.safetensors"), model, tiny_spec(2), [1, 2, 3], {})
    path = tmp_path / "det.safetensors"
    save_detector(str(path), model, tiny_spec(2), [4, 6], {})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k != "roi_heads.box_head.fc6.bias"}
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=header)
    with pytest.raises(DetectorError, match=r"broken\.safetensors.*missing.*fc6\.bias"):
        load_detector(str(broken))


def test_resnet50_loads_a_local_torchvision_backbone_strictly(tmp_path):
    """A torchvision ResNet-50 state dict (fc.* and BN counters included) lands in backbone.body exactly; a missing
    key, a missing file or weights for the tiny backbone are errors naming the file or backbone."""
    torch.manual_seed(5)
    reference = resnet50(weights=None).state_dict()
    with torch.no_grad():
        for key, value in reference.items():
            if key.endswith("running_var"):
                value.uniform_(0.5, 1.5)
            elif key.endswith("running_mean"):
                value.uniform_(-0.1, 0.1)
    pth = tmp_path / "resnet50.pth"
    torch.save(reference, pth)
    spec = DetectorSpec("resnet50", 4, min_size=64, max_size=64)
    model = build_detector(spec, str(pth))
    body = model.backbone.body.state_dict()
    assert set(body) == {k for k in reference if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert all(torch.equal(body[k], reference[k]) for k in body)
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert (
        not model.backbone.body.conv1.weight.requires_grad and model.backbone.body.layer2[0].conv1.weight.requires_grad
    )
    assert model.roi_heads.box_predictor.cls_score.out_features == 5

    shifted = {k: v + 1 if v.is_floating_point() else v for k, v in reference.items()}
    st = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in shifted.items()}, str(st))
    load_backbone_file(model, str(st))
    assert torch.equal(model.backbone.body.state_dict()["layer3.1.conv2.weight"], shifted["layer3.1.conv2.weight"])

    missing = dict(reference)
    del missing["layer4.2.bn3.running_var"]
    bad = tmp_path / "missing_key.pth"
    torch.save(missing, bad)
    with pytest.raises(DetectorError, match=r"missing_key\.pth.*layer4\.2\.bn3\.running_var"):
        load_backbone_file(model, str(bad))
    with pytest.raises(DetectorError, match=r"nowhere\.pth.*not found"):
        build_detector(spec, str(tmp_path / "nowhere.pth"))
    with pytest.raises(DetectorError, match="'tiny' takes no pretrained weights"):
        build_detector(tiny_spec(2), str(pth))
