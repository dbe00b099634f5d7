"""HandRefiner's pass in the WebUI's progress bars, and its Interrupt/Skip buttons."""
from __future__ import annotations

from typing import Any


class WebUIProgress:
    """Counts HandRefiner's sampling steps as one extra job in the WebUI's progress (the bar under the image and
    the console's "Total progress"), as the WebUI does for its hires pass."""

    def __init__(self, state: Any, total_tqdm: Any = None) -> None:
        self.state = state
        self.total_tqdm = total_tqdm
        self._counted_total = False

    def begin(self) -> None:
        self.state.job_count = max(int(self.state.job_count), 0) + 1
        self.state.textinfo = "HandRefiner"
        self.state.sampling_step = 0

    def step(self, done: int, total: int) -> None:
        if not self._counted_total:
            self._counted_total = True
            self._add_to_console_total(total)
        self.state.sampling_steps = total
        self.state.sampling_step = done
        if self.total_tqdm is not None:
            self.total_tqdm.update()

    def end(self) -> None:
        self.state.nextjob()

    def should_stop(self) -> bool:
        """Interrupt, Skip and "Stop generating" (state.stopping_generation: the Interrupt button while more
        images are to come, with "Don't Interrupt in the middle" on) all end the pass before its next step."""
        return bool(self.state.interrupted or self.state.skipped or getattr(self.state, "stopping_generation", False))

    def add_pass(self, steps: int) -> None:
        """A WebUI sampling pass of `steps` steps is about to run: its sampler moves the bars itself
        (state.sampling_step, one console update per step); only the console's total needs the steps."""
        self._add_to_console_total(steps)

    def _add_to_console_total(self, steps: int) -> None:
        bar = getattr(self.total_tqdm, "_tqdm", None)
        if bar is not None and bar.total is not None:
            self.total_tqdm.updateTotal(bar.total + steps)
