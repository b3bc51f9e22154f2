"""The networks: fidelity to the reference, any input size, the contract, options."""

import functools
import http.server
import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import eval_normalisation, reference_state_dict

from bisenet_pl.models import (
    IMAGENET_URLS,
    BiSeNetV1,
    BiSeNetV2,
    ResNet,
    bisenetv1,
    bisenetv2,
    convert_coincheung_state_dict,
    detect_coincheung_architecture,
    load_backbone_weights,
)
from bisenet_pl.models.layers import Dropout, nearest2x_conv3x3

NETWORKS = {"bisenetv1": BiSeNetV1, "bisenetv2": BiSeNetV2}


def converted_reference_model(reference_dir, name):
    state = reference_state_dict(reference_dir / f"{name}_state_dict_keys.tsv")
    model = NETWORKS[name](num_classes=19)
    model.load_state_dict(convert_coincheung_state_dict(state), strict=True)
    return model


def expected_output_files(reference_dir):
    return sorted(reference_dir.glob("bisenetv*_expected_*.pt"))


@pytest.mark.parametrize("name", list(NETWORKS))
def test_reproduces_reference_outputs(reference_dir, name):
    files = [f for f in expected_output_files(reference_dir) if f.name.startswith(name)]
    assert files, f"no expected outputs for {name} in {reference_dir}"
    model = eval_normalisation(converted_reference_model(reference_dir, name))
    for path in files:
        expected = torch.load(path, weights_only=True)
        assert expected["num_classes"] == 19
        with torch.no_grad():
            outputs = model(expected["input"])
        assert len(outputs) == len(expected["outputs"])  # main + every aux head
        for index, (ours, theirs) in enumerate(zip(outputs, expected["outputs"])):
            assert ours.shape == theirs.shape
            scale = theirs.abs().max().item()
            error = (ours - theirs).abs().max().item()
            assert error <= 2e-5 * scale, f"{path.name} output {index}: max error {error:.3g} at scale {scale:.3g}"
        # Eval mode returns the main logits alone, and they are the same.
        with torch.no_grad():
            main = model.eval()(expected["input"])
        torch.testing.assert_close(main, outputs[0], rtol=0, atol=0)
        eval_normalisation(model)


def _fixed_factor_resize(x, size, mode):
    """The reference's way: upsample by the integer ratio (valid only for multiples of 32)."""
    factor = size[-1] // x.shape[-1]
    assert size[-2] == x.shape[-2] * factor and size[-1] == x.shape[-1] * factor
    if mode == "nearest":
        return F.interpolate(x, scale_factor=factor, mode="nearest")
    return F.interpolate(x, scale_factor=factor, mode=mode, align_corners=False)


@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("seed,size", [(0, (32, 64)), (1, (96, 160)), (2, (128, 96))])
def test_size_matched_upsampling_equals_reference_fixed_factors(reference_dir, name, seed, size, monkeypatch):
    """On multiples of 32 our resize-to-size gives bit-identical results to the reference's fixed factors."""
    model = eval_normalisation(converted_reference_model(reference_dir, name))
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = model(x)
        module = bisenetv1 if name == "bisenetv1" else bisenetv2
        monkeypatch.setattr(module, "resize_to", _fixed_factor_resize)
        monkeypatch.setattr("bisenet_pl.models.layers.resize_to", _fixed_factor_resize)
        theirs = model(x)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("size", [(360, 480), (256, 136), (97, 131)])  # landscape, portrait, odd
def test_any_input_size_in_both_modes(name, size):
    torch.manual_seed(0)
    model = NETWORKS[name](num_classes=11)
    model.train()
    outputs = model(torch.randn(2, 3, *size))
    expected_count = 1 + len(model.aux_heads)
    assert isinstance(outputs, tuple) and len(outputs) == expected_count
    for out in outputs:
        assert out.shape == (2, 11, *size)
        assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 11, *size)


def test_output_order_follows_aux_positions():
    torch.manual_seed(0)
    model = BiSeNetV2(num_classes=5, aux_heads=["stage5", "stem"]).train()
    assert list(model.aux_heads) == ["stem", "stage5"]
    assert len(model(torch.randn(2, 3, 64, 64))) == 3
    assert len(BiSeNetV2(num_classes=5, aux_heads=[]).train()(torch.randn(2, 3, 64, 64))) == 1
    assert len(BiSeNetV1(num_classes=5, aux_heads=[]).train()(torch.randn(2, 3, 64, 64))) == 1
    with pytest.raises(ValueError, match="unknown BiSeNetV2 aux_heads"):
        BiSeNetV2(num_classes=5, aux_heads=["stage6"])
    with pytest.raises(ValueError, match="unknown BiSeNetV1 aux_heads"):
        BiSeNetV1(num_classes=5, aux_heads=["context32"])


@pytest.mark.parametrize("name", list(NETWORKS))
def test_batch_of_one_in_training_is_a_clear_error(name):
    model = NETWORKS[name](num_classes=3).train()
    with pytest.raises(ValueError, match=r"training mode needs a batch of at least 2.*got 1"):
        model(torch.randn(1, 3, 64, 64))
    # Frozen BatchNorm (fine-tuning) has no such limit.
    eval_normalisation(model)
    assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 3, 64, 64)


@pytest.mark.parametrize("name,expected", [("bisenetv2", 3_358_627), ("bisenetv1", 13_275_539)])
def test_inference_parameter_count_equals_reference(name, expected):
    full = NETWORKS[name](num_classes=19)
    without_aux = NETWORKS[name](num_classes=19, aux_heads=[])
    inference = sum(p.numel() for n, p in full.named_parameters() if not n.startswith("aux_heads."))
    assert inference == expected
    assert sum(p.numel() for p in without_aux.parameters()) == expected


def test_bisenetv2_initialisation_as_reference():
    torch.manual_seed(0)
    model = BiSeNetV2(num_classes=19)
    for layer in (model.semantic_branch.stage3[0], model.semantic_branch.stage5[3]):
        assert torch.count_nonzero(layer.project.bn.weight) == 0  # zero-gamma last BN of each GE layer
    assert torch.all(model.semantic_branch.stage3[0].gather.bn.weight == 1)
    weight = model.head.conv.conv.weight  # kaiming fan_out: std = sqrt(2 / (out_channels * k * k))
    expected_std = (2 / (weight.shape[0] * 9)) ** 0.5
    assert abs(weight.std().item() / expected_std - 1) < 0.02
    assert torch.all(model.head.classifier.bias == 0)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_channels_last_and_bf16_autocast_match_fp32(reference_dir, name):
    model = converted_reference_model(reference_dir, name).eval()
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference = model(x)
        scale = reference.abs().max().item()
        model_cl = model.to(memory_format=torch.channels_last)
        channels_last = model_cl(x.to(memory_format=torch.channels_last))
        assert (channels_last - reference).abs().max().item() <= 2e-5 * scale
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_precision = model(x)
    # Computed in bf16, class scores resized in float32 (what the losses take; faster on a CPU).
    assert low_precision.dtype == torch.float32
    assert (low_precision - reference).abs().max().item() > 1e-3 * scale  # bf16 round-off: autocast was on
    # bf16 keeps ~3 significant digits, and its round-off compounds through these random-weight
    # layers (measured: cosine >= 0.998, argmax agreement ~0.97); a dtype bug breaks both.
    cosine = F.cosine_similarity(low_precision.float().flatten(), reference.flatten(), dim=0).item()
    assert cosine > 0.995, cosine
    agreement = (low_precision.argmax(1) == reference.argmax(1)).float().mean().item()
    assert agreement > 0.93, agreement


def test_converter_accepts_ddp_prefix_and_detects_architecture(reference_dir):
    state = reference_state_dict(reference_dir / "bisenetv2_state_dict_keys.tsv")
    assert detect_coincheung_architecture(state) == "bisenetv2"
    prefixed = {f"module.{k}": v for k, v in state.items()}
    assert convert_coincheung_state_dict(prefixed).keys() == convert_coincheung_state_dict(state).keys()
    v1 = reference_state_dict(reference_dir / "bisenetv1_state_dict_keys.tsv")
    assert detect_coincheung_architecture(v1) == "bisenetv1"


def test_converter_refuses_unknown_state_dicts(reference_dir):
    with pytest.raises(ValueError, match="not a CoinCheung/BiSeNet state dict"):
        convert_coincheung_state_dict(BiSeNetV2(num_classes=3).state_dict())
    state = reference_state_dict(reference_dir / "bisenetv2_state_dict_keys.tsv")
    # An older reference release had PixelShuffle heads: head.conv_out.0 is a conv there.
    state["head.conv_out.0.weight"] = torch.zeros(19 * 64, 1024, 1, 1)
    with pytest.raises(ValueError, match=r"unrecognised keys.*head\.conv_out\.0\.weight"):
        convert_coincheung_state_dict(state)


# torchvision's parameter counts minus the 1000-class fc layer.
TORCHVISION_TRUNK_PARAMETERS = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
}


@pytest.mark.parametrize("name", list(TORCHVISION_TRUNK_PARAMETERS))
def test_resnet_trunks_match_torchvision(reference_dir, name):
    backbone = ResNet(name)
    assert sum(p.numel() for p in backbone.parameters()) == TORCHVISION_TRUNK_PARAMETERS[name]
    if name == "resnet18":  # the reference loads torchvision's resnet18 weights by these names
        reference_keys = [
            line.split("\t")[0].removeprefix("cp.resnet.")
            for line in (reference_dir / "bisenetv1_state_dict_keys.tsv").read_text().splitlines()
            if line.startswith("cp.resnet.")
        ]
        assert sorted(backbone.state_dict()) == sorted(reference_keys)


@pytest.mark.parametrize("backbone", ["resnet34", "resnet50", "resnet101"])
def test_bisenetv1_deeper_context_paths(backbone):
    model = BiSeNetV1(num_classes=4, backbone=backbone).train()
    outputs = model(torch.randn(2, 3, 70, 90))
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 70, 90)] * 3


def _imagenet_style_checkpoint(name, path):
    """A torchvision-layout checkpoint (trunk + fc) with recognisable values."""
    torch.manual_seed(123)
    trunk = ResNet(name)
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in trunk.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, trunk.feature_channels[-1])
    state["fc.bias"] = torch.zeros(1000)
    torch.save(state, path)
    return state


def test_backbone_weights_from_local_file(tmp_path):
    state = _imagenet_style_checkpoint("resnet18", tmp_path / "resnet18.pth")
    model = BiSeNetV1(num_classes=3)
    model.load_backbone_weights(tmp_path / "resnet18.pth")
    torch.testing.assert_close(model.context_path.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        model.load_backbone_weights(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not a torchvision-style resnet50 checkpoint"):
        load_backbone_weights(ResNet("resnet50"), tmp_path / "resnet18.pth")


def test_backbone_weights_from_url_use_the_hub_cache(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    state = _imagenet_style_checkpoint("resnet34", served / "resnet34-test.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/resnet34-test.pth"
        model = BiSeNetV1(num_classes=3, backbone="resnet34")
        model.load_backbone_weights(url)
        torch.testing.assert_close(model.context_path.backbone.conv1.weight, state["conv1.weight"])
        assert (tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet34-test.pth").is_file()
        # "imagenet" resolves to torchvision's URL for this depth.
        monkeypatch.setitem(IMAGENET_URLS, "resnet34", url)
        BiSeNetV1(num_classes=3, backbone="resnet34").load_backbone_weights("imagenet")
    finally:
        server.shutdown()


def test_constructors_never_download(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a constructor tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    for backbone in ("resnet18", "resnet101"):
        BiSeNetV1(num_classes=2, backbone=backbone)
    BiSeNetV2(num_classes=2)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_keeps_the_share_and_scale_of_nn_dropout(p):
    torch.manual_seed(0)
    dropout = Dropout(p)
    x = torch.ones(4, 64, 48, 64).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = dropout(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - (1 - p)) < 0.005  # 786k draws: within 5 standard deviations
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)), rtol=1e-4)  # survivors scaled as nn.Dropout's
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient goes through the same mask
    masks = [dropout(torch.ones(1000)) != 0 for _ in range(2)]
    assert not torch.equal(*masks)  # a fresh mask per call
    assert torch.equal(dropout.eval()(x), x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_refinement_by_phases_equals_conv_on_the_upsampled_map(channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(6, 8, 3, 3, dtype=torch.float64)
    plain_x, plain_w = x.clone().requires_grad_(), weight.clone().requires_grad_()
    phases_x, phases_w = x.clone().requires_grad_(), weight.clone().requires_grad_()
    plain = F.conv2d(F.interpolate(plain_x, scale_factor=2.0, mode="nearest"), plain_w, padding=1)
    phases = nearest2x_conv3x3(phases_x, phases_w)
    torch.testing.assert_close(phases, plain, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(plain)
    plain.backward(upstream)
    phases.backward(upstream)
    torch.testing.assert_close(phases_x.grad, plain_x.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(phases_w.grad, plain_w.grad, rtol=1e-12, atol=1e-12)


def test_booster_heads_refine_by_phases_only_where_that_is_faster():
    heads = BiSeNetV2(num_classes=11).aux_heads
    refined = {name: (head.refine.conv.out_channels, head.refine_by_phases) for name, head in heads.items()}
    assert sorted(refined.values()) == [(16, True), (64, True), (256, False), (1024, False)]
