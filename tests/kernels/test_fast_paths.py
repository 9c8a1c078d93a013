"""The fast kernels (davit.kernels) compute the official model: bfloat16, gradients, grouping,
compile; and the public switch turns them off."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import davit
from davit import fast_kernels, fast_kernels_enabled, kernels
from davit.checkpoint.formats import from_davit, to_davit
from davit.data import build_test_transform
from davit.model import DaViTClassifier
from davit.model.blocks import Mlp
from tests.paths import FIXTURES, REPO

MINI = {"embed_dims": [8, 16, 32, 64], "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8]}


def _golden_model(golden, golden_arch):
    arch, num_classes = golden_arch
    model = DaViTClassifier(arch, num_classes=num_classes).eval()
    model.load_state_dict(to_davit(golden["state_dict_official"]))
    return model


@pytest.mark.parametrize("name", ["x224", "x_odd"])
@pytest.mark.parametrize("precision", ["autocast", "pure"])
def test_bfloat16_logits_match_golden(golden, golden_arch, name, precision):
    model = _golden_model(golden, golden_arch)
    x = golden["inputs"][name]
    expected = golden["outputs"][f"official_logits_{name}"]
    with torch.no_grad():
        if precision == "pure":
            logits = model.bfloat16()(x.bfloat16())
        else:
            with torch.autocast("cpu", torch.bfloat16):
                logits = model(x)
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - expected).abs().max() <= 2e-2 * expected.abs().max()


def _photo_crops(count_per_image: int = 4) -> torch.Tensor:
    """Random crops (and mirror images) of the demo photos and the non-constant fixture PNGs."""
    paths = [REPO / "demo" / "cat.jpg", REPO / "demo" / "coffee.jpg",
             *sorted((FIXTURES / "mmpretrain_pipeline").glob("*.png"))]
    transform = build_test_transform()
    generator = torch.Generator().manual_seed(0)
    crops = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        if np.asarray(image).std() < 1:  # a constant image has no top-1 to agree on
            continue
        width, height = image.size
        for i in range(count_per_image):
            scale = 0.5 + 0.5 * float(torch.rand(1, generator=generator))
            w, h = max(1, int(width * scale)), max(1, int(height * scale))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            crop = image.crop((left, top, left + w, top + h))
            crops.append(transform(crop.transpose(Image.FLIP_LEFT_RIGHT) if i % 2 else crop))
    return torch.stack(crops)


@pytest.mark.slow
def test_bfloat16_top1_agrees_with_float32_on_photos():
    """DaViT-tiny with timm's random initialisation, on crops of real photos.

    Random weights give some near-ties; top-1 agreement is counted where float32's two best
    logits differ by at least 1% of the largest logit (bfloat16 resolves 0.4%), which must be
    most of the images.
    """
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("davit_tiny")
    model = DaViTClassifier("tiny").eval()
    model.load_state_dict(to_davit(reference.state_dict()))
    x = _photo_crops()
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", torch.bfloat16):
            autocast = model(x).float()
        pure = model.bfloat16()(x.bfloat16()).float()
    top2 = expected.topk(2, dim=1).values
    decided = top2[:, 0] - top2[:, 1] >= 1e-2 * expected.abs().max()
    assert decided.float().mean() >= 0.5
    for logits in (autocast, pure):
        agree = logits.argmax(1)[decided] == expected.argmax(1)[decided]
        assert agree.float().mean() >= 0.99
        assert (logits - expected).abs().max() <= 0.05 * expected.abs().max()


def test_gradients_match_timm():
    """One training step's loss and gradients equal timm's for the same weights and batch."""
    pytest.importorskip("timm")
    from timm.models.davit import DaVit

    torch.manual_seed(0)
    ours = DaViTClassifier(MINI, num_classes=7)
    reference = DaVit(depths=tuple(MINI["depths"]), embed_dims=tuple(MINI["embed_dims"]),
                      num_heads=tuple(MINI["num_heads"]), num_classes=7)
    reference.load_state_dict(from_davit(ours.state_dict(), "timm"))
    x, y = torch.randn(3, 3, 61, 75), torch.tensor([0, 3, 6])
    for model in (ours, reference):
        F.cross_entropy(model.train()(x), y).backward()
    expected = dict(reference.named_parameters())
    for key, name in zip(ours.state_dict(), from_davit(ours.state_dict(), "timm")):
        ours_grad, timm_grad = dict(ours.named_parameters())[key].grad, expected[name].grad
        assert (ours_grad - timm_grad).abs().max() <= 1e-4 * timm_grad.abs().max() + 1e-7, key


def test_image_groups_do_not_change_results(monkeypatch):
    """CPU stages run on groups of images; grouping one image at a time, or running the whole
    batch with the fast kernels off, gives the same logits."""
    torch.manual_seed(0)
    model = DaViTClassifier(MINI, num_classes=5).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        whole = model(x)
        with fast_kernels(False):
            plain = model(x)
        monkeypatch.setattr(kernels, "CPU_GROUP_BYTES", 1)
        grouped = model(x)
    torch.testing.assert_close(grouped, whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain, whole, rtol=0, atol=1e-5)


def test_images_per_group_follows_the_byte_budget():
    with torch.no_grad():
        assert kernels.images_per_group(torch.empty(64, 56, 56, 96)) == 1
        assert kernels.images_per_group(torch.empty(64, 56, 56, 96, dtype=torch.bfloat16)) == 3
        assert kernels.images_per_group(torch.empty(3, 7, 7, 768)) == 13
        assert kernels.images_per_group(torch.empty(1, 500, 500, 96)) == 1
        with fast_kernels(False):
            assert kernels.images_per_group(torch.empty(64, 56, 56, 96)) is None
    assert kernels.images_per_group(torch.empty(64, 56, 56, 96)) is None  # training: the whole batch


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_plus_input_is_input_plus_conv(dtype, fast):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, kernel_size=3, padding=1, groups=6).to(dtype)
    x = torch.randn(2, 6, 9, 11, dtype=dtype).contiguous(memory_format=torch.channels_last)
    expected = x.float() + F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), padding=1,
                                    groups=6)
    tolerance = 1e-6 if dtype == torch.float32 else 2e-2
    with torch.no_grad(), fast_kernels(fast):
        out = kernels.conv_plus_input(conv, x).float()
    assert (out - expected).abs().max() <= tolerance * expected.abs().max()


def test_conv_plus_input_follows_weight_updates_and_trains():
    """The cached centred kernels of inference are remade after an in-place weight update; with
    autograd on, the weight gets its gradient."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, kernel_size=3, padding=1, groups=4)
    x = torch.randn(1, 4, 5, 5)
    with torch.inference_mode():
        kernels.conv_plus_input(conv, x)
    with torch.no_grad():
        conv.weight.mul_(2)
        expected = x + F.conv2d(x, conv.weight, conv.bias, padding=1, groups=4)
    with torch.inference_mode():
        torch.testing.assert_close(kernels.conv_plus_input(conv, x), expected)
    kernels.conv_plus_input(conv, x).sum().backward()
    torch.testing.assert_close(conv.weight.grad, torch.autograd.grad(
        F.conv2d(x, conv.weight, conv.bias, padding=1, groups=4).sum(), conv.weight)[0])


@pytest.mark.parametrize("scores_bytes", [1 << 20, 40_000])  # one group of windows, or several
@pytest.mark.parametrize("tokens", [49, 16, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_window_attention_is_scaled_dot_product_attention(dtype, tokens, scores_bytes, monkeypatch):
    monkeypatch.setattr(kernels, "BATCHED_WINDOW_PRODUCTS", True)  # the batched products on any CPU
    monkeypatch.setattr(kernels, "SCORES_BYTES", scores_bytes)
    torch.manual_seed(0)
    qkv = torch.randn(6, tokens, 3, 2, 16, dtype=dtype)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # the model's strided views
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    with torch.inference_mode():
        out = kernels.window_attention(q, k, v).float()
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("batched", [True, False])
def test_window_attention_takes_the_fused_kernel_unless_batched_products_are_on(batched, monkeypatch):
    monkeypatch.setattr(kernels, "BATCHED_WINDOW_PRODUCTS", batched)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    q, k, v = torch.randn(3, 4, 2, 49, 8).unbind(0)
    with torch.inference_mode():
        kernels.window_attention(q, k, v)
    assert calls == ([] if batched else [1])


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1), (7, 4, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patch_conv_is_the_convolution(dtype, kernel, stride, padding):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 10, kernel_size=kernel, stride=stride, padding=padding)
    x = torch.randn(3, 12, 16, 6).permute(0, 3, 1, 2)  # (B, H, W, C) memory seen as NCHW
    expected = conv(x).permute(0, 2, 3, 1)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = kernels.patch_conv(conv, x).float()
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out, expected.detach(), atol=tolerance, rtol=tolerance)
    with torch.no_grad():
        conv.weight.mul_(2)  # the packed weight follows an in-place update
    with torch.inference_mode():
        torch.testing.assert_close(kernels.patch_conv(conv, x), conv(x).permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def test_fast_kernels_switch_is_set_at_once_and_restored_by_with():
    assert {"fast_kernels", "fast_kernels_enabled"} <= set(davit.__all__)
    assert fast_kernels_enabled()
    with fast_kernels(False):
        assert not fast_kernels_enabled()
        with fast_kernels(True):
            assert fast_kernels_enabled()
        assert not fast_kernels_enabled()
    assert fast_kernels_enabled()
    try:
        fast_kernels(False)
        assert not fast_kernels_enabled()
    finally:
        fast_kernels(True)


def _autograd_node_names(out: torch.Tensor) -> set[str]:
    names, stack, seen = set(), [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_fast_kernels_off_trains_through_the_plain_layers():
    """Off, training runs nn.Linear and GELU (no oneDNN products, no GELU recompute) and gives
    the same logits as the fast path."""
    torch.manual_seed(0)
    model = DaViTClassifier(MINI, num_classes=5)
    x = torch.randn(2, 3, 61, 75)
    fast = model(x)
    with fast_kernels(False):
        plain = model(x)
    assert {"_TrainingLinearBackward", "_MlpWithGeluRecomputeBackward"} <= _autograd_node_names(fast)
    assert not {"_TrainingLinearBackward", "_MlpWithGeluRecomputeBackward"} & _autograd_node_names(plain)
    torch.testing.assert_close(plain, fast, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (61, 75)])
@pytest.mark.parametrize("grad", [True, False])
def test_no_graph_breaks(size, grad):
    model = DaViTClassifier(MINI, num_classes=5).eval()
    with torch.set_grad_enabled(grad):
        explanation = torch._dynamo.explain(model)(torch.randn(2, 3, *size))
    assert explanation.graph_break_count == 0, explanation.break_reasons


needs_onednn = pytest.mark.skipif(not kernels.has_onednn_linear(), reason="PyTorch without oneDNN")


def _count_onednn_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = kernels._onednn_linear

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "_onednn_linear", counting)
    return calls


@needs_onednn
@pytest.mark.parametrize("gelu_post_op", [True, False])
@pytest.mark.parametrize("dtype", ["fp32", "autocast", "pure-bf16"])
def test_onednn_linear_path_equals_the_plain_layers(monkeypatch, dtype, gelu_post_op):
    """CPU inference runs the linear layers through oneDNN (packed weights, GELU fused or apart);
    with autograd on, the plain nn.Linear calls run; both give the same logits. On a CPU
    whose oneDNN refuses bfloat16 (no AVX512-BF16 or AMX), bf16 takes the plain layers instead."""
    monkeypatch.setattr(kernels, "GELU_POST_OP", gelu_post_op)
    torch.manual_seed(0)
    onednn = dtype == "fp32" or kernels.has_onednn_linear(torch.bfloat16)
    model = DaViTClassifier(MINI, num_classes=5).eval()
    x = torch.randn(3, 3, 61, 75)
    if dtype == "pure-bf16":
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    calls = _count_onednn_calls(monkeypatch)
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype == "autocast"):
        plain = model(x).float()
        assert calls[0] == 0
        with torch.inference_mode():
            fast = model(x).float()
            assert (calls[0] > 0) == onednn
            with fast_kernels(False):
                reference = model(x).float()
    tolerance = 1e-5 if dtype == "fp32" else 2e-2
    assert (fast - plain).abs().max() <= tolerance * plain.abs().max()
    assert (fast - reference).abs().max() <= tolerance * reference.abs().max()


@needs_onednn
def test_onednn_path_steps_aside_for_hooks(monkeypatch):
    """A forward hook on a linear layer sees its calls: that layer then runs as nn.Linear."""
    torch.manual_seed(0)
    model = DaViTClassifier(MINI, num_classes=5).eval()
    layer = model.backbone.stages[0].blocks[0].spatial.mlp.fc1
    seen = []
    layer.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    calls = _count_onednn_calls(monkeypatch)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hooked = model(x)
    assert seen == [torch.Size([2, 16, 16, 32])]
    assert calls[0] > 0  # the other layers still take the fast path
    with torch.enable_grad():
        torch.testing.assert_close(hooked, model(x).detach(), rtol=0, atol=1e-5)


@needs_onednn
def test_packed_weights_follow_weight_updates():
    """The packed copy of a weight is refreshed after in-place updates (an optimizer or EMA
    step), after loading a state dict and after a dtype change."""
    torch.manual_seed(0)
    model = DaViTClassifier(MINI, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
        torch._foreach_mul_(list(model.parameters()), 1.5)
        scaled = model(x)
    with torch.enable_grad():
        torch.testing.assert_close(scaled, model(x).detach(), rtol=0, atol=1e-5)
    with torch.no_grad():
        model.load_state_dict(DaViTClassifier(MINI, num_classes=5).state_dict())
        loaded = model(x)
    assert not torch.allclose(scaled, loaded)
    with torch.enable_grad():
        torch.testing.assert_close(loaded, model(x).detach(), rtol=0, atol=1e-5)
    model.to(torch.float64).to(torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded, rtol=0, atol=1e-5)


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward pass of ``fn()``."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return total[0]


@pytest.mark.parametrize("autocast", [False, True])
def test_mlp_training_path_matches_plain_layers_and_keeps_less(autocast):
    """In training, the MLP recomputes GELU in the backward pass instead of keeping its output:
    the same outputs and gradients as nn.Linear -> GELU -> nn.Linear, with less kept memory."""
    torch.manual_seed(0)
    mlp = Mlp(16, 64)
    x = torch.randn(2, 5, 7, 16, requires_grad=True)
    grad_out = torch.randn(2, 5, 7, 16)
    results = []
    for fused in (True, False):
        mlp.zero_grad()
        x.grad = None
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            out = mlp(x) if fused else mlp.fc2(mlp.act(mlp.fc1(x)))
        out.backward(grad_out.to(out.dtype))
        results.append([out.float(), x.grad] + [p.grad for p in mlp.parameters()])
    tolerance = 1e-5 if not autocast else 2e-2
    for fused_value, plain_value in zip(*results):
        assert (fused_value - plain_value).abs().max() <= tolerance * plain_value.abs().max()
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        fused_bytes = _saved_bytes(lambda: mlp(x))
        plain_bytes = _saved_bytes(lambda: mlp.fc2(mlp.act(mlp.fc1(x))))
    hidden_bytes = 2 * 5 * 7 * 64 * (2 if autocast else 4)
    assert fused_bytes <= plain_bytes - hidden_bytes


def test_mlp_training_path_skips_frozen_weights():
    torch.manual_seed(0)
    mlp = Mlp(16, 64).requires_grad_(False)
    x = torch.randn(3, 16, requires_grad=True)
    mlp(x).sum().backward()
    expected = torch.autograd.grad(mlp.fc2(mlp.act(mlp.fc1(x))).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-6)
    assert all(p.grad is None for p in mlp.parameters())


@needs_onednn
def test_onednn_path_can_be_turned_off(monkeypatch):
    calls = _count_onednn_calls(monkeypatch)
    model = DaViTClassifier(MINI, num_classes=5).eval()
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert calls[0] == 0
    assert kernels.probe_onednn_linear()
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)
    with torch.no_grad(), fast_kernels(False):
        model(torch.randn(1, 3, 32, 32))
    assert calls[0] == 0


@pytest.mark.parametrize("autocast", [False, True])
def test_training_linear_matches_nn_linear(autocast):
    """CPU training runs qkv and proj as _TrainingLinear (oneDNN products): the same outputs and
    gradients as nn.Linear; a forward hook on the layer brings back the plain call."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 48)
    x = torch.randn(2, 49, 16, requires_grad=True)
    grad_out = torch.randn(2, 49, 48)
    results = []
    for fused in (True, False):
        layer.zero_grad()
        x.grad = None
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            out = kernels.linear(layer, x) if fused else layer(x)
        assert (out.grad_fn.name() == "_TrainingLinearBackward") == fused
        out.backward(grad_out.to(out.dtype))
        results.append([out.float(), x.grad, layer.weight.grad, layer.bias.grad])
    tolerance = 1e-5 if not autocast else 2e-2
    for fused_value, plain_value in zip(*results):
        assert (fused_value - plain_value).abs().max() <= tolerance * plain_value.abs().max()
    with fast_kernels(False):
        assert kernels.linear(layer, x).grad_fn.name() != "_TrainingLinearBackward"
    layer.register_forward_hook(lambda *args: None)
    assert kernels.linear(layer, x).grad_fn.name() != "_TrainingLinearBackward"
