import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Offline, and one cache for the whole session: the smoke run warms it and the notebook run
# (nbval) answers its LLM calls from it. Kernels started by nbval inherit this environment.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")  # nbval's kernel is this environment's
os.environ.setdefault("WORKBENCH_CACHE", str(ROOT / ".cache" / "tests"))


@pytest.fixture
def root() -> Path:
    return ROOT
