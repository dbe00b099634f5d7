"""`python -m lib_handrefiner.bench samplers --url URL [--steps N] [--crop PX] [--only NAME,…]`: the hand pass of
every sampler a running WebUI lists (its /handrefiner/models), through its /handrefiner/refine on the shipped
malformed hand at the same settings: sampling seconds per hand (the `sample` timing of the answer, one run after a
warm-up) and the ratio to the fastest sampler. A sampler HandRefiner refuses is shown with its message."""
from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "malformed_1.jpg"


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner.bench samplers", description=__doc__)
    parser.add_argument("--url", required=True, help="a running WebUI with the extension (http://127.0.0.1:7860)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--crop", type=int, default=256, help="crop resolution (default 256)")
    parser.add_argument("--seed", type=int, default=1)
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
    print(f"{EXAMPLE.name}, steps {ns.steps}, crop {ns.crop}, seed {ns.seed}, {ns.url}", flush=True)
    seconds = {}
    for sampler in samplers:
        response = client.post("/handrefiner/refine", json={**body, "sampler": sampler})
        if response.status_code != 200:
            print(f"  {sampler:<28} refused ({response.status_code}): {response.json()['detail'][0]['msg']}")
            continue
        answer = response.json()
        hands = max(sum(h["refined"] for h in answer["hands"]), 1)
        seconds[sampler] = answer["timings_ms"].get("sample", 0.0) / 1000.0 / hands
        print(f"  {sampler:<28} {seconds[sampler]:7.2f} s/hand", flush=True)
    if not seconds:
        return 1
    fastest = min(seconds.values())
    print(f"\n  {'sampler':<28} {'s/hand':>7} {'x fastest':>10}")
    for sampler, value in sorted(seconds.items(), key=lambda kv: kv[1]):
        print(f"  {sampler:<28} {value:7.2f} {value / fastest:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
