"""GFSS network: authors' key layout and shapes, ASPP and cosine head maths, pooling, frozen BN, checkpoints."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.models import resnet101

from maskforge.models.gfss.checkpoint import (
    GfssCheckpointError,
    authors_key_report,
    load_authors,
    load_gfss,
    save_gfss,
    write_authors_layout,
)
from maskforge.models.gfss.network import (
    ASPP,
    CosineHead,
    GfssModelError,
    GfssSpec,
    build_gfss,
    feature_stride,
    freeze_batchnorm,
    masked_average_pool,
    set_train_mode,
)
from maskforge.models.hsnet.backbone import TinySpec


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


TINY = GfssSpec("tiny", 4, aspp_channels=32, tiny=TinySpec((1, 1, 1, 1), 16, maxpool=True))


def tiny_net(spec=TINY):
    """A tiny net in eval mode with non-trivial BN statistics, so a load that dropped them would show."""
    net = build_gfss(spec)
    with torch.no_grad():
        for i, bn in enumerate(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    return net.eval()


def images(n=2, size=64, seed=0):
    """Deterministic random input images."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def meta_r101(num_classes=16, output_stride=16):
    """The ResNet-101 network on the meta device (no memory)."""
    with torch.device("meta"):
        return build_gfss(GfssSpec("resnet101", num_classes, output_stride=output_stride))


def test_resnet101_key_layout_matches_the_authors():
    """550 backbone tensors without BN counters, the head's class matrix, exact names and layer4 dilations."""
    net = meta_r101()
    keys = {k: tuple(v.shape) for k, v in net.backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(keys) == 550
    assert not any(k.startswith("fc.") for k in keys)
    assert keys["conv1.weight"] == (64, 3, 7, 7)
    assert keys["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert keys["layer3.22.conv3.weight"] == (1024, 256, 1, 1)
    assert keys["aspp.aspp5_bn.running_var"] == (256,)
    assert keys["aspp.aspp2.weight"] == (256, 2048, 3, 3)
    assert keys["aspp.conv2.weight"] == (256, 1280, 1, 1)
    assert keys["aspp.bn2.weight"] == (256,)
    for layer in range(1, 5):
        assert f"layer{layer}.0.downsample.1.running_mean" in keys
    assert sum(k.startswith("aspp.") for k in keys) == 30
    assert {k: tuple(v.shape) for k, v in net.head.state_dict().items()} == {
        "pixel_classifier.class_mat.weight": (16, 256, 1, 1)
    }
    assert [b.conv2.dilation for b in net.backbone.layer4] == [(1, 1), (2, 2), (2, 2)]
    assert [b.conv2.stride for b in net.backbone.layer4] == [(1, 1)] * 3
    assert [net.backbone.aspp.aspp2.dilation, net.backbone.aspp.aspp4.padding] == [(6, 6), (18, 18)]
    assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride_on_meta_and_tiny_cpu(output_stride):
    """64×64 input: 64/os features for resnet101 (meta) and tiny with max-pool; tiny without it halves the stride."""
    size = 64 // output_stride
    net = meta_r101(output_stride=output_stride).eval()  # train-mode BN refuses the 1×1 pooled branch at batch 1
    feats, layer4 = net.backbone.forward_with_layer4(torch.empty(1, 3, 64, 64, device="meta"))
    assert tuple(feats.shape) == (1, 256, size, size) and tuple(layer4.shape) == (1, 2048, size, size)
    spec = GfssSpec("tiny", 3, output_stride=output_stride, aspp_channels=32, tiny=TinySpec((1, 1, 1, 1), 16, True))
    with torch.no_grad():
        tiny = build_gfss(spec).eval()
        assert tuple(tiny.features(images(1)).shape) == (1, 32, size, size)
        assert tuple(tiny(images(1)).shape) == (1, 3, 64, 64)
        no_pool = build_gfss(GfssSpec("tiny", 3, output_stride=output_stride, aspp_channels=32)).eval()
        assert tuple(no_pool.features(images(1)).shape) == (1, 32, 2 * size, 2 * size)
    assert feature_stride(spec) == output_stride and feature_stride(no_pool.spec) == output_stride // 2


def test_spec_round_trip_and_validation():
    """to_dict/from_dict round trip through JSON; bad fields name themselves."""
    import json

    spec = GfssSpec("tiny", 7, output_stride=8, aspp_channels=24, aspp_rates=(2, 4, 6), tiny=TinySpec((1, 2, 1, 1)))
    assert GfssSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(GfssModelError, match="GfssSpec.backbone"):
        GfssSpec("resnet50", 16)
    with pytest.raises(GfssModelError, match="GfssSpec.output_stride"):
        GfssSpec("tiny", 16, output_stride=32)
    with pytest.raises(GfssModelError, match="GfssSpec.num_classes"):
        GfssSpec("tiny", 1)


def test_tiny_build_is_seeded_and_leaves_the_global_rng():
    """Same tiny_seed, same weights; another seed, other weights; the caller's RNG stream is untouched."""
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    a = build_gfss(TINY)
    assert torch.equal(torch.rand(3), expected_next)
    b = build_gfss(TINY)
    c = build_gfss(GfssSpec.from_dict({**TINY.to_dict(), "tiny_seed": 1}))
    assert torch.equal(a.backbone.layer2[0].conv2.weight, b.backbone.layer2[0].conv2.weight)
    assert not torch.equal(a.backbone.layer2[0].conv2.weight, c.backbone.layer2[0].conv2.weight)


def test_cosine_head_is_ten_times_the_cosine():
    """Logits equal 10 × cosine computed by hand, are invariant to feature scale, and expand by appending rows."""
    g = torch.Generator().manual_seed(1)
    head = CosineHead(5, 3)
    with torch.no_grad():
        head.pixel_classifier.class_mat.weight.copy_(torch.randn(3, 5, 1, 1, generator=g))
    feats = torch.randn(2, 5, 2, 3, generator=g)
    logits = head(feats)
    w = head.pixel_classifier.class_mat.weight.detach()[:, :, 0, 0]
    for b in range(2):
        for y in range(2):
            for x in range(3):
                f = feats[b, :, y, x]
                for k in range(3):
                    cos = float(f @ w[k]) / (math.sqrt(float(f @ f)) * math.sqrt(float(w[k] @ w[k])))
                    assert logits[b, k, y, x].item() == pytest.approx(10 * cos, abs=1e-5)
    assert torch.allclose(head(3.0 * feats), logits, atol=1e-6)
    assert head.num_classes == 3

    new = torch.tensor([[3.0, 0, 4, 0, 0], [0, 0, 0, 0, 2]])
    bigger = head.expanded(5, new)
    assert bigger is not head and bigger.num_classes == 5 and head.num_classes == 3
    big_w = bigger.pixel_classifier.class_mat.weight[:, :, 0, 0]
    assert torch.equal(big_w[:3], w)
    assert torch.allclose(big_w[3:], torch.tensor([[0.6, 0, 0.8, 0, 0], [0, 0, 0, 0, 1]]))
    assert torch.allclose(bigger(feats)[:, :3], logits)
    with pytest.raises(GfssModelError, match=r"\(2, 5\)"):
        head.expanded(5, torch.zeros(3, 5))
    with pytest.raises(GfssModelError, match="n_total 2"):
        head.expanded(2, None)


def test_aspp_ignores_bn2_and_matches_a_manual_forward():
    """Changing bn2 changes nothing; the output is conv2 over the five conv-bn-relu branches (pool branch upsampled)."""
    torch.manual_seed(0)
    aspp = ASPP(8, 4, (1, 2, 3)).eval()
    x = torch.randn(2, 8, 5, 6)
    with torch.no_grad():
        out = aspp(x)
        aspp.bn2.running_mean.fill_(5.0)
        aspp.bn2.running_var.fill_(0.01)
        aspp.bn2.weight.fill_(-3.0)
        assert torch.equal(aspp(x), out)
        branches = [F.relu(getattr(aspp, f"aspp{i}_bn")(getattr(aspp, f"aspp{i}")(x))) for i in range(1, 5)]
        pooled = F.relu(aspp.aspp5_bn(aspp.aspp5(x.mean(dim=(2, 3), keepdim=True))))
        branches.append(pooled.expand(-1, -1, 5, 6))
        assert torch.allclose(aspp.conv2(torch.cat(branches, 1)), out, atol=1e-5)
    assert out.shape == (2, 4, 5, 6)


def test_masked_average_pool_known_means_and_empty_mask():
    """Same-size masks give the exact masked mean; constant features pool to themselves; empty masks are errors."""
    feats = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).view(2, 2, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2] = True  # values 0, 1 (channel 0) and 16, 17 (channel 1)
    masks[1, 3, 3] = True  # last pixel of image 1: 47 and 63
    pooled = masked_average_pool(feats, masks)
    assert torch.allclose(pooled, torch.tensor([[0.5, 16.5], [47.0, 63.0]]))
    constant = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    one_pixel = torch.zeros(1, 64, 64, dtype=torch.bool)
    one_pixel[0, 37, 5] = True  # a single pixel still weighs something at stride 16
    assert torch.allclose(masked_average_pool(constant, one_pixel), torch.tensor([[2.0, -1.0]]))
    masks[1] = False
    with pytest.raises(GfssModelError, match="batch index 1"):
        masked_average_pool(feats, masks)


def test_frozen_batchnorm_survives_a_training_step():
    """freeze_batchnorm + set_train_mode(frozen_bn=True): a step updates convs, never BN stats or affine params."""
    net = tiny_net().train()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert freeze_batchnorm(net) == len(norms) > 10
    assert not any(m.training or m.weight.requires_grad or m.bias.requires_grad for m in norms)
    set_train_mode(net, frozen_bn=True)
    assert net.training and not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    loss = F.cross_entropy(net(images()), torch.randint(0, 4, (2, 64, 64), generator=torch.Generator().manual_seed(0)))
    loss.backward()
    opt.step()
    after = net.state_dict()
    bn_keys = [k for k in before if "bn" in k or "downsample.1" in k]
    assert bn_keys and all(torch.equal(before[k], after[k]) for k in bn_keys)
    assert not torch.equal(
        before["head.pixel_classifier.class_mat.weight"], after["head.pixel_classifier.class_mat.weight"]
    )
    set_train_mode(net, frozen_bn=False)
    assert net.backbone.bn1.training


def test_save_load_round_trip(tmp_path):
    """Our safetensors file gives back identical outputs, spec, config and extra; bad files name themselves."""
    net = tiny_net()
    path = str(tmp_path / "sub" / "gfss.safetensors")
    config = {"train": {"lr": 0.01}, "classes": [1, 2, 3]}
    save_gfss(path, net, config, extra={"stage": "base"})
    loaded, meta = load_gfss(path)
    assert not loaded.training and loaded.spec == net.spec
    assert meta == {"spec": net.spec.to_dict(), "config": config, "extra": {"stage": "base"}}
    with torch.no_grad():
        assert torch.equal(loaded(images()), net(images()))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["gfss.safetensors"]  # no temp file left
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "something/1"})
    with pytest.raises(GfssCheckpointError, match="other.safetensors.*maskforge-gfss/1"):
        load_gfss(str(tmp_path / "other.safetensors"))
    with pytest.raises(GfssCheckpointError, match="missing.safetensors"):
        load_gfss(str(tmp_path / "missing.safetensors"))


def test_authors_layout_round_trip_and_key_errors(tmp_path):
    """write_authors_layout → load_authors is exact; a dropped, extra or reshaped key is named in report and error."""
    net = tiny_net()
    path = str(tmp_path / "tiny_final.pt")
    write_authors_layout(path, net)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"backbone", "head"} and not any("num_batches_tracked" in k for k in raw["backbone"])
    assert "aspp.bn2.running_var" in raw["backbone"] and list(raw["head"]) == ["pixel_classifier.class_mat.weight"]
    report = authors_key_report(path, spec=TINY)
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []
    assert report["num_classes"] == 4 and report["head_tensors"] == 1
    assert report["backbone_tensors"] == len(raw["backbone"])
    loaded = load_authors(path, spec=GfssSpec.from_dict({**TINY.to_dict(), "num_classes": 9}))
    assert loaded.spec.num_classes == 4 and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(images()), net(images()))
    loaded_meta = load_gfss(path, spec=TINY)[1]
    assert loaded_meta["config"] is None and loaded_meta["extra"] == {"source": "authors"}

    def broken(name, change):
        state = torch.load(path, weights_only=True)
        change(state)
        out = str(tmp_path / f"{name}.pt")
        torch.save(state, out)
        return out

    dropped = broken("dropped", lambda s: s["backbone"].pop("layer3.0.bn2.running_mean"))
    added = broken("added", lambda s: s["backbone"].__setitem__("aspp.extra.weight", torch.zeros(2)))
    reshaped = broken("reshaped", lambda s: s["backbone"].__setitem__("aspp.conv2.weight", torch.zeros(32, 64, 1, 1)))
    cases = [
        (dropped, "missing", "backbone.layer3.0.bn2.running_mean"),
        (added, "unexpected", "backbone.aspp.extra.weight"),
        (reshaped, "mismatched", "backbone.aspp.conv2.weight: file (32, 64, 1, 1) vs model (32, 160, 1, 1)"),
    ]
    for file, kind, key in cases:
        report = authors_key_report(file, spec=TINY)
        assert report[kind] == [key]
        assert sum(len(report[k]) for k in ("missing", "unexpected", "mismatched")) == 1
        with pytest.raises(GfssCheckpointError, match=f"{re.escape(file)}.*{re.escape(key.split(':')[0])}"):
            load_authors(file, spec=TINY)

    no_head = broken("no_head", lambda s: s["head"].clear())
    report = authors_key_report(no_head, spec=TINY)
    assert report["num_classes"] == 16 and report["missing"] == ["head.pixel_classifier.class_mat.weight"]
    torch.save({"backbone": {}}, tmp_path / "one_part.pt")
    with pytest.raises(GfssCheckpointError, match="one_part.pt.*'backbone' and 'head'"):
        authors_key_report(str(tmp_path / "one_part.pt"))
    torch.save({"backbone": {}, "head": {}, "opt": object()}, tmp_path / "pickled.pt")
    with pytest.raises(GfssCheckpointError, match="pickled.pt.*weights_only"):
        authors_key_report(str(tmp_path / "pickled.pt"))


def test_authors_report_for_resnet101_on_meta(tmp_path):
    """A tiny file checked against the default resnet101 layout: deep keys missing, tiny shapes mismatched."""
    path = str(tmp_path / "tiny_final.pt")
    write_authors_layout(path, tiny_net())
    report = authors_key_report(path)  # default: resnet101
    assert report["num_classes"] == 4
    assert "backbone.layer3.22.conv1.weight" in report["missing"]
    assert "backbone.aspp.aspp1.weight: file (32, 512, 1, 1) vs model (256, 2048, 1, 1)" in report["mismatched"]
    with pytest.raises(GfssCheckpointError, match=r"resnet101, 4 classes.*\d+ missing"):
        load_authors(path)


def test_build_gfss_loads_a_local_torchvision_resnet101(tmp_path):
    """A torchvision resnet101 state dict (safetensors, ~170 MB) fills the trunk exactly; a missing file names itself.

    Saved as safetensors rather than .pth: faster to write and read on the shared CPUs, same loader path.
    """
    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in resnet101(weights=None).state_dict().items()}
    path = str(tmp_path / "resnet101.safetensors")
    save_file(state, path)
    net = build_gfss(GfssSpec("resnet101", 16), backbone_weights=path)
    assert torch.equal(net.backbone.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert torch.equal(net.backbone.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])
    assert not hasattr(net.backbone, "fc")
    with pytest.raises(GfssModelError, match="nowhere.pth"):
        build_gfss(GfssSpec("resnet101", 16), backbone_weights=str(tmp_path / "nowhere.pth"))
    with pytest.raises(GfssModelError, match="tiny"):
        build_gfss(TINY, backbone_weights=path)
