"""``python -m comfyui_dwm``: see dwm/cli.py."""

import sys

from .cli import main

sys.exit(main())
