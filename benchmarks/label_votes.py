"""Can the judge model vote labels? `judge.jury: [judges]` on real rows, against their true labels.

Real Banking77 dev rows (never the test split), `per_label` of each intent, each labelled blind by
every model of roles.judge under the labels' schema (`judge.judge_votes`). Prints how many it got
right, how often it abstained, its commonest answers and the seconds. Run:
`.venv/bin/python benchmarks/label_votes.py [CONFIG] [PER_LABEL]` (defaults: configs/banking77.yaml,
2 per label: 154 rows, about 2.5 minutes on 2 CPU cores with the embedded model).
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from workbench import data, judge
from workbench.config import load_config
from workbench.files import cache_dir
from workbench.llm import LLM


def main(config: str = "configs/banking77.yaml", per_label: int = 2) -> None:
    cfg, _ = load_config(config)
    dev = data.dev_split(cfg).groupby("label").head(per_label).reset_index(drop=True)
    labels = data.labels(cfg)
    llms = {name: LLM(cfg.model_named(name), cache_dir()) for name in dict.fromkeys(cfg.roles.names("judge"))}
    t0 = time.perf_counter()
    votes = judge.judge_votes(cfg, llms, list(dev["text"]), labels)
    seconds = time.perf_counter() - t0
    for juror, p in votes.items():
        said = [labels[r.argmax()] if r.sum() else None for r in p]
        right = sum(s == t for s, t in zip(said, dev["label"]))
        print(f"{juror}: {right} of {len(dev)} right ({right / len(dev):.1%}; chance {1 / len(labels):.1%}), "
              f"{said.count(None)} abstained; commonest {Counter(said).most_common(3)}")  # fmt: skip
    print(f"{len(dev) * len(votes)} calls in {seconds:.0f} s")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or []), *([int(sys.argv[2])] if len(sys.argv) > 2 else []))
