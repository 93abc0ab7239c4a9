"""Where the recorded exchange fixtures are: ``$MARKETPRISM_FIXTURES``, else ``../shared/fixtures`` beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    override = os.environ.get("MARKETPRISM_FIXTURES")
    return (Path(override).expanduser() if override else REPO.parent / "shared" / "fixtures").resolve()


FIX = fixtures_root()
