"""``davit export``: write a classifier or Florence-2 encoder as ONNX, a ``torch.export`` program or
OpenVINO IR (int8 on request), checked against PyTorch by running the written file."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..api import get_model
from ..errors import InvalidArgumentError
from ..export import FORMATS, export_model, format_of
from ..export.openvino import export_openvino_int8
from .argtypes import (
    add_checkpoint,
    add_int8,
    add_random_weights,
    add_semantics,
    check_int8_args,
    positive_int,
    weights_seed,
)

# the photos the exports are checked on by default, when this is a source checkout
DEMO_PHOTOS = Path(__file__).resolve().parents[3] / "demo"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="export a model to ONNX, torch.export or OpenVINO "
                                                  "(checked against PyTorch)")
    parser.add_argument("model", help="model or architecture name, config file, checkpoint file or "
                                      "URL, save_pretrained folder or hf-hub: name")
    parser.add_argument("output", help="output file: .onnx, .pt2 (exported-program) or .xml (openvino, "
                                       "with its .bin beside it)")
    parser.add_argument("--format", choices=FORMATS, help="default: the one the output's suffix names")
    add_checkpoint(parser)
    add_random_weights(parser, "the export then has the architecture, not trained weights")
    parser.add_argument("--num-classes", type=positive_int, help="default: the checkpoint's")
    parser.add_argument("--input-size", nargs=2, type=positive_int, metavar=("H", "W"),
                        help="image height and width (default: the model card's crop size)")
    add_semantics(parser)
    parser.add_argument("--dynamic-size", action="store_true",
                        help="dynamic height and width as well as batch size, onnx only (--input-size is "
                             "then the first size checked); Florence-2 towers take any side from 32")
    parser.add_argument("--encode-image", action="store_true",
                        help="export a Florence-2 encoder's encode_image (projected image tokens, "
                             "output 'image_tokens') instead of model(x) (the tower's last-stage "
                             "map, output 'features')")
    parser.add_argument("--with-preprocessing", action="store_true",
                        help="embed the model card's resize, crop and normalisation: the export takes "
                             "uint8 (N, H, W, 3) RGB pixels of any size ('pixels') and returns class "
                             "probabilities ('probabilities')")
    parser.add_argument("--check-images", nargs="+", metavar="IMAGE",
                        help="real images the export is checked on besides random ones (default: the "
                             "demo photos of a source checkout)")
    parser.add_argument("--no-verify", action="store_true", help="skip running the export against PyTorch")
    add_int8(parser, "NNCF, --format openvino", "write")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    export_format = args.format or _format_of(args.output)
    _check_int8_options(args, export_format)
    pretrained = args.checkpoint if args.checkpoint else not args.random_weights
    with weights_seed(args.seed):
        model = get_model(args.model, pretrained=pretrained, semantics=args.semantics,
                          num_classes=args.num_classes)
    input_size = tuple(args.input_size) if args.input_size else _card_input_size(model)
    if args.int8:
        out, report = export_openvino_int8(model, Path(args.output), args.calibration, args.holdout,
                                           args.min_agreement, input_size,
                                           allow_slower=args.allow_slower_int8)
        print(report.summary())
    else:
        check_images = args.check_images if args.check_images is not None else _demo_photos()
        out = export_model(model, args.output, export_format, input_size=input_size,
                           dynamic_size=args.dynamic_size, encode_image=args.encode_image,
                           with_preprocessing=args.with_preprocessing, verify=not args.no_verify,
                           check_images=[] if args.no_verify else check_images,
                           quiet=not getattr(args, "verbose", False))
    print(f"wrote {out}")
    return 0


def _check_int8_options(args: argparse.Namespace, export_format: str) -> None:
    if args.int8 and export_format != "openvino":
        raise InvalidArgumentError(f"--int8 quantises with OpenVINO: use --format openvino (an .xml "
                                   f"output), not {export_format}")
    check_int8_args(args)
    if not args.int8:
        return
    if args.with_preprocessing or args.dynamic_size or args.encode_image:
        raise InvalidArgumentError("--int8 exports the classifier alone at one image size; drop "
                                   "--with-preprocessing, --dynamic-size and --encode-image")


def _format_of(output: str) -> str:
    """The format the output's suffix names; ONNX for any other suffix (refused as not .onnx)."""
    try:
        return format_of(output)
    except InvalidArgumentError:
        return "onnx"


def _card_input_size(model: object) -> tuple[int, int]:
    """The size the model card's preprocessing gives the model (224 x 224 without a card)."""
    card = getattr(model, "card", None)
    if card is None:
        return (224, 224)
    pre = card.preprocessing
    return (pre.exact_size[0], pre.exact_size[1]) if pre.exact_size is not None else (pre.crop_size, pre.crop_size)


def _demo_photos() -> list[Path]:
    return sorted(DEMO_PHOTOS.glob("*.jpg")) if DEMO_PHOTOS.is_dir() else []
