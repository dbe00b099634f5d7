"""HandRefiner: fix malformed hands in generated images (detect → mesh → depth → inpaint with a depth ControlNet)."""

__version__ = "0.1.0"
