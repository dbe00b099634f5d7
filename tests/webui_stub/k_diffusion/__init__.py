"""Stand-in for k-diffusion (the WebUI's repositories/k-diffusion): the pieces the WebUI 1.10.1's samplers use."""
from . import external, sampling  # noqa: F401
