"""The training loop: AdamW on the ControlNet alone, gradient accumulation to the effective batch, mixed
precision on CUDA, checkpoints, validation, one or many processes.

Defaults are the paper's: lr 2e-5, effective batch 16 (4 per micro-batch × 4 accumulated, as the official
train.py), 2,307 steps, AdamW with PyTorch's defaults (β 0.9/0.999, weight decay 0.01; the official passes only
the learning rate), a constant learning rate and no gradient clipping (PyTorch Lightning's defaults there). The
official train.py sets lr 1e-5 and trains in float32; the paper states 2e-5.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from lib_handrefiner.safe_write import OutputFolder, png, write_file
from lib_handrefiner.train import checkpoint as ckpt
from lib_handrefiner.train import distributed
from lib_handrefiner.train.dataset import (
    PROMPT_DROPOUT,
    SampleOrder,
    StepBatches,
    StreamLayout,
    TrainingSet,
    collate,
    split_validation,
)
from lib_handrefiner.train.folder import list_folder, read_sample_images
from lib_handrefiner.train.objective import SampleNoise, TrainBatch, draw_noise, training_loss

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
METRICS_FILE = "metrics.jsonl"
FINAL_NAME = "controlnet.safetensors"


class TrainError(ValueError):
    """A setting or input that makes training impossible; the message names it and the fix."""


@dataclass
class TrainConfig:
    data: Path
    checkpoint: Path                    # SD 1.x inpainting checkpoint (frozen)
    controlnet: Path                    # the ControlNet to start from (e.g. control_v11f1p_sd15_depth.pth)
    out: Path
    checkpoint_config: Optional[Path] = None
    captions: Optional[Path] = None
    steps: int = 2307
    batch_size: int = 4
    effective_batch: int = 16
    grad_accum: Optional[int] = None    # None: effective_batch / (batch_size × processes)
    lr: float = 2e-5
    weight_decay: float = 0.01
    resolution: int = 512
    seed: int = 0
    precision: str = "auto"             # auto: bf16 on CUDA where supported, else fp16; fp32 on the CPU
    gradient_checkpointing: bool = False
    masked_loss: bool = True
    prompt_dropout: float = PROMPT_DROPOUT
    save_every: int = 500
    keep_checkpoints: int = 2
    val_every: int = 500
    val_samples: int = 4
    val_steps: Optional[int] = None     # DDIM steps of the validation refinements (None: the refiner's default)
    log: str = "none"                   # "none" or "tensorboard"
    fp16_output: bool = False
    resume: Optional[str] = None        # None, "latest" or a checkpoint folder
    device: Optional[str] = None
    num_workers: int = 2
    progress: bool = True


@dataclass
class TrainResult:
    output: Optional[Path]              # the final ControlNet (rank 0), else None
    start_step: int
    steps: int
    losses: List[float] = field(default_factory=list)   # per step of this run, averaged over the effective batch
    notes: List[str] = field(default_factory=list)      # what resuming found and did (also printed on stderr)


# ---- set-up ----------------------------------------------------------------------------------------------------

def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise TrainError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision != "fp32" and device.type != "cuda":
        raise TrainError(f"--precision {precision}: mixed precision is for CUDA GPUs; on {device.type} use fp32")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def grad_accumulation(config: TrainConfig, world_size: int) -> int:
    if config.batch_size < 1:
        raise TrainError(f"--batch-size {config.batch_size}: must be at least 1")
    if config.grad_accum is not None:
        if config.grad_accum < 1:
            raise TrainError(f"--grad-accum {config.grad_accum}: must be at least 1")
        return config.grad_accum
    per_step = config.batch_size * world_size
    if config.effective_batch < per_step or config.effective_batch % per_step:
        raise TrainError(f"--effective-batch {config.effective_batch} is not a multiple of --batch-size "
                         f"{config.batch_size} × {world_size} process(es) = {per_step}; choose a batch size that "
                         "divides it, or give --grad-accum")
    return config.effective_batch // per_step


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a frozen network of the training."""
    return module.eval().requires_grad_(False)


def load_models(config: TrainConfig, device: torch.device, dtype: torch.dtype):
    """The frozen SD model (UNet and text encoder in `dtype`, VAE in float32) and the trainable ControlNet in
    float32 (mixed precision keeps float32 master weights), checked to pair with the UNet."""
    from lib_handrefiner.controlnet import ControlNetLoadError, load_controlnet
    from lib_handrefiner.sd_model import CheckpointError, load_sd_checkpoint

    try:
        sd = load_sd_checkpoint(config.checkpoint, config.checkpoint_config, device=device, dtype=dtype)
    except CheckpointError as e:
        raise TrainError(f"--checkpoint: {e}") from None
    try:
        controlnet = load_controlnet(config.controlnet, device=device, dtype=torch.float32)
    except ControlNetLoadError as e:
        raise TrainError(f"--controlnet: {e}") from None
    return prepare_models(sd, controlnet, config)


def prepare_models(sd, controlnet: nn.Module, config: TrainConfig):
    """Freezes the SD model and readies the ControlNet for training, after checking that they pair."""
    from lib_handrefiner.sampler import size_multiple
    from lib_handrefiner.sd_model import use_fast_attention

    freeze(sd)
    multiple = size_multiple(sd.unet)
    if config.resolution % multiple:
        raise TrainError(f"--resolution {config.resolution}: must be a multiple of {multiple} for this UNet "
                         f"(e.g. {max(multiple, config.resolution // multiple * multiple)})")
    context_dim = int(sd.encode_text([""]).shape[-1])
    if (controlnet.config.num_residuals - 1 != len(sd.unet.input_blocks)
            or controlnet.config.model_channels != sd.unet.model_channels
            or controlnet.config.context_dim != context_dim):
        raise TrainError(f"--controlnet {config.controlnet} ({controlnet.config.num_residuals - 1} encoder blocks, "
                         f"{controlnet.config.model_channels} channels, text width {controlnet.config.context_dim}) "
                         f"does not pair with the checkpoint's UNet ({len(sd.unet.input_blocks)} input blocks, "
                         f"{sd.unet.model_channels} channels, text width {context_dim}): use a ControlNet for the "
                         "same base model, or make one with `python -m lib_handrefiner controlnet init --from CKPT`")
    use_fast_attention(controlnet)
    controlnet.float().train().requires_grad_(True)
    return sd, controlnet


def enable_gradient_checkpointing(sd, controlnet: nn.Module) -> int:
    """Recompute activations in the backward pass instead of keeping them: the ControlNet's blocks and the
    frozen UNet's output blocks (the only part of the UNet gradients pass through). PyTorch's non-reentrant
    checkpoint, which (unlike ldm's) handles frozen weights and autocast. The UNet's output blocks are checkpointed
    layer by layer: the control hooks run when a layer is called, before its checkpointed forward, so their
    residuals are inputs to it and the recomputation does not add them again. Returns the modules wrapped."""
    from torch.utils.checkpoint import checkpoint

    modules = [*controlnet.input_blocks, controlnet.input_hint_block, controlnet.middle_block,
               *(layer for block in sd.unet.output_blocks for layer in block)]
    for module in modules:
        forward = module.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        module.forward = checkpointed
    return len(modules)


class ControlNetObjective(nn.Module):
    """The ControlNet (the only registered, trainable submodule) and its loss; DDP wraps this module, so the SD
    model is held outside the module tree (never broadcast, never in a gradient bucket)."""

    def __init__(self, sd, controlnet: nn.Module, masked: bool):
        super().__init__()
        self.controlnet = controlnet
        self.frozen = (sd,)
        self.masked = masked

    def forward(self, batch: TrainBatch, noise) -> torch.Tensor:
        return training_loss(self.frozen[0], self.controlnet, batch, noise, self.masked)


def train_step(objective: nn.Module, micro_batches: Sequence[Tuple[TrainBatch, SampleNoise]],
               optimizer: torch.optim.Optimizer, scaler: Any, autocast: Any, distributed: bool) -> torch.Tensor:
    """One optimizer step over a step's micro-batches (the gradient of the mean over all of them; DDP averages
    over processes and synchronises on the last micro-batch only). Returns the sum of the per-sample losses."""
    total: Optional[torch.Tensor] = None  # kept on the device: no wait for the GPU between micro-batches
    for k, (batch, noise) in enumerate(micro_batches):
        last = k == len(micro_batches) - 1
        with contextlib.nullcontext() if last or not distributed else objective.no_sync():
            with autocast:
                per_sample = objective(batch, noise)
            scaler.scale(per_sample.mean() / len(micro_batches)).backward()
        summed = per_sample.detach().double().sum()
        total = summed if total is None else total + summed
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total


# ---- the run ---------------------------------------------------------------------------------------------------

def stream_settings(config: TrainConfig, layout: StreamLayout, train_samples: int) -> Dict[str, Any]:
    return {"seed": config.seed, "effective_batch": layout.effective_batch, "train_samples": train_samples,
            "resolution": config.resolution, "prompt_dropout": config.prompt_dropout,
            "masked_loss": config.masked_loss}


class _Metrics:
    """OUT/metrics.jsonl (one line per step) and, with --log tensorboard, TensorBoard event files."""

    def __init__(self, out: Path, log: str, start_step: int):
        self.path = out / METRICS_FILE
        kept = []
        if self.path.is_file():  # a resumed run rewrites the steps after its checkpoint
            kept = [line for line in self.path.read_text().splitlines() if _logged_step(line) <= start_step]
        write_file(self.path, "".join(line + "\n" for line in kept))
        self.writer = tensorboard_writer(out) if log == "tensorboard" else None

    def step(self, step: int, values: Dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def image(self, step: int, grid) -> None:
        if self.writer is not None:
            self.writer.add_image("validation", grid, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _logged_step(line: str) -> float:
    """The step of a metrics line; a line a kill cut short counts as after every checkpoint (it is dropped)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def tensorboard_writer(out: Path):
    """TensorBoard is optional for users (dev/setup.sh installs it). Below 2.21: 2.21 needs protobuf ≥ 6.31, and pip
    would replace MediaPipe's protobuf 4.25 (or the WebUI's 3.20) with it; 2.20 takes any protobuf ≥ 3.19.6."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError("--log tensorboard needs the tensorboard package, which HandRefiner does not install: "
                         "`pip install \"tensorboard<2.21\"` (a newer one replaces the protobuf MediaPipe needs), or "
                         "train without --log (OUT/metrics.jsonl has every step)") from None
    return SummaryWriter(str(out / "tensorboard"))


def _validation_samples(config: TrainConfig, held_out) -> list:
    from lib_handrefiner.train.validation import ValidationSample

    samples = []
    for entry in held_out:
        rgb, mask, hint = read_sample_images(config.data, entry.name, config.resolution)
        samples.append(ValidationSample(entry.name, rgb, mask, hint, entry.caption))
    return samples


def train(config: TrainConfig, on_step: Optional[Callable[[int, float], None]] = None,
          models: Optional[Tuple[Any, nn.Module]] = None) -> TrainResult:
    """Runs (or resumes) one training; in a torchrun process group every process calls this. `models`: an
    (SD model, ControlNet) pair to train instead of loading config.checkpoint and config.controlnet (tests and
    benchmarks); the ControlNet is trained in place."""
    from lib_handrefiner.train.folder import DatasetFolderError

    processes = distributed.start(config.device)
    try:
        try:
            entries = list_folder(config.data, config.captions)
        except DatasetFolderError as e:
            raise TrainError(str(e)) from None
        return _train(config, processes, entries, on_step, models)
    finally:
        distributed.stop(processes)


def _train(config: TrainConfig, processes, entries, on_step, models) -> TrainResult:
    if config.steps < 1:
        raise TrainError(f"--steps {config.steps}: must be at least 1")
    if not 0.0 <= config.prompt_dropout <= 1.0:
        raise TrainError(f"prompt dropout {config.prompt_dropout}: must lie in [0, 1]")
    dtype = resolve_precision(config.precision, processes.device)
    layout = StreamLayout(config.batch_size, grad_accumulation(config, processes.world_size), processes.world_size)
    try:
        train_entries, held_out = split_validation(entries, config.val_samples, config.seed)
    except ValueError as e:
        raise TrainError(str(e)) from None
    settings = stream_settings(config, layout, len(train_entries))
    out = Path(config.out)
    lock, saved, notes, problem = None, None, [], None
    if processes.is_main:  # rank 0 holds OUT, cleans it and picks the checkpoint; the others follow its step
        try:
            lock = ckpt.OutputLock(out)
            removed = ckpt.remove_leftovers(out)
            if removed:
                notes.append(f"removed what an interrupted run left in {out}: {', '.join(p.name for p in removed)}")
            saved = _resume_point(config, out, settings, notes)
        except ValueError as e:
            problem = str(e)
        except OSError as e:
            problem = f"--out {out}: cannot write there ({e.strerror or e})"
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    try:
        if not distributed.agree(processes, problem is None):
            raise TrainError(problem or "rank 0 could not start the run (its error is above)")
        start_step = distributed.from_main(processes, saved.step if saved else 0)
        if saved is None and start_step:
            saved = ckpt.read_checkpoint_state(config.resume if config.resume != "latest"
                                               else ckpt.checkpoint_dir(out, start_step))
        if start_step >= config.steps:  # rank 0 found the export damaged and re-made it
            distributed.barrier(processes)
            return TrainResult(out / FINAL_NAME if processes.is_main else None, start_step, config.steps, [],
                               notes)
        return _run(config, processes, dtype, layout, train_entries, held_out, settings, saved, on_step, models,
                    notes)
    finally:
        if lock is not None:
            lock.release()


def _resume_point(config: TrainConfig, out: Path, settings: Dict[str, Any], notes: List[str]):
    """The checkpoint to resume from (None: a new run), its notes appended; a resume past the last step re-makes a
    missing or damaged export, else there is nothing to train. Raises ValueError."""
    if not config.resume:
        if ckpt.saved_checkpoints(out):
            raise ValueError(f"--out {out} holds checkpoints of an earlier run ({ckpt.saved_checkpoints(out)[-1].name}"
                             "): pass --resume to continue it, or choose a new --out")
        return None
    point = ckpt.find_checkpoint(out, config.resume)
    ckpt.check_resumable(point.saved, settings)
    notes.append(point.message())
    if point.skipped:
        ckpt.discard(list(point.skipped))
        notes.append(f"deleted the damaged {', '.join(p.name for p in point.skipped)}; this run saves those steps "
                     "again")
    saved = point.saved
    if saved.step >= config.steps:
        export = out / FINAL_NAME
        why = ckpt.export_damage(export)
        if why is None:
            raise ValueError(f"--resume: the checkpoint is at step {saved.step}, --steps is {config.steps}: nothing "
                             f"to train ({export} is intact); raise --steps to continue")
        ckpt.remake_export(saved, export, config.fp16_output)
        notes.append(f"re-made {export} from {saved.path}: {why}")
    return saved


def _run(config: TrainConfig, processes, dtype: torch.dtype, layout: StreamLayout, train_entries, held_out,
         settings, saved, on_step, models, notes: List[str]) -> TrainResult:
    from tqdm import tqdm

    from lib_handrefiner.settings import HandRefinerArgs

    device = processes.device
    out = Path(config.out)
    start_step = saved.step if saved else 0
    problem = None
    if processes.is_main:
        try:
            OutputFolder(out).write("config.json", json.dumps({
                **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                "grad_accum": layout.grad_accum, "world_size": processes.world_size,
                "validation": [e.name for e in held_out]}, indent=1))
        except OSError as e:
            problem = f"--out {out}: cannot write there ({e.strerror or e})"
    if not distributed.agree(processes, problem is None):
        raise TrainError(problem or "the output folder could not be written by rank 0")

    torch.manual_seed(config.seed)  # for anything that draws from the global generator (samples do not)
    sd, controlnet = load_models(config, device, dtype) if models is None else prepare_models(*models, config)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(sd, controlnet)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if saved is not None:
        ckpt.load_checkpoint(saved, controlnet, optimizer, scaler)
    objective: nn.Module = ControlNetObjective(sd, controlnet, config.masked_loss)
    if processes.distributed:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)

    dataset = TrainingSet(config.data, train_entries, config.resolution, config.seed, config.prompt_dropout)
    batches = StepBatches(SampleOrder(len(dataset), config.seed), layout, processes.rank, start_step, config.steps)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                         num_workers=config.num_workers, pin_memory=device.type == "cuda")
    latent_shape = (sd.unet.out_channels, config.resolution // 8, config.resolution // 8)
    num_timesteps = len(sd.alphas_cumprod)
    validation = _validation_samples(config, held_out) if processes.is_main and held_out else []
    val_args = HandRefinerArgs(**({"steps": config.val_steps} if config.val_steps else {}))
    metrics = _Metrics(out, config.log, start_step) if processes.is_main else None
    bar = tqdm(total=config.steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=not (processes.is_main and config.progress))
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    losses: List[float] = []
    micro = iter(loader)
    started = time.perf_counter()
    try:
        for step in range(start_step, config.steps):
            micro_batches = []
            for _ in range(layout.grad_accum):
                batch: TrainBatch = next(micro)
                micro_batches.append((batch, draw_noise(config.seed, batch.keys, latent_shape, num_timesteps)))
            total = train_step(objective, micro_batches, optimizer, scaler, autocast, processes.distributed)
            loss = float(distributed.sum_over_processes(total, processes)) / layout.effective_batch
            if not math.isfinite(loss):
                raise TrainError(f"step {step + 1}: the loss is {loss}; lower --lr, use --precision bf16 or fp32, "
                                 "or check the data (an all-black image or hint)")
            losses.append(loss)
            done = step + 1
            elapsed = time.perf_counter() - started
            if metrics is not None:
                metrics.step(done, {"loss": loss, "lr": optimizer.param_groups[0]["lr"],
                                    "samples_per_s": layout.effective_batch * len(losses) / elapsed})
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{layout.effective_batch * len(losses) / elapsed:.2f}")
            bar.update(1)
            if on_step is not None:
                on_step(done, loss)
            save = config.save_every > 0 and done % config.save_every == 0 and done < config.steps
            validate = bool(held_out) and config.val_every > 0 and (done % config.val_every == 0
                                                                    or done == config.steps)
            if processes.is_main and save:
                ckpt.save_checkpoint(out, done, controlnet, optimizer, scaler, settings, config.keep_checkpoints)
            if processes.is_main and validate:
                _validate(out, done, sd, controlnet, validation, val_args, config.seed, metrics)
            if save or validate:  # the other processes wait for rank 0's writing
                distributed.barrier(processes)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    output = None
    if processes.is_main:
        ckpt.save_checkpoint(out, config.steps, controlnet, optimizer, scaler, settings, config.keep_checkpoints)
        output = ckpt.write_export(controlnet, out / FINAL_NAME, config.fp16_output)
    distributed.barrier(processes)
    return TrainResult(output, start_step, config.steps, losses, notes)


def _validate(out: Path, step: int, sd, controlnet, samples, args, seed: int, metrics: Optional[_Metrics]) -> Path:
    from lib_handrefiner.train.validation import validation_grid

    grid = validation_grid(sd, controlnet, samples, args, seed)
    path = OutputFolder(out).write(f"validation/step-{step:06d}.png", png(grid))
    if metrics is not None:
        metrics.image(step, grid)
    return path
