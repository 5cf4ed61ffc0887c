"""A live view of a generating stage in JupyterLab, and the rows streamed to disk as they arrive.

`LiveView(total, stats, jsonl)` is called with each row as it arrives (pass it as `on_row`):
it appends the row to `jsonl` (one JSON object per line, flushed, so a crash keeps what was
paid for) and, at most every `every` seconds, redraws an ipywidgets panel: rows done, tokens/s,
time to first token (median, 90th percentile and a small histogram), errors and retries
(`stats` is the LLM's counter dict). Outside a notebook it only writes the file.
`close()` draws the final state and closes the file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ipywidgets
import numpy as np
from IPython import get_ipython
from IPython.display import HTML, display

from workbench.files import batch_mode


class LiveView:
    def __init__(self, total: int, stats: dict | None = None, jsonl: Path | None = None, every: float = 0.5):
        self.total, self.stats, self.every = total, stats if stats is not None else {}, every
        self.rows: list[dict] = []
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._file = open(jsonl, "w", encoding="utf-8") if jsonl else None  # noqa: SIM115 (closed in close())
        self.widget = None
        try:
            # under the driver the page is saved, and a widget there would need a script from a CDN
            if get_ipython() is not None and not batch_mode():
                self.widget = ipywidgets.HTML(self.html())
                display(self.widget)
        except ImportError:
            pass

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        if self._file:
            self._file.write(json.dumps(row, default=str) + "\n")
            self._file.flush()
        now = time.perf_counter()
        if self.widget is not None and now - self._last >= self.every:
            self._last = now
            self.widget.value = self.html()

    def figures(self) -> dict:
        fresh = [r for r in self.rows if r.get("source") != "intended_label" and not r.get("cached")]
        span = time.perf_counter() - self.t0
        tokens = sum(r.get("completion_tokens") or 0 for r in fresh)
        ttft = np.array([r["ttft_s"] for r in fresh if r.get("ttft_s") is not None], dtype=float)
        return {
            # model candidates, the unit of the LLM's progress bar (the intended-label rows cost nothing)
            "done": sum(r.get("source") != "intended_label" for r in self.rows),
            "total": self.total,
            "cached": sum(bool(r.get("cached")) and r.get("source") != "intended_label" for r in self.rows),
            "errors": sum(r.get("error") is not None for r in self.rows),
            "retries": self.stats.get("retries", 0),
            "tokens_per_s": tokens / span if span > 0 else 0.0,
            "ttft": ttft,
        }

    def html(self) -> str:
        f = self.figures()
        pct = 100 * f["done"] / max(f["total"], 1)
        t = f["ttft"]
        ttft = f"TTFT p50 {np.median(t):.2f} s · p90 {np.quantile(t, 0.9):.2f} s" if len(t) else "TTFT —"
        bars = ""
        if len(t) > 1:
            counts, _ = np.histogram(t, bins=12)
            bars = "".join(
                f'<span style="display:inline-block;width:8px;margin-right:1px;background:#4c78a8;'
                f'height:{2 + 28 * c / max(counts.max(), 1):.0f}px"></span>'
                for c in counts
            )
        return (
            f'<div style="font-family:sans-serif"><b>{f["done"]} / {f["total"]} candidates</b> ({pct:.0f}%) · '
            f"{f['tokens_per_s']:.1f} tokens/s · {f['cached']} from cache · errors {f['errors']} · "
            f"retries {f['retries']}<br>{ttft} "
            f'<span style="display:inline-flex;align-items:flex-end;height:30px">{bars}</span>'
            '<div style="background:#eee;width:300px;height:8px">'
            f'<div style="background:#4c78a8;width:{3 * pct:.0f}px;height:8px"></div></div></div>'
        )

    def close(self) -> None:
        if self.widget is not None:
            self.widget.value = self.html()
        elif get_ipython() is not None and batch_mode():
            display(HTML(self.html()))  # the final state, as static HTML on the saved page
        if self._file:
            self._file.close()
            self._file = None
