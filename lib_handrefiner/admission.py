"""How many requests a server takes in at once (issue 20): beyond the limit a request is answered at once with
503 and a Retry-After estimate, instead of queuing without bound (each waiting request holds its body and its
decoded image: 16 waiting 76 KB requests took `serve` from 0.8 to 3.5 GB).

`Admission` counts the requests in the house, waiting for the model or running on it. The REST API's route class
asks it before it reads a request's body (api.body_limited_route), on `serve` and in the WebUI alike.
"""
from __future__ import annotations

import math
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

MAX_QUEUE = 4  # with the pixel and body limits: at most ~4 × 150 MB held by waiting requests
MAX_QUEUE_ENV = "HANDREFINER_MAX_QUEUE"


def max_queue() -> int:
    """HANDREFINER_MAX_QUEUE when set to a positive integer, else MAX_QUEUE."""
    value = os.environ.get(MAX_QUEUE_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else MAX_QUEUE


class Busy(Exception):
    """The server holds as many requests as it takes; `retry_after` is a whole number of seconds."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"the server is busy: {limit} request(s) are already waiting or running (its limit, "
                         f"{MAX_QUEUE_ENV}); retry in {retry_after} s")
        self.retry_after = retry_after


class Admission:
    """At most `limit` requests at once; a request past it raises `Busy` without waiting. Its Retry-After is
    when a place should be free: by Little's law, with `limit` requests each in the house for T seconds, one
    leaves every T / limit seconds (T: an exponential average of the requests' times, 10 s before the first one
    finishes)."""

    def __init__(self, limit: Optional[int] = None) -> None:
        self.limit = max_queue() if limit is None else limit
        self._inside = 0
        self._seconds = 10.0
        self._lock = threading.Lock()

    @property
    def inside(self) -> int:
        return self._inside

    @contextmanager
    def admit(self) -> Iterator[None]:
        with self._lock:
            if self._inside >= self.limit:
                raise Busy(self.limit, max(1, math.ceil(self._seconds / self.limit)))
            self._inside += 1
        start = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                self._seconds = 0.7 * self._seconds + 0.3 * (time.monotonic() - start)
