"""`python -m lib_handrefiner train --data DIR --checkpoint SD15_INPAINT --controlnet INIT --out DIR`: fine-tune
the hand ControlNet (only the ControlNet trains; the SD model stays frozen).

One GPU: run it as is. N GPUs: `torchrun --nproc_per_node N -m lib_handrefiner train …` (the same options; the
effective batch stays --effective-batch, split over the processes). Writes OUT/controlnet.safetensors (the
`control_model.` layout this extension, `controlnet inspect` and sd-webui-controlnet load), OUT/checkpoints/ for
--resume, OUT/metrics.jsonl and OUT/validation/*.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib_handrefiner.train.loop import PRECISIONS, TrainConfig

DEFAULTS = TrainConfig(data=Path(), checkpoint=Path(), controlnet=Path(), out=Path())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("--data", required=True, type=Path, metavar="DIR",
                        help="training folder (image/, mask/, pose/, prompt.json), e.g. made by prepare-data")
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT",
                        help="SD 1.x inpainting checkpoint, frozen (e.g. sd-v1-5-inpainting.ckpt)")
    parser.add_argument("--checkpoint-config", type=Path, metavar="YAML",
                        help="the checkpoint's ldm yaml (default: CKPT.yaml beside it, else inferred)")
    parser.add_argument("--controlnet", required=True, type=Path, metavar="FILE",
                        help="ControlNet to start from: a depth ControlNet (control_v11f1p_sd15_depth.pth, read as "
                             "weights only), a HandRefiner one, or one made by `controlnet init --from CKPT`")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--captions", type=Path, metavar="JSONL",
                        help="captions to use instead of DIR/prompt.json ({\"jpg\": name, \"txt\": caption} lines)")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps}, the paper's)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help=f"samples per micro-batch and process (default {d.batch_size})")
    parser.add_argument("--effective-batch", type=int, default=d.effective_batch,
                        help=f"samples per optimizer step over all processes (default {d.effective_batch}, the "
                             "paper's); the gradient is accumulated over effective / (batch size × processes) "
                             "micro-batches")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per step and process (overrides "
                                                       "--effective-batch)")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr:g}, the paper's)")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay,
                        help=f"AdamW weight decay (default {d.weight_decay:g}, PyTorch's)")
    parser.add_argument("--resolution", type=int, default=d.resolution,
                        help=f"training size in px (default {d.resolution}); samples of another size are resized")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="seed of the sample order, the held-out set, prompt dropout and every sample's noise")
    parser.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                        help="autocast precision: auto = bf16 on GPUs that have it, else fp16 (with loss scaling); "
                             "fp32 on the CPU")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward pass: less memory, about a third slower")
    parser.add_argument("--plain-loss", action="store_true",
                        help="the unmasked loss over the whole latent (the paper's ablation) instead of eq. 4")
    parser.add_argument("--prompt-dropout", type=float, default=d.prompt_dropout,
                        help=f"probability of training a sample with an empty caption (default {d.prompt_dropout}, "
                             "the official loader's)")
    parser.add_argument("--save-every", type=int, default=d.save_every,
                        help=f"checkpoint every N steps (default {d.save_every}; 0: only at the end)")
    parser.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                        help=f"newest checkpoints kept (default {d.keep_checkpoints}; 0: all)")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="continue from OUT's newest checkpoint (or the given checkpoint folder) at its step")
    parser.add_argument("--val-every", type=int, default=d.val_every,
                        help=f"validation grid every N steps and at the end (default {d.val_every}; 0: never)")
    parser.add_argument("--val-samples", type=int, default=d.val_samples,
                        help=f"samples held out of training for validation (default {d.val_samples}; 0: none)")
    parser.add_argument("--val-steps", type=int, help="DDIM steps of the validation refinements "
                                                      "(default: the refiner's)")
    parser.add_argument("--log", choices=("none", "tensorboard"), default=d.log,
                        help="also write TensorBoard scalars and grids to OUT/tensorboard (needs `pip install "
                             "tensorboard`); OUT/metrics.jsonl is always written")
    parser.add_argument("--fp16", action="store_true", help="store the final ControlNet in half precision (as the "
                                                            "released HandRefiner file)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available); under torchrun each process "
                                         "uses the GPU of its LOCAL_RANK")
    parser.add_argument("--workers", type=int, default=d.num_workers,
                        help=f"data loading processes per training process (default {d.num_workers})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs and CI)")


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    return TrainConfig(data=ns.data, checkpoint=ns.checkpoint, checkpoint_config=ns.checkpoint_config,
                       controlnet=ns.controlnet, out=ns.out, captions=ns.captions, steps=ns.steps,
                       batch_size=ns.batch_size, effective_batch=ns.effective_batch, grad_accum=ns.grad_accum,
                       lr=ns.lr, weight_decay=ns.weight_decay, resolution=ns.resolution, seed=ns.seed,
                       precision=ns.precision, gradient_checkpointing=ns.gradient_checkpointing,
                       masked_loss=not ns.plain_loss, prompt_dropout=ns.prompt_dropout, save_every=ns.save_every,
                       keep_checkpoints=ns.keep_checkpoints, val_every=ns.val_every, val_samples=ns.val_samples,
                       val_steps=ns.val_steps, log=ns.log, fp16_output=ns.fp16, resume=ns.resume, device=ns.device,
                       num_workers=ns.workers, progress=not ns.no_progress)


def run(ns: argparse.Namespace) -> int:
    from lib_handrefiner.train.loop import TrainError, train

    try:
        result = train(config_from_args(ns))
    except (TrainError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk filled, a link planted in OUT, …: the last checkpoint is intact
        print(f"error: cannot write to --out {ns.out}: {e.strerror or e}; fix that and pass --resume to continue",
              file=sys.stderr)
        return 1
    if result.output is not None and result.start_step >= result.steps:
        print(f"re-made {result.output} from the checkpoint of step {result.steps}; nothing else to train")
    elif result.output is not None:
        last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
        print(f"trained steps {result.start_step + 1}–{result.steps}{last}; wrote {result.output}")
    return 0
