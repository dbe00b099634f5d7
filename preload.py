"""Command-line options HandRefiner adds to the WebUI (the WebUI calls `preload(parser)` before parsing)."""


def preload(parser):
    parser.add_argument("--handrefiner-models-dir", type=str, default=None,
                        help="HandRefiner: folder searched first for its ControlNet, checkpoints and mesh-model files "
                             "(default: models/handrefiner, then models/ControlNet)")
