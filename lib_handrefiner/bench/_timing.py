"""The one timing rule every benchmark uses: median wall time after warm-up calls."""
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
