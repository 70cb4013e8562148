"""The manifest of a prepped model, updated atomically after every stage, so an interrupted prep
resumes where it stopped: a stage is skipped when its recorded settings hash still matches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict

import viscnn
from viscnn.io import atomic_write_text
from viscnn.prepped import FORMAT, VERSION


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Manifest:
    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / "manifest.json"
        self.data: Dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault("stages", {})

    def reset_if_incompatible(self, identity: Dict[str, Any]) -> bool:
        """Forget finished stages when the model/data identity changed; True if it did."""
        old = {k: self.data.get(k) for k in identity}
        if self.data.get("format") == FORMAT and old == identity:
            return False
        self.data["stages"] = {}
        return bool(self.data.get("format"))

    def done(self, stage: str, settings_hash: str) -> bool:
        return self.data["stages"].get(stage) == settings_hash

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.data["format"], self.data["version"] = FORMAT, VERSION
        self.data["viscnn_version"] = viscnn.__version__
        atomic_write_text(self.path, json.dumps(self.data, indent=1))

    def mark(self, stage: str, settings_hash: str, **fields: Any) -> None:
        self.data["stages"][stage] = settings_hash
        self.update(**fields)
