"""Training the ControlNet at tiny size on the CPU: the objective (paper eq. 4), the loop, the frozen parts, the
saved file, resuming, validation, and the sample stream that makes them reproducible."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import EXAMPLES
from PIL import Image
from train_data import write_training_folder

from lib_handrefiner import sampler
from lib_handrefiner.controlnet import controlnet_from_unet, load_controlnet, read_unet_state
from lib_handrefiner.train import objective
from lib_handrefiner.train.dataset import (
    SampleOrder,
    StepBatches,
    StreamLayout,
    TrainingSet,
    collate,
    drop_prompt,
    split_validation,
)
from lib_handrefiner.train.folder import list_folder
from lib_handrefiner.train.loop import TrainConfig, TrainError, enable_gradient_checkpointing, grad_accumulation, train
from lib_handrefiner.train.objective import draw_noise, masked_mse, model_inputs, predict_noise, training_loss


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_training_folder(tmp_path_factory.mktemp("train-data"), count=8, size=64)


@pytest.fixture(scope="module")
def unet_state(tiny_models):
    return read_unet_state(tiny_models.checkpoint)


def fresh_controlnet(unet_state):
    """The training start `controlnet init` makes: the UNet's encoder, zero convolutions at zero."""
    return controlnet_from_unet(unet_state)


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(data=data, checkpoint=Path("tiny"), controlnet=Path("init"), out=out, resolution=64,
                    batch_size=2, effective_batch=4, lr=1e-3, val_samples=2, val_every=0, save_every=0,
                    num_workers=0, progress=False)
    settings.update(overrides)
    return TrainConfig(**settings)


def fixed_batch(data: Path, keys=(0, 1)):
    dataset = TrainingSet(data, list_folder(data), 64, seed=0, prompt_dropout=0.0)
    return collate([dataset[(k, k)] for k in keys])


def test_loss_falls_on_a_fixed_batch(tiny_sd, unet_state, data):
    controlnet = fresh_controlnet(unet_state).train().requires_grad_(True)
    batch = fixed_batch(data)
    noise = draw_noise(0, batch.keys, (4, 8, 8), 1000)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = training_loss(tiny_sd, controlnet, batch, noise).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] and losses[-1] == min(losses), losses


def test_masked_loss_ignores_errors_outside_the_mask(tiny_sd, unet_state, data):
    controlnet = fresh_controlnet(unet_state)
    batch = fixed_batch(data)
    noise = draw_noise(0, batch.keys, (4, 8, 8), 1000)
    inputs = model_inputs(tiny_sd, batch, noise)
    with torch.no_grad():
        prediction = predict_noise(tiny_sd, controlnet, inputs, batch.hint)
    mask = inputs.loss_mask
    assert torch.equal(inputs.c_concat[:, :1], mask)            # the UNet's mask channel is the loss mask
    assert objective.latent_mask is sampler.latent_mask          # … made as the sampler makes it at inference
    assert torch.equal(mask, F.interpolate(batch.mask, size=(8, 8), mode="nearest"))  # the official resize
    loss = masked_mse(prediction, inputs.target, mask)
    garbage = prediction + 10.0 * torch.randn(prediction.shape, generator=torch.Generator().manual_seed(1)) * (1 - mask)
    assert torch.equal(masked_mse(garbage, inputs.target, mask), loss)
    assert not torch.allclose(masked_mse(garbage, inputs.target, None), masked_mse(prediction, inputs.target, None))
    # The official normalisation: Σ m (ε̂ − ε)² / (4 · count_nonzero(m)) per sample.
    for i in range(2):
        m = mask[i, 0] > 0
        expected = ((prediction[i] - inputs.target[i]) ** 2)[:, m].sum() / (4 * m.sum())
        assert torch.allclose(loss[i], expected, rtol=1e-6)
    empty = masked_mse(prediction, inputs.target, torch.zeros_like(mask))
    assert torch.equal(empty, torch.zeros(2))                   # no NaN for a mask that vanished


def test_sample_randomness_depends_on_its_key_only():
    a = draw_noise(5, [10, 11, 12], (4, 8, 8), 1000)
    b = draw_noise(5, [11], (4, 8, 8), 1000)
    assert torch.equal(a.noise[1], b.noise[0]) and torch.equal(a.timesteps[1:2], b.timesteps)
    assert not torch.equal(a.noise[0], a.noise[1]) and not torch.equal(a.noise[1], a.image_draw[1])
    assert 0 <= int(a.timesteps.min()) and int(a.timesteps.max()) < 1000
    drops = [drop_prompt("x", 0, k, 0.5) for k in range(400)]
    assert 150 < drops.count("") < 250 and drops == [drop_prompt("x", 0, k, 0.5) for k in range(400)]


def test_steps_are_sharded_over_processes_and_micro_batches():
    one = StreamLayout(batch_size=2, grad_accum=2, world_size=1)
    two = StreamLayout(batch_size=1, grad_accum=2, world_size=2)
    assert one.effective_batch == two.effective_batch == 4
    for step in range(3):
        shards = [sum(two.micro_batches(step, rank), []) for rank in range(2)]
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == sorted(sum(one.micro_batches(step, 0), [])) == \
            list(range(4 * step, 4 * step + 4))
    order = SampleOrder(6, seed=3)
    epoch0, epoch1 = [order[p] for p in range(6)], [order[p] for p in range(6, 12)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(6)) and epoch0 != epoch1
    batches = list(StepBatches(order, two, rank=1, start_step=2, steps=3))
    assert batches == [[(order[10], 10)], [(order[11], 11)]]


def test_held_out_samples_are_never_trained_on(data):
    entries = list_folder(data)
    train_entries, held = split_validation(entries, 2, seed=0)
    assert len(held) == 2 and not {e.name for e in held} & {e.name for e in train_entries}
    assert len(train_entries) == 6 and split_validation(entries, 2, seed=0) == (train_entries, held)
    with pytest.raises(ValueError, match="--val-samples"):
        split_validation(entries, 8, seed=0)


def test_frozen_parts_stay_frozen_and_only_the_controlnet_trains(tiny_sd, unet_state, data, tmp_path):
    before = {k: v.clone() for k, v in tiny_sd.state_dict().items()}
    controlnet = fresh_controlnet(unet_state)
    start = {k: v.clone() for k, v in controlnet.state_dict().items()}
    result = train(config(data, tmp_path, steps=2), models=(tiny_sd, controlnet))
    after = tiny_sd.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)                    # bit-identical
    assert all(not p.requires_grad and p.grad is None for p in tiny_sd.parameters())
    assert not any(m.training for m in tiny_sd.modules())
    changed = [k for k, v in controlnet.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.startswith("zero_convs.") for k in changed)
    optimizer = torch.load(tmp_path / "checkpoints" / "step-000002" / "optimizer.pt", weights_only=True)
    params = list(controlnet.parameters())
    assert len(optimizer["state"]) == len(params)                                  # no state for frozen weights
    assert all(optimizer["state"][i]["exp_avg"].shape == p.shape for i, p in enumerate(params))
    assert result.output == tmp_path / "controlnet.safetensors" and len(result.losses) == 2


def test_saved_controlnet_loads_inspects_and_changes_the_refiner(tiny_sd, unet_state, data, tmp_path, capsys):
    from safetensors import safe_open

    from lib_handrefiner.cli import main
    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.perception import perceive
    from lib_handrefiner.pipeline import refine_image
    from lib_handrefiner.settings import HandRefinerArgs

    init = fresh_controlnet(unet_state)
    trained = fresh_controlnet(unet_state)
    result = train(config(data, tmp_path, steps=3, lr=1e-2, fp16_output=True), models=(tiny_sd, trained))
    with safe_open(str(result.output), framework="pt") as f:
        keys = list(f.keys())
        assert keys and all(k.startswith("control_model.") for k in keys)
        assert {f.get_tensor(k).dtype for k in keys} == {torch.float16}
    assert main(["controlnet", "inspect", str(result.output)]) == 0
    report = capsys.readouterr().out
    assert "a ControlNet that loads" in report and "float16" in report and "prefixed control_model." in report
    loaded = load_controlnet(result.output)

    image = load_image(EXAMPLES / "malformed_1.jpg")
    args = HandRefinerArgs(steps=2, crop_resolution=64)
    seen = perceive(image, args)
    plain, untrained, refined = (refine_image(image, tiny_sd, c, args, seed=3, perception=seen).image
                                 for c in (None, init, loaded))
    assert np.array_equal(untrained, plain)           # zero convolutions at zero: the start changes nothing
    assert np.abs(refined.astype(int) - plain).max() > 10


def test_resume_continues_at_its_step_with_the_same_losses(tiny_sd, unet_state, data, tmp_path):
    whole = train(config(data, tmp_path / "whole", steps=4, save_every=2),
                  models=(tiny_sd, fresh_controlnet(unet_state)))
    first = train(config(data, tmp_path / "split", steps=2), models=(tiny_sd, fresh_controlnet(unet_state)))
    resumed_net = fresh_controlnet(unet_state)  # the weights come from the checkpoint
    rest = train(config(data, tmp_path / "split", steps=4, resume="latest"), models=(tiny_sd, resumed_net))
    assert rest.start_step == 2 and first.losses + rest.losses == whole.losses
    curve = [json.loads(line)["loss"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert curve == whole.losses
    final = load_controlnet(tmp_path / "whole" / "controlnet.safetensors").state_dict()
    assert all(torch.equal(v, final[k]) for k, v in resumed_net.state_dict().items())
    with pytest.raises(TrainError, match="effective_batch"):
        train(config(data, tmp_path / "split", steps=6, effective_batch=2, batch_size=1, resume="latest"),
              models=(tiny_sd, fresh_controlnet(unet_state)))
    with pytest.raises(TrainError, match="earlier run.*--resume"):
        train(config(data, tmp_path / "whole", steps=4), models=(tiny_sd, fresh_controlnet(unet_state)))
    with pytest.raises(TrainError, match="nothing to train"):
        train(config(data, tmp_path / "split", steps=4, resume="latest"),
              models=(tiny_sd, fresh_controlnet(unet_state)))


def test_validation_grid_at_three_strengths(tiny_sd, tiny_models, data, tmp_path):
    controlnet = load_controlnet(tiny_models.controlnet)  # random zero convolutions: the strengths differ
    train(config(data, tmp_path, steps=1, lr=1e-6, val_every=1, val_steps=2), models=(tiny_sd, controlnet))
    grid = np.asarray(Image.open(tmp_path / "validation" / "step-000001.png"))
    label, tile = 22, 256
    assert grid.shape == (2 * (label + tile), 5 * tile, 3)
    tiles = [grid[label:label + tile, c * tile:(c + 1) * tile].astype(int) for c in range(5)]
    for a in (2, 3, 4):
        assert np.abs(tiles[a] - tiles[0]).max() > 0                   # refined, not the input
        for b in range(a + 1, 5):
            assert np.abs(tiles[a] - tiles[b]).max() > 0               # 0.4, 0.55 and 0.8 differ
    strips = [grid[:label, c * tile:(c + 1) * tile] for c in range(5)]
    assert all((s < 128).any() for s in strips)                        # every tile is labelled


def test_gradient_checkpointing_gives_the_same_gradients(tiny_models, unet_state, data):
    from lib_handrefiner.sd_model import load_sd_checkpoint

    batch = fixed_batch(data)
    noise = draw_noise(0, batch.keys, (4, 8, 8), 1000)
    results = []
    for checkpointing in (False, True):
        sd = load_sd_checkpoint(tiny_models.checkpoint).requires_grad_(False)
        controlnet = controlnet_from_unet(unet_state, random_zero_convs=True).train().requires_grad_(True)
        if checkpointing:
            assert enable_gradient_checkpointing(sd, controlnet) > 0
        loss = training_loss(sd, controlnet, batch, noise).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in controlnet.parameters()]))
    assert torch.allclose(results[0][0], results[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))


def test_settings_errors_name_the_fix(tiny_sd, unet_state, data, tmp_path):
    with pytest.raises(TrainError, match="--effective-batch 16 is not a multiple"):
        grad_accumulation(TrainConfig(data, Path(), Path(), Path(), batch_size=3), world_size=1)
    assert grad_accumulation(TrainConfig(data, Path(), Path(), Path(), batch_size=4), world_size=2) == 2
    with pytest.raises(TrainError, match="multiple of 16"):
        train(config(data, tmp_path, steps=1, resolution=72), models=(tiny_sd, fresh_controlnet(unet_state)))
    with pytest.raises(TrainError, match="mixed precision is for CUDA"):
        train(config(data, tmp_path, steps=1, precision="bf16", device="cpu"),
              models=(tiny_sd, fresh_controlnet(unet_state)))
    with pytest.raises(TrainError, match="prepare-data"):
        train(config(tmp_path / "nowhere", tmp_path, steps=1), models=(tiny_sd, fresh_controlnet(unet_state)))


def test_tensorboard_logs_every_step_and_the_validation_grid(tiny_sd, tiny_models, data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    controlnet = load_controlnet(tiny_models.controlnet)
    train(config(data, tmp_path, steps=2, val_every=2, val_steps=2, log="tensorboard"), models=(tiny_sd, controlnet))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [m["step"] for m in logged] == [1, 2]
    assert [e.value for e in losses] == pytest.approx([m["loss"] for m in logged], rel=1e-6)
    assert set(events.Tags()["scalars"]) == {f"train/{key}" for key in logged[0] if key != "step"}
    (grid,) = events.Images("validation")
    saved = Image.open(tmp_path / "validation" / "step-000002.png")
    assert grid.step == 2 and (grid.width, grid.height) == saved.size


def test_tensorboard_missing_names_the_install(tiny_sd, unet_state, data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an environment without it raises
    with pytest.raises(TrainError, match=r"pip install \"tensorboard<2.21\""):
        train(config(data, tmp_path, steps=1, log="tensorboard"), models=(tiny_sd, fresh_controlnet(unet_state)))


def test_train_command_reports_a_bad_checkpoint(data, tmp_path, capsys):
    from lib_handrefiner.cli import main

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert main(["train", "--data", str(data), "--checkpoint", str(bad), "--controlnet", str(bad), "--out",
                 str(tmp_path / "out"), "--steps", "1", "--no-progress", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("error: --checkpoint:")


def test_training_benchmark_reports_speed_and_memory(capsys):
    from lib_handrefiner.bench.train import main

    assert main(["--batch", "1", "--grad-accum", "2", "--steps", "1", "--warmup", "0", "--checkpointing", "on",
                 "--device", "cpu"]) == 0
    line = capsys.readouterr().out
    assert "gradient checkpointing on" in line and "steps/s" in line and "MiB" in line
    if not torch.cuda.is_available():
        assert main(["--arch", "sd15", "--device", "cpu"]) == 2
        assert "not measured" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_step_keeps_float32_weights(tiny_sd, unet_state, data, dtype):
    """The autocast and loss-scaling path of a CUDA run, here under the CPU's autocast."""
    from lib_handrefiner.train.loop import ControlNetObjective, train_step

    controlnet = controlnet_from_unet(unet_state, random_zero_convs=True).train().requires_grad_(True)
    objective = ControlNetObjective(tiny_sd, controlnet, masked=True)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    batch = fixed_batch(data, keys=(0,))
    micro = [(batch, draw_noise(0, batch.keys, (4, 8, 8), 1000))]
    losses = [float(train_step(objective, micro, optimizer, scaler, torch.autocast("cpu", dtype=dtype), False))
              for _ in range(2)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert {p.dtype for p in controlnet.parameters()} == {torch.float32}
