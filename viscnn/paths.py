"""Where viscnn finds its files."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def default_models_dir() -> Path:
    """``$VISCNN_MODELS_DIR``, else the repository's ``prepped_models/``."""
    env = os.environ.get("VISCNN_MODELS_DIR")
    return Path(env) if env else REPO_DIR / "prepped_models"
