"""Stand-in for the WebUI's `launch` module, as extension installers import it: it re-exports modules.launch_utils'
functions (is_installed, run_pip) and keeps the module itself as `launch_utils`, like the WebUI 1.10.1's launch.py."""
from modules import launch_utils

is_installed = launch_utils.is_installed
run_pip = launch_utils.run_pip
