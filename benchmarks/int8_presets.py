"""Which NNCF settings give the fastest int8 DaViT-tiny on OpenVINO (batch 16, 224 x 224), next to
this library's bf16 and OpenVINO's bf16, in one process (benchmarks/LOG.md, "Runtimes").

The model has random weights; the int8 models are calibrated on 32 random images. Each is
compiled with bf16 for its float layers, timed in blocks (two rounds, median images/s printed per
round), and its top-1 on the timed batch compared with torch bf16's.

    python benchmarks/int8_presets.py
"""
from __future__ import annotations

import statistics

import nncf
import torch
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

from davit.checkpoint.resolve import resolve_model
from davit.exported import open_backend
from davit.model import build_model
from davit.runtime import OpenVinoBackend, convert_to_openvino
from davit.timing import time_in_blocks

BATCH = 16


def main() -> None:
    torch.manual_seed(0)
    model = build_model(resolve_model("tiny").arch, 1000).eval()
    float_model = convert_to_openvino(model, (224, 224))
    calibration = nncf.Dataset([torch.randn(1, 3, 224, 224).numpy() for _ in range(32)])

    def quantized(**settings: object) -> object:
        return nncf.quantize(float_model.clone(), calibration, subset_size=32, **settings)  # type: ignore[arg-type]

    no_smooth_quant = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    variants = {
        "mixed, transformer (davit.quantize)": quantized(preset=nncf.QuantizationPreset.MIXED,
                                                         model_type=nncf.ModelType.TRANSFORMER),
        "performance, transformer": quantized(preset=nncf.QuantizationPreset.PERFORMANCE,
                                              model_type=nncf.ModelType.TRANSFORMER),
        "mixed, transformer, no SmoothQuant": quantized(preset=nncf.QuantizationPreset.MIXED,
                                                        model_type=nncf.ModelType.TRANSFORMER,
                                                        advanced_parameters=no_smooth_quant),
        "performance, no model type": quantized(preset=nncf.QuantizationPreset.PERFORMANCE),
    }
    backends = {"torch bf16": open_backend(model, "torch", dtype="bf16"),
                "openvino bf16": OpenVinoBackend(float_model, "bf16", None)}
    backends |= {name: OpenVinoBackend(variant, "bf16", None, int8=True) for name, variant in variants.items()}
    images = torch.randn(BATCH, 3, 224, 224)
    reference = backends["torch bf16"](images).argmax(1)
    for name, backend in backends.items():
        agreement = (backend(images).argmax(1) == reference).float().mean().item()
        print(f"{name}: top-1 as torch bf16 on {100 * agreement:.0f}% of the batch")
    steps = {name: (lambda backend=backend: backend(images)) for name, backend in backends.items()}
    for _ in range(2):
        seconds = time_in_blocks(steps, repeats=4, warmup=1, block=2)
        print({name: round(BATCH / statistics.median(s), 2) for name, s in seconds.items()})


if __name__ == "__main__":
    main()
