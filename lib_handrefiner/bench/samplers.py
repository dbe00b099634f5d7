"""`python -m lib_handrefiner.bench samplers --url URL [--steps N] [--crop PX] [--runs N] [--only NAME,…]`: the hand
pass of every sampler a running WebUI lists (its /handrefiner/models), through its /handrefiner/refine on the
shipped malformed hand at the same settings. Per sampler: the UNet calls per hand (the answer's `unet_calls`: the
cost, whatever else the machine runs), the sampling seconds per hand (the answer's `sample` timing, median of
`--runs` after a warm-up; this depends on the load) and both as ratios to the cheapest sampler. A sampler
HandRefiner refuses is shown with its message."""
from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "malformed_1.jpg"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min) on {os.cpu_count()} CPUs"


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner.bench samplers", description=__doc__)
    parser.add_argument("--url", required=True, help="a running WebUI with the extension (http://127.0.0.1:7860)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--crop", type=int, default=256, help="crop resolution (default 256)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1, help="timed runs per sampler (the median is shown)")
    parser.add_argument("--only", default="", help="comma-separated sampler names (default: all)")
    ns = parser.parse_args(argv)

    import httpx

    client = httpx.Client(base_url=ns.url.rstrip("/"), timeout=1800)
    samplers = client.get("/handrefiner/models").json()["samplers"]
    if ns.only:
        samplers = [s for s in samplers if s in ns.only.split(",")]
    image = base64.b64encode(EXAMPLE.read_bytes()).decode()
    body = {"image": image, "seed": ns.seed, "steps": ns.steps, "crop_resolution": ns.crop,
            "prompt": "a hand, five fingers"}
    client.post("/handrefiner/refine", json=body)   # warm-up: MediaPipe's graph, model loading
    print(f"{EXAMPLE.name}, steps {ns.steps}, crop {ns.crop}, seed {ns.seed}, {ns.runs} run(s), {ns.url}; "
          f"{load()}", flush=True)
    measured: Dict[str, Tuple[float, float]] = {}   # sampler -> (UNet calls per hand, seconds per hand)
    for sampler in samplers:
        seconds, calls = [], 0.0
        for _ in range(max(1, ns.runs)):
            response = client.post("/handrefiner/refine", json={**body, "sampler": sampler})
            if response.status_code != 200:
                break
            answer = response.json()
            hands = max(sum(h["refined"] for h in answer["hands"]), 1)
            seconds.append(answer["timings_ms"].get("sample", 0.0) / 1000.0 / hands)
            calls = answer.get("unet_calls", 0) / hands
        if response.status_code != 200:
            print(f"  {sampler:<28} refused ({response.status_code}): {response.json()['detail'][0]['msg']}",
                  flush=True)
            continue
        measured[sampler] = (calls, statistics.median(seconds))
        print(f"  {sampler:<28} {calls:5.0f} UNet calls {measured[sampler][1]:7.2f} s/hand", flush=True)
    if not measured:
        return 1
    fewest = min(c for c, _ in measured.values()) or 1.0
    fastest = min(s for _, s in measured.values()) or 1.0
    print(f"\n{load()}")
    print(f"  {'sampler':<28} {'calls':>5} {'x fewest':>8} {'s/hand':>7} {'x fastest':>9}")
    for sampler, (calls, seconds) in sorted(measured.items(), key=lambda kv: (kv[1][0], kv[1][1])):
        print(f"  {sampler:<28} {calls:5.0f} {calls / fewest:8.2f} {seconds:7.2f} {seconds / fastest:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
