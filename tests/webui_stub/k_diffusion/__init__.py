"""The real k-diffusion 0.0.16 from PyPI (byte-identical to the WebUI 1.10.1's repositories/k-diffusion), installed
with --no-deps, without its package __init__.

That __init__ imports the training and evaluation modules too (clean-fid, CLIP, dctorch, jsonmerge, scikit-image,
torchvision), none of which the WebUI's samplers use and which this project does not install (no CPU torchvision
exists for its torch). Here `k_diffusion` is the installed package's folder with an empty __init__, so
`import k_diffusion.sampling` and `k_diffusion.external` load the real files. Their one import of that kind,
`k_diffusion.utils`' `from torchvision.transforms import functional as TF` (for its PIL helpers, never called by
sampling), gets a module that raises on any use when torchvision is absent.
"""
import importlib.metadata
import importlib.util
import sys
import types

import torch  # noqa: F401  (imported before the placeholders below exist)

_installed = importlib.metadata.distribution("k-diffusion").locate_file("k_diffusion")
__path__ = [str(_installed)]


class _Absent(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):  # what inspect, pickle and friends probe for
            raise AttributeError(name)
        raise ImportError(f"torchvision is not installed: k_diffusion.utils' {self.__name__}.{name} is unavailable in "
                          "HandRefiner's tests (only k_diffusion.sampling and .external are used)")


if importlib.util.find_spec("torchvision") is None:
    _placeholders = {name: _Absent(name) for name in ("torchvision", "torchvision.transforms",
                                                       "torchvision.transforms.functional")}
    _placeholders["torchvision.transforms"].functional = _placeholders["torchvision.transforms.functional"]
    _placeholders["torchvision"].transforms = _placeholders["torchvision.transforms"]
    sys.modules.update(_placeholders)
    try:
        from k_diffusion import utils  # noqa: F401  (binds the placeholder as utils.TF)
    finally:
        for _name in _placeholders:
            del sys.modules[_name]
