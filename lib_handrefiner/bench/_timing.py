"""What the benchmarks measure the same way: the timing rule (median wall time after warm-up calls) and peak
memory."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1,
              sync: Callable[[], None] = lambda: None) -> float:
    """Median milliseconds of `repeats` calls of `fn` after `warmup` untimed ones; `sync` waits for queued device
    work (e.g. torch.cuda.synchronize) so that the time is the work's, not its launch's."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def peak_memory_mib(device) -> float:
    """Peak GPU memory allocated since the last reset on CUDA; elsewhere the process's peak RSS (models included)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
