"""`python -m lib_handrefiner.bench engines [--url URL] [--checkpoint CKPT --controlnet CN] [options]`: the two
engines of the hand pass, HandRefiner's own DDIM loop ("DDIM (HandRefiner)") and the WebUI's samplers ("DDIM",
"Euler a", "DPM++ 2M" with "Karras"), on the shipped malformed hand: seconds per hand, and how far apart the
refined hands are (mean |difference| over the hand mask's pixels, 0-255; "seed to seed" is the same engine with
the next seed, the scale of a meaningful difference).

In the repository's WebUI stand-in (tests/webui_stub; the tiny model, or CKPT/CN), the difference between the
official loop and the WebUI's DDIM is also taken apart: each row turns one more thing of the official loop into
what the WebUI's DDIM does (both use HandRefiner's blend mask and the same nearest-resized mask channel), and the
last row is the WebUI's pass itself (its difference must be 0). With --url (a
running WebUI with the extension) the same samplers go through its /handrefiner/refine; given CKPT/CN too (the
files that WebUI runs), each real result is compared with the stand-in's."""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "tests" / "webui_stub"
EXAMPLE = ROOT / "examples" / "malformed_1.jpg"
SAMPLERS = [("DDIM (HandRefiner)", "Automatic"), ("DDIM", "Automatic"), ("Euler a", "Automatic"),
            ("DPM++ 2M", "Karras")]


def hand_difference(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean |a − b| over the mask's pixels and channels, in 0-255."""
    inside = mask > 0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64))[inside].mean())


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner.bench engines", description=__doc__)
    parser.add_argument("--url", help="a running WebUI with the extension (e.g. http://127.0.0.1:7860)")
    parser.add_argument("--checkpoint", type=Path, help="the SD 1.x inpainting checkpoint (yaml beside it); "
                                                        "default: the tiny model")
    parser.add_argument("--controlnet", type=Path, help="the HandRefiner ControlNet for it; default: the tiny one")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--crop", type=int, default=256, help="crop resolution (default 256)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per sampler (the median is shown)")
    ns = parser.parse_args(argv)
    if (ns.url is None or ns.checkpoint is not None) and not STUB.is_dir():
        print(f"needs {STUB} (the WebUI stand-in of the repository's tests)", file=sys.stderr)
        return 2

    from lib_handrefiner.imageio import load_image
    from lib_handrefiner.settings import HandRefinerArgs

    image = load_image(EXAMPLE)
    base = HandRefinerArgs(steps=ns.steps, crop_resolution=ns.crop, prompt="a hand, five fingers")
    print(f"{EXAMPLE.name}, steps {ns.steps}, crop {ns.crop}, seed {ns.seed}, strength {base.strength}, "
          f"CFG {base.cfg_scale}")
    stand_in = None
    if ns.url is None or ns.checkpoint is not None:
        stand_in = StandIn(ns.checkpoint, ns.controlnet)
    if ns.url is not None:
        real = run_samplers(lambda args, seed: refine_over_api(ns.url, image, args, seed), image, base, ns)
        print(f"\nthe WebUI at {ns.url}")
        report(real)
        if stand_in is not None:
            mine = run_samplers(stand_in.refine_fn(image), image, base, ns, repeats=1)
            print("\nthe real WebUI vs the stand-in (same files, seed, settings)")
            for name in real:
                difference = hand_difference(real[name]["image"], mine[name]["image"], real[name]["mask"])
                print(f"  {name:<28} {difference:7.3f}")
        return 0
    results = run_samplers(stand_in.refine_fn(image), image, base, ns)
    print("\nthe WebUI stand-in")
    report(results)
    print("\nthe official loop vs the WebUI's DDIM, step by step (the crop, its mask)")
    for row, (vs_previous, vs_official) in stand_in.ddim_steps(image, base.copy(update={"seed": ns.seed})):
        print(f"  {row:<86} {vs_previous:7.3f} {vs_official:7.3f}")
    return 0


def run_samplers(refine, image: np.ndarray, base, ns, repeats: Optional[int] = None) -> Dict[str, dict]:
    """{sampler label: image, mask, median seconds per hand, seed-to-seed difference}."""
    results = {}
    refine(base, ns.seed)   # warm-up: MediaPipe's graph, model loading
    for sampler, scheduler in SAMPLERS:
        args = base.copy(update={"sampler": sampler, "scheduler": scheduler})
        times, out = [], None
        for _ in range(repeats or ns.repeats):
            start = time.perf_counter()
            out, mask, hands = refine(args, ns.seed)
            times.append((time.perf_counter() - start) / max(hands, 1))
        other, _, _ = refine(args, ns.seed + 1)
        label = sampler + (f" + {scheduler}" if scheduler != "Automatic" else "")
        results[label] = {"image": out, "mask": mask, "seconds": float(np.median(times)),
                          "seed_to_seed": hand_difference(out, other, mask)}
    return results


def report(results: Dict[str, dict]) -> None:
    reference = next(iter(results.values()))
    print(f"  {'sampler':<28} {'s/hand':>7} {'vs DDIM (HandRefiner)':>22} {'seed to seed':>13}")
    for name, r in results.items():
        difference = hand_difference(r["image"], reference["image"], reference["mask"])
        print(f"  {name:<28} {r['seconds']:7.2f} {difference:22.3f} {r['seed_to_seed']:13.3f}")


def refine_over_api(url: str, image: np.ndarray, args, seed: int) -> Tuple[np.ndarray, np.ndarray, int]:
    import httpx
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    fields = {k: v for k, v in args.dict().items() if k in ("sampler", "scheduler", "steps", "crop_resolution",
                                                            "prompt", "strength", "cfg_scale")}
    response = httpx.post(f"{url.rstrip('/')}/handrefiner/refine", timeout=900,
                          json={"image": base64.b64encode(buffer.getvalue()).decode(), "seed": seed,
                                "return_mask": True, **fields})
    response.raise_for_status()
    body = response.json()
    refined = sum(h["refined"] for h in body["hands"])
    assert refined, body["message"]

    def decode(text: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))

    return decode(body["image"])[..., :3], decode(body["mask"]), refined


class StandIn:
    """WebUIRefiner over the repository's WebUI stand-in, with the WebUI's samplers."""

    def __init__(self, checkpoint: Optional[Path], controlnet: Optional[Path]) -> None:
        import torch

        from lib_handrefiner import webui
        from lib_handrefiner.controlnet import load_controlnet
        from lib_handrefiner.sd_model import find_config, load_sd_checkpoint
        from lib_handrefiner.settings import HandRefinerArgs
        from lib_handrefiner.tiny import ensure_tiny_models
        from lib_handrefiner.webui.sampling import WebUIModules

        sys.path.insert(0, str(STUB))
        import k_diffusion.sampling
        from latent_diffusion import TinyLatentDiffusion
        from modules import (
            devices,
            extra_networks,
            processing,
            prompt_parser,
            rng,
            sd_samplers,
            sd_samplers_common,
            sd_samplers_timesteps,
            sd_schedulers,
            shared,
        )

        torch.set_num_threads(max(1, torch.get_num_threads()))
        models = Path(tempfile.mkdtemp(prefix="handrefiner-bench-")) / "models"
        if checkpoint is None or controlnet is None:
            tiny = ensure_tiny_models(models / "tiny")
            checkpoint, controlnet = checkpoint or tiny.checkpoint, controlnet or tiny.controlnet
        (models / "ControlNet").mkdir(parents=True)
        (models / "ControlNet" / f"{HandRefinerArgs().controlnet}.safetensors").symlink_to(Path(controlnet).resolve())
        self.sd = load_sd_checkpoint(checkpoint, find_config(checkpoint))
        self.controlnet = load_controlnet(controlnet)
        shared.sd_model = TinyLatentDiffusion(self.sd)
        self.shared = shared
        self.modules = WebUIModules(processing=processing, sd_samplers=sd_samplers,
                                    sd_samplers_common=sd_samplers_common, sd_samplers_timesteps=sd_samplers_timesteps,
                                    sd_schedulers=sd_schedulers, extra_networks=extra_networks, rng=rng,
                                    devices=devices, k_diffusion_sampling=k_diffusion.sampling)
        env = webui.WebUIEnv(sd_model=lambda: shared.sd_model, device="cpu", dtype=torch.float32,
                             autocast=contextlib.nullcontext, torch_gc=lambda: None,
                             folders=webui.model_folders(models), devices=devices, opts=shared.opts,
                             sampling=self.modules, prompt_parser=prompt_parser, extra_networks=extra_networks)
        self.refiner = webui.WebUIRefiner(lambda: env)

    def refine_fn(self, image: np.ndarray):
        def refine(args, seed: int) -> Tuple[np.ndarray, np.ndarray, int]:
            result = self.refiner.refine(image, args, seed)
            assert result.hands, result.message
            return result.image, result.perception.mask, len(result.hands)

        return refine

    def ddim_steps(self, image: np.ndarray, args) -> List[Tuple[str, Tuple[float, float]]]:
        """The official loop turned into the WebUI's DDIM one difference at a time, on the captured crop."""
        import torch

        from lib_handrefiner.control_injection import inject_control
        from lib_handrefiner.pipeline import refine_image, to_uint8
        from lib_handrefiner.sampler import (
            DDIMSchedule,
            blend_mask,
            cfg_denoiser,
            ddim_inpaint,
            ddim_schedule,
            sample_inpaint,
        )
        from lib_handrefiner.webui import WebUISDModel
        from lib_handrefiner.webui.sampling import WebUISampling, _preserved_globals

        sd = WebUISDModel(self.shared.sd_model, "cpu", torch.float32)
        engine = WebUISampling(self.modules, "DDIM")
        captured = {}

        def capture(sd_, controlnet, request, strengths, seed, callback=None, should_stop=None):
            captured.update(request=request, seed=seed)
            return engine(sd_, controlnet, request, strengths, seed, callback, should_stop)

        with torch.no_grad():
            refine_image(image, sd, self.controlnet, args.copy(update={"sampler": "DDIM"}), seed=args.seed,
                         negative_prompt="", sample_fn=capture)
            request, seed = captured["request"], captured["seed"]
            webui_ddim = to_uint8(engine(sd, self.controlnet, request, [args.strength], seed))[0]
            official = to_uint8(sample_inpaint(sd, self.controlnet, request, [args.strength], seed))[0]
            with _preserved_globals(self.modules, seed):
                p = engine._prepare(request, 1, seed)
                p.setup_conds()
            cond, uncond = p.c.batch[0][0].schedules[0].cond[None], p.uc[0][0].cond[None]
            known, hand = p.init_latent, blend_mask(request.mask)
            alphas = self.shared.sd_model.alphas_cumprod.double()
            steps, t_enc = self.modules.sd_samplers_common.setup_img2img_steps(p)
            timesteps = torch.tensor([t + 1 for t in range(0, 1000, 1000 // steps)])
            run, to = timesteps[1:t_enc].flip(0), timesteps[:t_enc - 1].flip(0)
            webui_schedule = DDIMSchedule(timesteps=run, alphas=alphas[run], alphas_next=alphas[to])
            start = alphas[timesteps[t_enc]].float()

            def loop(schedule, webui_start: bool, webui_draws: bool) -> np.ndarray:
                generator = torch.Generator().manual_seed(seed)
                noise = torch.randn(known.shape, generator=generator)
                x_T = start.sqrt() * known + (1 - start).sqrt() * noise if webui_start else noise
                draw = (lambda i, n: torch.randn(known.shape, generator=generator)) if webui_draws else None
                denoise = cfg_denoiser(sd, cond, uncond, request.cfg_scale, p.image_conditioning)
                with inject_control(sd.unet, self.controlnet, request.hint, args.strength):
                    z = ddim_inpaint(denoise, x_T, known, hand, schedule, generator, callback=draw)
                return to_uint8(sd.decode_latent(z))[0]

            official_schedule = ddim_schedule(sd.alphas_cumprod, request.steps, request.denoising_strength)
            rows = [("official loop (DDIM (HandRefiner))", official),
                    ("+ the WebUI's VAE encodings (posterior samples, not the mode) of the crop and the masked crop",
                     loop(official_schedule, False, False)),
                    ("+ the WebUI DDIM's img2img timesteps and start (2 steps dropped, x_T = a.x0 + b.e)",
                     loop(webui_schedule, True, False)),
                    ("+ its noise draws (one eta-noise per step: every other draw goes to the blend)",
                     loop(webui_schedule, True, True)),
                    ("= the WebUI's DDIM pass", webui_ddim)]
        mask = (request.mask[0, 0].numpy() > 0.5)
        out, previous = [], official
        for name, result in rows:
            out.append((name, (hand_difference(result, previous, mask), hand_difference(result, official, mask))))
            previous = result
        return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
