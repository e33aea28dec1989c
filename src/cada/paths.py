"""Where cada keeps converted models and other caches: ``$CADA_HOME`` or the user's cache directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cada_home() -> Path:
    home = os.environ.get("CADA_HOME")
    path = Path(home).expanduser() if home else Path(platformdirs.user_cache_dir("cada"))
    path.mkdir(parents=True, exist_ok=True)
    return path
