"""File primitives every layer uses: where the cache lives, atomic writes of files and folders,
reading a JSON file that may not exist yet.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as text_tqdm

ROOT = Path(__file__).resolve().parent.parent  # the checkout: notebooks/, data/, runs/


def project_dir(config: str | Path) -> Path:
    """The folder a config belongs to: its own folder, or that folder's parent when it is named
    `configs` (as in this checkout). Run folders (`runs/`), the notebooks' scratch run and a
    bare dataset name's `data/` resolve from here, so a project kept outside the checkout (or a
    copy of the notebooks) writes into itself, never into the installed package."""
    folder = Path(config).expanduser().resolve().parent
    return folder.parent if folder.name == "configs" else folder


BATCH_ENV = "WORKBENCH_BATCH"  # set by the papermill driver: the notebook is a page, not a live session


def batch_mode() -> bool:
    """True inside a notebook the driver executes: no widgets (a saved page cannot run them), text
    progress bars."""
    return os.environ.get(BATCH_ENV) == "1"


def progress(**kw):
    """A tqdm progress bar: the notebook widget in JupyterLab; under the driver plain text on
    stdout, redrawn at most every 10 s (a widget's state would need a script from a CDN)."""
    if batch_mode():
        return text_tqdm(file=sys.stdout, mininterval=10.0, ascii=True, **kw)
    return auto_tqdm(**kw)


def cache_dir() -> Path:
    """Where LLM calls, embeddings and converted models are cached (WORKBENCH_CACHE overrides)."""
    return Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench")


class PathError(ValueError):
    """A folder the workbench must write to that it cannot: the message names it and who set it."""


def check_writable(folder: Path, what: str) -> Path:
    """`folder`, created if missing, after proving a file can be written in it; PathError naming
    `what` (e.g. "WORKBENCH_CACHE=…") otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PathError(f"{what}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise PathError(f"{what}: cannot write in {folder} ({e.strerror})") from None
    return folder


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temporary file and rename, so `path` never exists half-written. When the write
    fails (disk full, …) the temporary file is removed and the error names `path`; an earlier
    version of `path` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"{path}: not written ({e.strerror or e}); nothing half-written was left") from e


def replace_dir(tmp: Path, out: Path) -> None:
    """Put a folder written in full at `tmp` in place of `out` (e.g. a saved model): `out` is
    either the old folder or the new one, never a half-written one."""
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


class UnreadableFile(ValueError):
    """A file the workbench wrote that no longer reads as what it wrote (truncated, emptied or
    hand-edited): the message names the file."""


def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} when there is no such file; UnreadableFile naming the file
    when it is not a JSON object."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UnreadableFile(f"{path}: not readable as JSON (truncated or edited by hand?): {e}") from None
    if not isinstance(obj, dict):
        raise UnreadableFile(f"{path}: expected a JSON object, found a {type(obj).__name__}")
    if path.name == "provenance.json":
        _check_provenance(obj, path)
    return obj


# the fields of a run's provenance.json its readers walk into, and what each must be
_PROVENANCE = {"stages": (dict, "an object of stage: {status, …}"), "attempts": (list, "a list of {started, …}"),
               "status": (str, "a word"), "parent": (str, "a run folder's path, or null"),
               "patch": (dict, "an object with the accepted edits, or null")}  # fmt: skip


def _check_provenance(obj: dict, path: Path) -> None:
    """A hand-edited provenance.json whose fields are not what the workbench wrote is named, field by
    field, rather than failing later as an AttributeError deep in a reader."""
    for key, (kind, want) in _PROVENANCE.items():
        value = obj.get(key)
        if value is not None and not isinstance(value, kind):
            raise UnreadableFile(f"{path}: {key} is {json.dumps(value)[:60]}; expected {want} (edited by hand?)")
    for name, stage in (obj.get("stages") or {}).items():
        if not isinstance(stage, dict):
            raise UnreadableFile(f"{path}: stages.{name} is {json.dumps(stage)[:60]}; expected {{status, …}}")
    for i, attempt in enumerate(obj.get("attempts") or []):
        if not isinstance(attempt, dict):
            raise UnreadableFile(f"{path}: attempts[{i}] is {json.dumps(attempt)[:60]}; expected {{started, …}}")
