"""`python -m lib_handrefiner controlnet init|inspect`: create a ControlNet from a UNet, or check a ControlNet file.

- `init --from CKPT --out FILE.safetensors [--random-zero-convs] [--fp16] [--seed N]`: the encoder of the
  checkpoint's UNet (for a 9-channel inpainting UNet: the first 4 input channels, the noisy latent), a seeded random
  hint encoder and zero convolutions at zero: the starting point for training a ControlNet for that model.
  `--random-zero-convs` makes the zero convolutions random, so the ControlNet visibly acts (tests, demos).
- `inspect FILE [--json]`: the inferred configuration, key count, parameter count and dtype; exits 1 with the
  reason when the file is not a ControlNet that this project can load.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = sub.add_parser("init", help="initialise a ControlNet from an SD 1.x checkpoint's UNet")
    init.add_argument("--from", dest="source", required=True, metavar="CKPT",
                      help="single-file SD checkpoint (.safetensors/.ckpt) or a UNet state dict")
    init.add_argument("--out", required=True, metavar="FILE", help="the new ControlNet (.safetensors)")
    init.add_argument("--random-zero-convs", action="store_true",
                      help="random instead of zero 'zero convolutions' (for tests: the ControlNet then acts)")
    init.add_argument("--fp16", action="store_true", help="store half-precision tensors (half the size)")
    init.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    init.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    inspect = sub.add_parser("inspect", help="show a ControlNet file's configuration; fail if it does not fit")
    inspect.add_argument("file", metavar="FILE")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(ns: argparse.Namespace) -> int:
    from lib_handrefiner.controlnet import ControlNetLoadError

    try:
        return run_init(ns) if ns.action == "init" else run_inspect(ns)
    except (ControlNetLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run_init(ns: argparse.Namespace) -> int:
    from lib_handrefiner.controlnet import controlnet_from_unet, read_unet_state, save_controlnet

    out = Path(ns.out)
    if out.suffix.lower() != ".safetensors":
        raise ValueError(f"--out {out}: ControlNets are written as .safetensors; name it {out.stem}.safetensors")
    if out.exists() and out.resolve() == Path(ns.source).resolve():
        raise ValueError(f"--out {out} is the --from checkpoint itself; even with --force it is not replaced by the "
                         "ControlNet: choose another name")
    if out.exists() and not ns.force:
        raise ValueError(f"--out {out} exists; pass --force to overwrite it or choose another name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create its folder ({e.strerror or e})") from e
    unet = read_unet_state(ns.source)
    controlnet = controlnet_from_unet(unet, random_zero_convs=ns.random_zero_convs, seed=ns.seed)
    save_controlnet(controlnet, out, fp16=ns.fp16)
    print(f"wrote {out}: {describe_config(controlnet.config)}, "
          f"{sum(p.numel() for p in controlnet.parameters()):,} parameters, "
          f"{'float16' if ns.fp16 else 'float32'}, zero convolutions {'random' if ns.random_zero_convs else 'zero'}")
    return 0


def describe_config(config) -> str:
    return ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in asdict(config).items())


def run_inspect(ns: argparse.Namespace) -> int:
    from lib_handrefiner.controlnet import check_fits, read_controlnet_file

    found = read_controlnet_file(ns.file)
    check_fits(found)
    report = {
        "file": str(found.path),
        "configuration": asdict(found.config),
        "configuration_source": found.config_source,
        "residuals": found.config.num_residuals,
        "keys": len(found.state),
        "key_prefix": "control_model." if found.prefixed else "",
        "parameters": sum(v.numel() for v in found.state.values()),
        "dtype": found.dtypes,
    }
    if ns.json:
        print(json.dumps(report, indent=1))
        return 0
    source = "stored in the file" if found.config_source == "metadata" else "inferred from the tensor shapes"
    print(f"{report['file']}: a ControlNet that loads")
    print(f"  configuration ({source}): {describe_config(found.config)}")
    print(f"  residuals: {report['residuals']} (UNet skip connections + middle block)")
    print(f"  keys: {report['keys']} ({'prefixed control_model.' if found.prefixed else 'no prefix'})")
    print(f"  parameters: {report['parameters']:,}")
    print(f"  dtype: {', '.join(f'{k} ({n} tensors)' for k, n in found.dtypes.items())}")
    return 0
