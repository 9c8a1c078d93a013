"""Class activation maps through grad-cam on the (B, H, W, C) stage outputs."""
import numpy as np
import pytest
import torch
from PIL import Image

from davit.errors import ImageLoadError, InvalidArgumentError
from davit.model import DaViTClassifier
from davit.vis.cam import class_activation_map
from davit.vis.inputs import model_input
from tests.paths import REPO
from tests.vis.conftest import TINY_ARCH

CAT = REPO / "demo" / "cat.jpg"


def hand_gradcam(model, image, target: int, stage: int) -> np.ndarray:
    """Grad-CAM by its definition: ReLU(sum over channels of the stage's activations weighted by
    the spatial mean of the target logit's gradient), at the stage's resolution."""
    activations = {}
    handle = model.backbone.stages[stage].register_forward_hook(
        lambda _m, _i, out: activations.update(out=out.retain_grad() or out))
    try:
        model(model_input(model, image).tensor)[0, target].backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    tokens, gradient = activations["out"][0], activations["out"].grad[0]  # (H, W, C)
    weights = gradient.mean(dim=(0, 1))
    return torch.relu((tokens * weights).sum(-1)).detach().numpy()


def test_gradcam_is_the_definition_upsampled_onto_the_input(model):
    from pytorch_grad_cam.utils.image import scale_cam_image

    result = class_activation_map(model, CAT, target_class=2, method="gradcam", stage=1)
    assert result.heatmap.shape == (64, 64) and result.region.input_size == (64, 64)
    # grad-cam min-max scales each layer's map as it upsamples it, then the mean over layers
    expected = scale_cam_image(scale_cam_image(hand_gradcam(model, CAT, 2, 1)[None], (64, 64)))[0]
    assert np.allclose(result.heatmap, expected, atol=1e-4)
    assert result.heatmap.min() == 0.0 and result.heatmap.max() == pytest.approx(1.0, abs=1e-4)


# score-cam weighs the channels by a softmax of the masked images' scores: closer maps
@pytest.mark.parametrize("method, change", [("gradcam", 0.05), ("gradcam++", 0.05), ("scorecam", 0.01)])
def test_the_map_changes_with_the_target_class(model, method, change):
    first = class_activation_map(model, CAT, target_class=0, method=method, stage=-2)
    second = class_activation_map(model, CAT, target_class="dog", method=method, stage=-2)
    assert second.target_class == 3 and second.class_name == "dog"
    assert np.abs(first.heatmap - second.heatmap).mean() > change
    assert first.top_class == second.top_class and 0 < first.score < 1


def test_eigencam_and_the_default_target(model):
    chosen = class_activation_map(model, CAT, method="eigencam", stage=0)
    other = class_activation_map(model, CAT, target_class=4, method="eigencam", stage=0)
    assert chosen.target_class == chosen.top_class
    assert np.allclose(chosen.heatmap, other.heatmap)  # eigencam does not look at the class
    assert chosen.heatmap.std() > 0.05
    assert not any(module._forward_hooks for module in model.modules())  # grad-cam's hooks are gone


def test_the_overlay_covers_the_crop_and_dims_the_rest(model):
    result = class_activation_map(model, CAT, target_class=1, stage=1)
    overlay = result.overlay(display_size=0)
    assert overlay.size == (451, 300)
    original, drawn = (np.asarray(image, dtype=np.float32) for image in (Image.open(CAT).convert("RGB"), overlay))
    left, top, right, bottom = result.region.box  # the 236/224-style crop: x 92..359, y 17..283
    assert (left, right) == (92, 359)
    assert np.allclose(drawn[:, :left - 1], np.floor(original[:, :left - 1] * 2 / 5), atol=1)  # dimmed, unseen
    inside = drawn[top:bottom, left:right]
    assert np.abs(inside - original[top:bottom, left:right]).mean() > 20  # the heat map is drawn
    scaled = result.overlay(display_size=200)
    assert scaled.size == (200, 133) and np.asarray(scaled).std() > 20


@pytest.mark.parametrize("options, message", [
    ({"target_class": 5}, r"target class 5 is outside the model's 5 classes; pass an index 0\.\.4"),
    ({"target_class": "-1"}, r"target class -1 is outside the model's 5 classes"),
    ({"target_class": "zebra"}, r"the model has no class named 'zebra'"),
    ({"stage": -5}, r"stage -5 does not exist: this model has 4 stages"),
    ({"method": "magic"}, r"unknown CAM method 'magic'; choose one of gradcam, gradcam\+\+, scorecam, eigencam"),
])
def test_bad_requests_are_one_line_errors(model, options, message):
    with pytest.raises(InvalidArgumentError, match=message) as error:
        class_activation_map(model, CAT, **options)
    assert "\n" not in str(error.value)


def test_unreadable_image_and_headless_model(model, tmp_path):
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(CAT.read_bytes()[:3000])
    with pytest.raises(ImageLoadError, match="cut.jpg is truncated or corrupt"):
        class_activation_map(model, bad)
    with pytest.raises(InvalidArgumentError, match="needs a classifier"):
        class_activation_map(DaViTClassifier(TINY_ARCH, num_classes=0), CAT)
