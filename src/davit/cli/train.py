"""``davit train`` (and ``tools/train.py``): train or fine-tune from a config, with mmpretrain's
``tools/train.py`` options."""
from __future__ import annotations

import argparse

from ..config.training import RecipeOverrides
from ..dtypes import AMP_DTYPES
from ..engine.session import Interrupted, TrainSession
from ..engine.train import TrainOptions, train
from .argtypes import add_config_options, add_device, positive_int

DESCRIPTION = "Train or fine-tune DaViT from a config (mmpretrain's tools/train.py)."


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train or fine-tune from a config",
                                   description=DESCRIPTION)
    add_config_options(parser, "train_dataloader", "where logs and checkpoints go (default: the "
                                                   "config's work_dir, else work_dirs/<config name>)")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="auto|PATH",
                        help="continue a run: 'auto' (the default when the flag has no value) "
                             "takes latest.pth from the work dir, or starts afresh when there is "
                             "none; PATH takes that checkpoint")
    parser.add_argument("--amp", nargs="?", const="fp16", choices=sorted(AMP_DTYPES),
                        help="mixed precision under autocast (bare --amp: fp16, with a gradient "
                             "scaler; bf16 needs none)")
    parser.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    parser.add_argument("--accumulate", type=positive_int, metavar="N",
                        help="gradient accumulation: one optimizer step every N batches "
                             "(optim_wrapper.accumulative_counts)")
    parser.add_argument("--clip-grad", type=float, metavar="MAX_NORM",
                        help="clip the gradients' total L2 norm (optim_wrapper.clip_grad.max_norm)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="recompute block activations in the backward pass to save memory")
    parser.add_argument("--ema", type=float, nargs="?", const=0.9998, metavar="DECAY",
                        help="keep an exponential moving average of the weights (bare --ema: "
                             "decay 0.9998, mmpretrain's EMAHook momentum 2e-4)")
    parser.add_argument("--seed", type=int, help="random seed (randomness.seed; default random)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms only (randomness.deterministic)")
    add_device(parser)
    parser.add_argument("--checkpoint-iters", type=positive_int, metavar="N",
                        help="also save a checkpoint (iter_N.pth, latest.pth) every N optimizer steps")
    parser.add_argument("--no-validate", action="store_true", help="skip validation")
    parser.add_argument("--launcher", choices=["none", "pytorch"],
                        help="accepted for mmpretrain compatibility; torchrun's environment decides")
    parser.add_argument("--local-rank", "--local_rank", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """0 when the run completes, 128 + the signal number after SIGINT/SIGTERM (a checkpoint is
    saved); errors propagate to :func:`davit.cli.app.execute`."""
    overrides = RecipeOverrides(grad_checkpointing=args.grad_checkpointing,
                                accumulate=args.accumulate, clip_grad=args.clip_grad,
                                amp=args.amp, ema=args.ema)
    options = TrainOptions(
        config=args.config, work_dir=args.work_dir, cfg_options=tuple(args.cfg_options),
        resume=args.resume, overrides=overrides, compile=args.compile, seed=args.seed,
        deterministic=args.deterministic, device=args.device,
        checkpoint_iters=args.checkpoint_iters, validate=not args.no_validate,
        launcher=args.launcher)
    try:
        # The session restores logging, signal handlers and determinism, and leaves the
        # process group, however the run ends.
        with TrainSession() as session:
            train(options, session)
    except Interrupted as interrupted:
        return 128 + interrupted.signum
    return 0
