"""The queue limit (issue 20): beyond `max_queue` requests waiting or running, `/handrefiner/refine` answers 503
with Retry-After at once, over real HTTP against a real server; the requests it took in all finish."""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from lib_handrefiner.admission import Admission, Busy, max_queue
from lib_handrefiner.api import ApiConfig, mount


def _png() -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _post(url: str, payload: dict) -> tuple:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


@pytest.fixture()
def server(tiny_models):
    """A real uvicorn server on a free port with the routes over the tiny models, its model lock in the test's
    hands, at most 3 requests in."""
    import uvicorn

    from lib_handrefiner.service import StandaloneService

    lock = threading.Lock()
    app = FastAPI()
    mount(app, StandaloneService(tiny_models.checkpoint, tiny_models.controlnet), lock, ApiConfig(max_queue=3))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    route = next(r for r in app.routes if getattr(r, "path", "") == "/handrefiner/refine")
    yield f"http://127.0.0.1:{port}", lock, route.admission_control
    server.should_exit = True
    thread.join(10)


def test_past_the_limit_requests_get_503_with_retry_after_and_the_others_finish(server):
    url, lock, admission = server
    limit = admission.limit
    payload = {"image": _png(), "steps": 1}
    lock.acquire()  # the model is busy: every request taken in waits
    with ThreadPoolExecutor(limit) as pool:
        waiting = [pool.submit(_post, f"{url}/handrefiner/refine", payload) for _ in range(limit)]
        deadline = time.monotonic() + 60
        while admission.inside < limit and time.monotonic() < deadline:
            time.sleep(0.05)
        assert admission.inside == limit
        started = time.monotonic()
        status, headers, body = _post(f"{url}/handrefiner/refine", payload)
        assert status == 503 and time.monotonic() - started < 5  # answered at once, not queued
        assert int(headers["Retry-After"]) >= 1
        (error,) = body["detail"]
        assert error["type"] == "server_error.busy" and f"{limit} request(s) are already waiting" in error["msg"]
        assert not any(f.done() for f in waiting)  # the ones taken in are still waiting for the model
        lock.release()
        results = [f.result(timeout=120) for f in waiting]
    assert [status for status, _, _ in results] == [200] * limit
    assert admission.inside == 0
    assert _post(f"{url}/handrefiner/refine", payload)[0] == 200  # room again


def test_admission_counts_and_releases():
    admission = Admission(2)
    with admission.admit(), admission.admit():
        assert admission.inside == 2
        with pytest.raises(Busy) as busy:
            with admission.admit():
                pass
        assert busy.value.retry_after >= 1 and "HANDREFINER_MAX_QUEUE" in str(busy.value)
    assert admission.inside == 0
    with admission.admit():
        pass


def test_the_limit_comes_from_the_environment(monkeypatch):
    assert max_queue() == 4 and ApiConfig().max_queue == 4
    monkeypatch.setenv("HANDREFINER_MAX_QUEUE", "9")
    assert max_queue() == 9 and ApiConfig().max_queue == 9 and Admission().limit == 9
