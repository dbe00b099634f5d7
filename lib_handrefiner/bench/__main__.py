"""Benchmarks: `python -m lib_handrefiner.bench NAME [options]`; one module per benchmark in this package,
each exposing `main(argv) -> int`."""
from __future__ import annotations

import importlib
import pkgutil
import sys

import lib_handrefiner.bench as package


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
    if not argv or argv[0] not in names:
        print(f"usage: python -m lib_handrefiner.bench {{{'|'.join(names)}}} [options]", file=sys.stderr)
        return 2
    return importlib.import_module(f"lib_handrefiner.bench.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
