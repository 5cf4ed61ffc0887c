"""The provider's batch API (/v1/files + /v1/batches): submit, poll, collect, resume by id."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from workbench.config import LLMConfig
from workbench.files import progress, write_atomic
from workbench.llm import http
from workbench.llm.endpoint import (
    _BadReply,
    _chat_body,
    _completion_rows,
    _endpoint_key,
    _error_rows,
    _headers,
    _query,
    _url,
)
from workbench.llm.limits import _RETRY_STATUS
from workbench.llm.types import Request

log = logging.getLogger(__name__)


class BatchPending(RuntimeError):
    """The provider's batch is still running after `llm.batch_wait_s`: the same call again resumes it."""


class _BatchRunner:
    """Requests through the provider's batch API (OpenAI's /v1/files + /v1/batches): submit one JSONL
    file, poll, collect. The batch's id is written under `cache_dir/batches/` before any waiting,
    keyed by the set of requests, so a re-run (after a crash, or after `BatchPending`) collects the
    same batch instead of paying for a new one. Lines a finished batch left undone (expired, or
    answered with a status worth retrying) go into a new batch, up to `max_retries` times; lines that
    failed for good, or were still undone after that, become error rows. The few calls this makes go
    through the openai SDK."""

    def __init__(self, cfg: LLMConfig, stats: dict, cache_dir: Path):
        import openai  # the SDK only for the batch API

        self.cfg, self.stats = cfg, stats
        key = _endpoint_key(cfg)
        extra = {k: v for k, v in _headers(cfg, key).items() if k.lower() != "authorization"}
        self.client = openai.OpenAI(
            base_url=_url(cfg, cfg.base_url, "base_url"),
            api_key=key,
            max_retries=cfg.max_retries,
            timeout=cfg.timeout_s,
            default_headers=extra or None,
            default_query=_query(cfg) or None,
        )
        self.dir = cache_dir / "batches"

    def run(self, reqs: list[Request], keys: list[str], done: Any, desc: str) -> None:
        left = {k: j for j, k in enumerate(keys)}  # custom_id (the cache key) -> index in reqs
        last_error: dict[str, str] = {}
        for round_ in range(self.cfg.max_retries + 1):
            state_path = self.dir / f"{hashlib.sha256(' '.join(sorted(left)).encode()).hexdigest()[:32]}.json"
            if state_path.exists():
                state = json.loads(state_path.read_text())
                log.info("%s: resuming batch %s (%d requests)", desc, state["batch_id"], len(left))
            else:
                state = self._submit(reqs, left, state_path, desc)
            batch = self._wait(state["batch_id"], state_path, len(left), desc)
            for cid, rows, error, retry in self._collect(batch, reqs, left):
                if error is not None and retry:
                    last_error[cid] = error
                    continue
                j = left.pop(cid)
                done(j, rows if error is None else _error_rows(self.cfg, reqs[j], error))
            state_path.unlink(missing_ok=True)
            if not left:
                return
            self.stats["retries"] += len(left)
            log.info("%s: batch %s left %d requests undone; round %d", desc, batch.id, len(left), round_ + 2)
        for cid, j in left.items():
            done(j, _error_rows(self.cfg, reqs[j], f"batch: not answered after {self.cfg.max_retries + 1} batches: "
                                               f"{last_error.get(cid, 'undone')}"))  # fmt: skip

    def _submit(self, reqs: list[Request], left: dict[str, int], state_path: Path, desc: str) -> dict:
        lines = "".join(
            json.dumps(
                {
                    "custom_id": cid,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": _chat_body(self.cfg, reqs[j], stream=False),
                }  # fmt: skip
            )
            + "\n"
            for cid, j in left.items()
        ).encode()
        f = self.client.files.create(file=("requests.jsonl", lines), purpose="batch")
        batch = self.client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window=self.cfg.batch_window
        )
        state = {"batch_id": batch.id, "input_file_id": f.id, "requests": len(left), "submitted": time.time()}

        write_atomic(state_path, json.dumps(state))
        log.info("%s: submitted batch %s (%d requests)", desc, batch.id, len(left))
        return state

    def _wait(self, batch_id: str, state_path: Path, n: int, desc: str) -> Any:
        t_end = time.monotonic() + self.cfg.batch_wait_s
        with progress(total=n, desc=f"{desc} (batch {batch_id})", unit="req") as bar:
            while True:
                batch = self.client.batches.retrieve(batch_id)
                counts = batch.request_counts
                if counts is not None:
                    bar.update(counts.completed + counts.failed - bar.n)
                if batch.status in ("completed", "failed", "expired", "cancelled"):
                    return batch
                if time.monotonic() > t_end:
                    raise BatchPending(
                        f"llm.batch_api: batch {batch_id} is {batch.status} after waiting llm.batch_wait_s = "
                        f"{self.cfg.batch_wait_s:g}s; its id is kept in {state_path}: run the same command again "
                        "to collect it"
                    )
                time.sleep(self.cfg.batch_poll_s)

    def _collect(self, batch: Any, reqs: list[Request], left: dict[str, int]):
        """(custom_id, rows, error, retry) per line of the batch's output and error files."""
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for line in self.client.files.content(file_id).text.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                cid = item.get("custom_id")
                if cid not in left:
                    continue
                resp, err = item.get("response") or {}, item.get("error")
                status = resp.get("status_code")
                if err or status != 200:
                    code = (err or {}).get("code") or status
                    msg = (err or {}).get("message") or http.error_message(json.dumps(resp.get("body")).encode())
                    retry = code == "batch_expired" or status in _RETRY_STATUS
                    yield cid, None, f"batch line {code}: {msg}", retry
                    continue
                try:
                    yield cid, _completion_rows(self.cfg, reqs[left[cid]], resp.get("body"), None), None, False
                except _BadReply as e:
                    yield cid, None, str(e), True
