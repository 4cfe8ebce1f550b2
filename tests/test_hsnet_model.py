"""HSNet model: authors' key names and shapes, strict loading, 4D conv, features, conditioning API and its errors."""

import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet50
from typer.testing import CliRunner

from maskforge.flows.cli import app
from maskforge.models.hsnet.backbone import BackboneError, TinySpec, build_backbone, extract_features
from maskforge.models.hsnet.checkpoint import CheckpointError, compare_state, load_checkpoint, save_checkpoint
from maskforge.models.hsnet.conv4d import CenterPivotConv4d
from maskforge.models.hsnet.learner import HPNLearner
from maskforge.models.hsnet.model import HSNetCheckpointModule, HSNetSpec, build_hsnet, learnable_parameters
from maskforge.models.hsnet.segmenter import HSNetSegmenter, SegmenterInputError

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for this module (2 shared cores: several times faster than 2 when contended), restored after."""
    from maskforge.models.device import torch_threads

    with torch_threads(1):
        yield


def authors_learner_shapes(inch):
    """The HPNLearner keys and shapes of HSNet's checkpoints (hsnet-checkpoint-keys.md), written out independently."""
    shapes = {}
    blocks = {
        "encoder_layer4": [(inch[0], 16, 3), (16, 64, 3), (64, 128, 3)],
        "encoder_layer3": [(inch[1], 16, 5), (16, 64, 3), (64, 128, 3)],
        "encoder_layer2": [(inch[2], 16, 5), (16, 64, 5), (64, 128, 3)],
        "encoder_layer4to3": [(128, 128, 3)] * 3,
        "encoder_layer3to2": [(128, 128, 3)] * 3,
    }
    for block, convs in blocks.items():
        for j, (cin, cout, k) in zip((0, 3, 6), convs):
            for conv in ("conv1", "conv2"):
                shapes[f"module.hpn_learner.{block}.{j}.{conv}.weight"] = [cout, cin, k, k]
                shapes[f"module.hpn_learner.{block}.{j}.{conv}.bias"] = [cout]
            shapes[f"module.hpn_learner.{block}.{j + 1}.weight"] = [cout]
            shapes[f"module.hpn_learner.{block}.{j + 1}.bias"] = [cout]
    for name, (cin, cout) in {
        "decoder1.0": (128, 128),
        "decoder1.2": (128, 64),
        "decoder2.0": (64, 64),
        "decoder2.2": (64, 2),
    }.items():
        shapes[f"module.hpn_learner.{name}.weight"] = [cout, cin, 3, 3]
        shapes[f"module.hpn_learner.{name}.bias"] = [cout]
    return shapes


@pytest.mark.parametrize(
    "inch, params",
    [((3, 23, 4), 2_587_394), ((3, 6, 4), 2_573_794), ((1, 3, 3), 2_570_018)],
    ids=["r101", "r50", "vgg16"],
)
def test_learner_keys_shapes_and_parameter_counts_match_the_authors(inch, params):
    learner = HPNLearner(inch)
    ours = {f"module.hpn_learner.{k}": list(v.shape) for k, v in learner.state_dict().items()}
    assert ours == authors_learner_shapes(inch)
    assert len(ours) == 98
    assert sum(p.numel() for p in learner.parameters()) == params


@pytest.fixture(scope="module")
def r50_state():
    """A state dict in the authors' format for ResNet-50: torchvision backbone keys and learner keys, all 'module.'."""
    torch.manual_seed(0)
    state = {f"module.backbone.{k}": v for k, v in resnet50(weights=None).state_dict().items()}
    for key, shape in authors_learner_shapes((3, 6, 4)).items():
        state[key] = torch.randn(shape)
    return state


def test_authors_format_resnet50_checkpoint_loads_strictly_via_cli(r50_state, tmp_path):
    path = tmp_path / "best_model.pt"
    torch.save(r50_state, path)
    result = runner.invoke(app, ["hsnet", "load", str(path)])
    assert result.exit_code == 0, result.output
    assert "backbone: resnet50" in result.output
    assert "learnable parameters: 2573794" in result.output
    assert "missing keys: 0" in result.output and "unexpected keys: 0" in result.output
    net, meta = load_checkpoint(path)
    assert meta is None and net.spec.backbone == "resnet50"
    key = "module.hpn_learner.encoder_layer3.0.conv2.weight"
    assert torch.equal(HSNetCheckpointModule(net).state_dict()[key], r50_state[key])
    assert torch.equal(net.backbone.layer3[5].conv1.weight, r50_state["module.backbone.layer3.5.conv1.weight"])


def test_wrong_checkpoints_give_clear_errors(r50_state, tmp_path):
    broken = dict(r50_state)
    broken.pop("module.hpn_learner.decoder2.2.bias")
    broken["module.hpn_learner.extra.weight"] = torch.zeros(1)
    broken["module.hpn_learner.encoder_layer2.0.conv1.weight"] = torch.zeros(16, 3, 5, 5)
    path = tmp_path / "broken.pt"
    torch.save(broken, path)
    result = runner.invoke(app, ["hsnet", "load", str(path)])
    assert result.exit_code == 1
    out = result.output.replace("\n", "")
    assert "missing keys: 1" in result.output and "module.hpn_learner.decoder2.2.bias" in out
    assert "unexpected keys: 1" in result.output and "module.hpn_learner.extra.weight" in out
    assert "encoder_layer2.0.conv1.weight [16, 3, 5, 5] != [16, 4, 5, 5]" in out
    with pytest.raises(CheckpointError, match=r"1 missing: module\.hpn_learner\.decoder2\.2\.bias"):
        load_checkpoint(path)
    # no 'module.' prefix (a bare model state dict): the backbone cannot be told, and the message says what was expected
    bare = tmp_path / "bare.pt"
    torch.save({k.removeprefix("module."): v for k, v in r50_state.items()}, bare)
    with pytest.raises(CheckpointError, match="cannot tell its backbone"):
        load_checkpoint(bare)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch state dict"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"'.*' is a folder, not a file; expected a \.safetensors"):
        load_checkpoint(tmp_path)  # a folder is named as such, not "not found"
    with pytest.raises(CheckpointError, match=r"'/dev/null' is not a regular file"):
        load_checkpoint("/dev/null")


def test_safetensors_round_trip_with_config(tmp_path):
    net = build_hsnet(HSNetSpec("tiny", 64, TinySpec(layers=(1, 1, 2, 1), width_per_group=8)), None)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, net, {"any": "config"})
    loaded, meta = load_checkpoint(path)
    assert meta["config"] == {"any": "config"} and loaded.spec == net.spec
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    result = runner.invoke(app, ["hsnet", "load", str(path)])
    assert result.exit_code == 0 and "backbone: tiny" in result.output
    assert f"learnable parameters: {learnable_parameters(net)}" in result.output
    # a tampered file: one tensor with the wrong shape
    state = {k: v.contiguous() for k, v in HSNetCheckpointModule(net).state_dict().items()}
    state["module.hpn_learner.decoder2.2.weight"] = torch.zeros(3, 64, 3, 3)
    from safetensors.torch import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=metadata)
    assert runner.invoke(app, ["hsnet", "load", str(bad)]).exit_code == 1
    with pytest.raises(CheckpointError, match=r"decoder2\.2\.weight \[3, 64, 3, 3\] != \[2, 64, 3, 3\]"):
        load_checkpoint(bad)


def test_backbone_weights_come_only_from_local_files(tmp_path):
    with pytest.raises(BackboneError, match=r"'/nowhere/resnet50\.pth' not found"):
        build_backbone("resnet50", "/nowhere/resnet50.pth")
    with pytest.raises(BackboneError, match="unknown backbone 'resnet18'"):
        build_backbone("resnet18", None)
    tiny = build_backbone("tiny", None, TinySpec(layers=(1, 1, 1, 1), width_per_group=8))
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    other = build_backbone("tiny", str(path), TinySpec(layers=(1, 1, 1, 1), width_per_group=8), tiny_seed=5)
    assert torch.equal(other.conv1.weight, tiny.conv1.weight)
    with pytest.raises(BackboneError, match="is not a torchvision resnet50 state dict"):
        build_backbone("resnet50", str(path))


def test_resnet_features_are_pre_relu_bottleneck_outputs():
    torch.manual_seed(0)
    spec = TinySpec(layers=(1, 2, 3, 2), width_per_group=8, maxpool=True)
    backbone = build_backbone("tiny", None, spec).eval()
    x = torch.randn(2, 3, 64, 64)
    levels = extract_features(backbone, x)
    assert [len(level) for level in levels] == [2, 3, 2]  # deepest first: layer4, layer3, layer2
    assert [tuple(level[0].shape[1:]) for level in levels] == [(512, 2, 2), (256, 4, 4), (128, 8, 8)]
    assert all((f < 0).any() for level in levels for f in level)  # before the block's ReLU: negatives survive
    with torch.no_grad():  # the ReLU of the last layer4 feature is torchvision's own layer4 output
        ref = backbone.layer4(
            backbone.layer3(
                backbone.layer2(backbone.layer1(backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))))
            )
        )
    assert torch.allclose(torch.relu(levels[0][-1]), ref, atol=1e-5)


def test_vgg16_feature_layout():
    torch.manual_seed(0)
    backbone = build_backbone("vgg16", None).eval()
    levels = extract_features(backbone, torch.randn(1, 3, 64, 64))
    assert [[tuple(f.shape[1:]) for f in level] for level in levels] == [
        [(512, 2, 2)],
        [(512, 4, 4)] * 3,
        [(512, 8, 8)] * 3,
    ]


def test_center_pivot_conv_equals_its_two_2d_convolutions():
    torch.manual_seed(0)
    conv = CenterPivotConv4d(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 4, 5, 6, 7)
    out = conv(x)
    assert out.shape == (1, 3, 4, 5, 3, 4)  # query dims kept, support dims ceil(size / 2)
    # naive reference: for each support position kept, conv1 over the query dims; for each query position, conv2
    ref = torch.zeros_like(out)
    for a in range(3):
        for b in range(4):
            ref[0, :, :, :, a, b] += conv.conv1(x[0, :, :, :, 2 * a, 2 * b][None])[0]
    for i in range(4):
        for j in range(5):
            ref[0, :, i, j] += conv.conv2(x[0, :, i, j][None])[0]
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return HSNetSegmenter(
        build_hsnet(HSNetSpec("tiny", 64, TinySpec(layers=(1, 1, 2, 1), width_per_group=8)), None), batch_size=3
    )


def _support(size=48, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), bool)
    mask[10:30, 5:25] = True
    return image, mask


def test_condition_once_predict_batched_equals_per_image(segmenter):
    state = segmenter.condition([_support(seed=0), _support(seed=1)])
    assert state.n_shots == 2
    queries = [np.random.default_rng(10 + i).integers(0, 255, (40, 50, 3), dtype=np.uint8) for i in range(5)]
    batched = segmenter.predict(state, queries)
    assert batched.shape == (5, 40, 50) and batched.dtype == bool
    singles = np.stack([segmenter.predict(state, [q])[0] for q in queries])
    assert np.array_equal(batched, singles)
    # re-conditioning with more supports reuses the first state's features
    more = segmenter.condition([_support(seed=2)], base=state)
    assert more.n_shots == 3
    assert torch.equal(more.levels[0][0][:2], state.levels[0][0])
    assert np.array_equal(more.levels[0][0][2:].numpy(), segmenter.condition([_support(seed=2)]).levels[0][0].numpy())
    shots = segmenter.shot_masks(more, queries)
    assert shots.shape == (3, 5, 40, 50)


def test_bad_inputs_give_clear_errors(segmenter):
    image, mask = _support()
    with pytest.raises(SegmenterInputError, match=r"supports\[1\] mask has no foreground pixel"):
        segmenter.condition([(image, mask), (image, np.zeros_like(mask))])
    with pytest.raises(
        SegmenterInputError, match=r"supports\[0\] mask has shape \(20, 20\), expected the image's size \(48, 48\)"
    ):
        segmenter.condition([(image, np.ones((20, 20), bool))])
    with pytest.raises(SegmenterInputError, match=r"expected a uint8 RGB array of shape \(H, W, 3\), got float64"):
        segmenter.condition([(image.astype(float), mask)])
    with pytest.raises(SegmenterInputError, match="supports is empty"):
        segmenter.condition([])
    state = segmenter.condition([(image, mask)])
    with pytest.raises(
        SegmenterInputError, match=r"images\[1\] has shape \(32, 32, 3\) but images\[0\] has \(48, 48, 3\)"
    ):
        segmenter.predict(state, [image, image[:32, :32]])
    other = HSNetSegmenter(build_hsnet(HSNetSpec("tiny", 64, TinySpec(layers=(1, 2, 1, 1), width_per_group=8)), None))
    with pytest.raises(
        SegmenterInputError, match=r"has \[1, 1, 2\] feature maps per level, this model expects \[1, 2, 1\]"
    ):
        segmenter.predict(other.condition([(image, mask)]), [image])
    with pytest.raises(SegmenterInputError, match="state must be a SupportState"):
        segmenter.predict({"levels": []}, [image])


def test_state_dict_keys_are_module_prefixed():
    net = build_hsnet(HSNetSpec("tiny", 64, TinySpec(layers=(1, 1, 1, 1), width_per_group=8)), None)
    keys = list(HSNetCheckpointModule(net).state_dict())
    assert all(re.match(r"^module\.(backbone|hpn_learner)\.", k) for k in keys)
    assert "module.backbone.fc.weight" in keys and "module.backbone.layer1.0.bn3.num_batches_tracked" in keys
    assert compare_state(net, HSNetCheckpointModule(net).state_dict()).ok
    assert not any(p.requires_grad for p in net.backbone.parameters())
    net.train()
    assert not net.backbone.training and net.hpn_learner.training


@pytest.mark.gpu
def test_segmenter_on_gpu_agrees_with_cpu():
    torch.manual_seed(0)
    net = build_hsnet(HSNetSpec("tiny", 64, TinySpec(layers=(1, 1, 2, 1), width_per_group=8)), None)
    queries = [np.random.default_rng(i).integers(0, 255, (48, 48, 3), dtype=np.uint8) for i in range(4)]
    cpu = HSNetSegmenter(net, "cpu")
    on_cpu = cpu.predict(cpu.condition([_support(seed=0)]), queries)
    gpu = HSNetSegmenter(net, "cuda")
    on_gpu = gpu.predict(gpu.condition([_support(seed=0)]), queries)
    assert (on_cpu == on_gpu).mean() > 0.99


def test_backbone_is_told_from_the_authors_key_layout():
    from maskforge.models.hsnet.checkpoint import infer_spec

    t = torch.zeros(1)
    assert infer_spec({"module.backbone.features.0.weight": t}, None, "x").backbone == "vgg16"
    r101 = {f"module.backbone.layer3.{i}.conv1.weight": t for i in range(23)}
    assert infer_spec(r101, None, "x").backbone == "resnet101"
    r50 = {f"module.backbone.layer3.{i}.conv1.weight": t for i in range(6)}
    assert infer_spec(r50, None, "x").backbone == "resnet50"
    with pytest.raises(CheckpointError, match="found 4 layer3 blocks"):
        infer_spec({f"module.backbone.layer3.{i}.conv1.weight": t for i in range(4)}, None, "x")


def test_backbone_file_without_bn_counters_loads(tmp_path):
    spec = TinySpec(layers=(1, 1, 1, 1), width_per_group=8)
    tiny = build_backbone("tiny", None, spec, tiny_seed=3)
    state = {k: v for k, v in tiny.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = build_backbone("tiny", str(path), spec)
    assert torch.equal(loaded.layer4[0].conv3.weight, tiny.layer4[0].conv3.weight)
    state.pop("conv1.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(BackboneError, match=r"missing \['conv1.weight'\]"):
        build_backbone("tiny", str(path), spec)
