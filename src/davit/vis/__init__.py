"""Pictures of what a DaViT model sees: predictions drawn on images (``show_dir``), class
activation maps (grad-cam) and the window and channel attention of a block."""
from .attention import (
                        BlockAttention,
                        block_attention,
                        channel_attention_probabilities,
                        save_attention_pictures,
                        window_attention_probabilities,
)
from .cam import CAM_METHODS, ClassActivationMap, class_activation_map
from .drawing import ClassScore, PredictionPictures, heatmap_overlay, prediction_picture
from .regions import InputRegion, input_region

__all__ = ["CAM_METHODS", "BlockAttention", "ClassActivationMap", "ClassScore", "InputRegion", "PredictionPictures",
           "block_attention", "channel_attention_probabilities", "class_activation_map", "heatmap_overlay",
           "input_region", "prediction_picture", "save_attention_pictures", "window_attention_probabilities"]
