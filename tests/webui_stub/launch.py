"""The `launch` module as extension installers import it: launch_utils' functions, and launch_utils itself."""
from modules import launch_utils  # noqa: F401  (installers read launch.launch_utils)
from modules.launch_utils import is_installed, run_pip  # noqa: F401
