"""A training folder as a stream of samples, and who computes which sample of which step.

The stream: epoch e visits the training samples in a seeded permutation of its own; position p of the stream
(p = step × effective batch + j) is sample `order(e)[p mod n]` with e = p div n. A step's effective batch is
positions [step·E, step·E + E), split into one contiguous shard per process and, within a shard, into
micro-batches (gradient accumulation). A sample's key is its stream position: its prompt dropout (here) and its
noise (`objective.draw_noise`) come from it, so a step's samples and their randomness are the same for any number
of processes, any micro-batch size and any resume point.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import torch

from lib_handrefiner.train.folder import FolderEntry, read_sample_images, sample_tensors
from lib_handrefiner.train.objective import TrainBatch

PROMPT_DROPOUT = 0.5   # the official loader replaces the caption by "" with probability 0.5


def _permutation(n: int, seed: int, salt: int) -> List[int]:
    # A salt ≥ 2³¹ keeps these generators apart from the per-sample ones (whose keys are stream positions).
    g = torch.Generator().manual_seed((int(seed) % 2 ** 31) << 32 | (0x80000000 + salt % 2 ** 31))
    return torch.randperm(n, generator=g).tolist()


def split_validation(entries: Sequence[FolderEntry], count: int, seed: int
                     ) -> Tuple[List[FolderEntry], List[FolderEntry]]:
    """(training, held out): `count` samples chosen by the seed are held out for validation, never trained on."""
    if count <= 0:
        return list(entries), []
    if count >= len(entries):
        raise ValueError(f"cannot hold out {count} validation sample(s) of {len(entries)}: lower --val-samples "
                         "(0 for none) or add samples")
    held = set(_permutation(len(entries), seed, salt=2 ** 30)[:count])
    return ([e for i, e in enumerate(entries) if i not in held], [e for i, e in enumerate(entries) if i in held])


@dataclass(frozen=True)
class StreamLayout:
    """How a step's effective batch is split: per process `batch_size` × `grad_accum`, times `world_size`."""
    batch_size: int
    grad_accum: int
    world_size: int = 1

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def micro_batches(self, step: int, rank: int) -> List[List[int]]:
        """The stream positions of process `rank`'s micro-batches at `step`."""
        start = step * self.effective_batch + rank * self.batch_size * self.grad_accum
        return [list(range(start + k * self.batch_size, start + (k + 1) * self.batch_size))
                for k in range(self.grad_accum)]


class SampleOrder:
    """Stream position → sample index (one seeded permutation per epoch, computed when first needed)."""

    def __init__(self, size: int, seed: int):
        if size <= 0:
            raise ValueError("no training samples")
        self.size, self.seed = size, seed
        self._epochs: Dict[int, List[int]] = {}

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch not in self._epochs:
            self._epochs = {epoch: _permutation(self.size, self.seed, salt=epoch)}  # one epoch in memory at a time
        return self._epochs[epoch][offset]


class StepBatches(torch.utils.data.Sampler):
    """A DataLoader batch sampler: this process's micro-batches from `start_step` to `steps`, as (index, key)."""

    def __init__(self, order: SampleOrder, layout: StreamLayout, rank: int, start_step: int, steps: int):
        self.order, self.layout, self.rank = order, layout, rank
        self.start_step, self.steps = start_step, steps

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for step in range(self.start_step, self.steps):
            for positions in self.layout.micro_batches(step, self.rank):
                yield [(self.order[p], p) for p in positions]

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.layout.grad_accum


def drop_prompt(caption: str, seed: int, key: int, probability: float) -> str:
    """The caption, or "" with `probability` (decided by the run's seed and the sample's key only)."""
    if probability <= 0:
        return caption
    return "" if random.Random(f"prompt-dropout:{seed}:{key}").random() < probability else caption


class TrainingSet(torch.utils.data.Dataset):
    """Samples of a training folder at the training resolution; indexed by (sample index, stream key)."""

    def __init__(self, root: Path, entries: Sequence[FolderEntry], resolution: int, seed: int,
                 prompt_dropout: float = PROMPT_DROPOUT):
        self.root, self.entries, self.resolution = Path(root), list(entries), resolution
        self.seed, self.prompt_dropout = seed, prompt_dropout

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, item: Tuple[int, int]) -> dict:
        index, key = item
        entry = self.entries[index]
        image, mask, hint = sample_tensors(*read_sample_images(self.root, entry.name, self.resolution))
        return dict(image=image, mask=mask, hint=hint, key=key,
                    prompt=drop_prompt(entry.caption, self.seed, key, self.prompt_dropout))


def collate(samples: List[dict]) -> TrainBatch:
    return TrainBatch(image=torch.stack([s["image"] for s in samples]), mask=torch.stack([s["mask"] for s in samples]),
                      hint=torch.stack([s["hint"] for s in samples]), prompts=[s["prompt"] for s in samples],
                      keys=[s["key"] for s in samples])
