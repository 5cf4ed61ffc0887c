import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import SMOKE_RUN, cache_with_models

ROOT = Path(__file__).resolve().parent.parent

# Offline, and one cache for the session's unit tests. Kernels started by runs inherit this.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("JUPYTER_PREFER_ENV_PATH", "1")  # a run's kernels are this environment's
os.environ.setdefault("WORKBENCH_CACHE", str(ROOT / ".cache" / "tests"))

# Loaded by every Python process of the run (the CLI and each stage's kernel) through PYTHONPATH:
# records which stage opened the dataset's test.csv (stages announce themselves in open_stage).
AUDIT = """
import os, sys
_stage = [None]
def _hook(event, args):
    if event == "workbench.stage":
        _stage[0] = args[0]
    elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if path.endswith(os.sep + "test.csv"):
            with open(os.environ["WORKBENCH_AUDIT_LOG"], "a") as f:
                f.write(f"{os.getpid()}\\t{_stage[0]}\\t{path}\\n")
sys.addaudithook(_hook)
"""


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole chain once per session, 00 to 99, on the embedded model with an empty LLM cache
    (the converted model and embeddings shared): every stage notebook is executed here, and only
    here. Returns the runs folder, the command's output and the audit log of test.csv opens."""
    tmp = tmp_path_factory.mktemp("smoke")
    runs_dir, audit = tmp / "runs", tmp / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT)
    env = dict(os.environ, WORKBENCH_CACHE=str(cache_with_models(tmp / "cache")))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(audit), env.get("PYTHONPATH")]))
    env["WORKBENCH_AUDIT_LOG"] = str(audit / "opens.tsv")
    cli = [sys.executable, "-m", "workbench.cli", *SMOKE_RUN, "--runs-dir", str(runs_dir)]
    proc = subprocess.run(cli, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return runs_dir, proc.stdout, audit / "opens.tsv"
