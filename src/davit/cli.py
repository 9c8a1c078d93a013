"""The ``davit`` command line: list, predict, flops, convert, export, test, train, benchmark."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import Sequence

import torch
from .argtypes import positive_int

logger = logging.getLogger("davit")


def _cmd_list(args: argparse.Namespace) -> int:
    from .zoo import MODELS, list_models

    for name in list_models(args.pattern, pretrained=args.pretrained):
        info = MODELS[name]
        print(f"{name:28s} arch={info.arch:6s} weights={info.weights or '-'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .api import get_model, inference_model

    pretrained = args.checkpoint if args.checkpoint else True
    model = get_model(args.model, pretrained=pretrained, device=args.device,
                      semantics=args.semantics)
    results = inference_model(model, list(args.images), batch_size=args.batch_size)
    names = model.class_names
    records, failed = [], 0
    for path, result in zip(args.images, results):
        if "error" in result:
            failed += 1
            print(f"davit: error: {result['error']}", file=sys.stderr)
            records.append({"image": path, "error": result["error"]})
            continue
        scores = torch.from_numpy(result["pred_scores"])
        top = scores.topk(min(args.topk, scores.numel()))
        predictions = [{"label": int(i), "score": float(s),
                        **({"class": names[int(i)]} if names else {})}
                       for s, i in zip(top.values, top.indices)]
        records.append({"image": path, "predictions": predictions})
        if not args.json:
            print(path)
            for p in predictions:
                print(f"  {p['score']:.4f}  {p['label']:4d}  {p.get('class', '')}")
    if args.json:
        print(json.dumps(records, indent=2))
    return 1 if failed else 0


def _cmd_flops(args: argparse.Namespace) -> int:
    from .api import _resolve
    from .flops import count_flops
    from .model import DaViTClassifier

    arch, num_classes, _ = _resolve(args.model)
    with torch.device("meta"):
        model = DaViTClassifier(arch, num_classes=num_classes, semantics=args.semantics)
    result = {"model": args.model, **count_flops(model, tuple(args.input_size))}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model       {args.model}\ninput size  {args.input_size[0]}x{args.input_size[1]}\n"
              f"params      {result['params']:,} ({result['params'] / 1e6:.2f} M)\n"
              f"flops       {result['flops']:,} ({result['flops'] / 1e9:.2f} G multiply-adds, "
              f"feature extractor as in mmpretrain's table)\n"
              f"head flops  {result['head_flops']:,}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .api import get_model
    from .export import export_onnx

    pretrained = args.checkpoint if args.checkpoint else not args.random_weights
    model = get_model(args.model, pretrained=pretrained, semantics=args.semantics,
                      num_classes=args.num_classes)
    out = export_onnx(model, args.output, tuple(args.input_size), verify=not args.no_verify)
    print(f"wrote {out}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint.convert import convert_file

    out = convert_file(args.src, args.dst, to=args.to, source_format=args.source_format)
    print(f"wrote {out}")
    return 0


_DELEGATED = {
    "test": ("davit.engine.evaluate", "evaluate a checkpoint on a dataset (as tools/test.py)"),
    "train": ("davit.engine.train", "train or fine-tune (as tools/train.py)"),
    "benchmark": ("davit.benchmark", "time this library's DaViT against timm's"),
}


def build_parser() -> argparse.ArgumentParser:
    from .checkpoint.formats import FORMATS
    from .model import SEMANTICS

    parser = argparse.ArgumentParser(prog="davit", description="DaViT models and tools")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list model names")
    p.add_argument("pattern", nargs="?", help="glob or substring, e.g. '*tiny*'")
    p.add_argument("--pretrained", action="store_true", help="only models with published weights")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("predict", help="classify images")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", default="davit-tiny_3rdparty_in1k", help="model name (davit list)")
    p.add_argument("--checkpoint", help="weights: path, URL or hf-hub: name (default: the model's)")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1")
    p.add_argument("--semantics", choices=SEMANTICS, default="official")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("flops", help="count parameters and multiply-adds")
    p.add_argument("model", help="model or architecture name")
    p.add_argument("--input-size", nargs=2, type=positive_int, default=[224, 224], metavar=("H", "W"))
    p.add_argument("--semantics", choices=SEMANTICS, default="official",
                   help="official (default) or mmpretrain, whose final LayerNorm acts on every "
                        "token before pooling: then the count equals the seed's table exactly")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_flops)

    p = sub.add_parser("convert", help="convert a checkpoint between formats")
    p.add_argument("src", help="checkpoint path, URL or hf-hub: name")
    p.add_argument("dst", help="output .pth or .safetensors")
    p.add_argument("--to", required=True, choices=FORMATS)
    p.add_argument("--from", dest="source_format", choices=FORMATS, help="default: detected")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("export", help="export a model to ONNX (checked with onnxruntime)")
    p.add_argument("model", help="model or architecture name")
    p.add_argument("output", help="output .onnx file")
    p.add_argument("--checkpoint", help="weights: path, URL or hf-hub: name (default: the model's)")
    p.add_argument("--random-weights", action="store_true", help="export without weights")
    p.add_argument("--num-classes", type=positive_int, help="default: the checkpoint's")
    p.add_argument("--input-size", nargs=2, type=positive_int, default=[224, 224], metavar=("H", "W"))
    p.add_argument("--semantics", choices=SEMANTICS, default="official")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    p.set_defaults(func=_cmd_export)

    for name, (_, help_text) in _DELEGATED.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        module = importlib.import_module(_DELEGATED[argv[0]][0])
        return module.main(argv[1:], prog=f"davit {argv[0]}")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("davit: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, TypeError) as error:
        if args.verbose:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"davit: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
