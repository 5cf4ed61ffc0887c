"""Does the judge tell a right label from a wrong one? AUC of the rubric judge's correctness score.

Real Banking77 dev rows (never the test split), each judged twice: under its true label and under
a random wrong one. AUC 0.5 = no signal. Run: `.venv/bin/python benchmarks/judge_signal.py [CONFIG] [N] [FIELD=VALUE ...]`
(defaults: configs/banking77.yaml, 120 rows; about 1 minute on 2 CPU cores with the embedded model).
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from workbench import data, judge
from workbench.config import load_config
from workbench.files import cache_dir
from workbench.llm import LLM


def main(config: str = "configs/banking77.yaml", n: int = 120, overrides: list[str] | None = None) -> None:
    cfg, _ = load_config(config, overrides)
    dev = data.dev_split(cfg).sample(n, random_state=0).reset_index(drop=True)
    labels = data.labels(cfg)
    rng = np.random.default_rng(0)
    wrong = [rng.choice([x for x in labels if x != t]) for t in dev["label"]]
    rows = pd.DataFrame(
        {
            "id": [f"true{i}" for i in range(n)] + [f"wrong{i}" for i in range(n)],
            "text": list(dev["text"]) * 2,
            "label": list(dev["label"]) + wrong,
            "keep_prompts": True,
        }
    )
    y = [1] * n + [0] * n
    llm = LLM(cfg.llm, cache_dir())
    print(f"| model | anchor | juror (wording) | AUC, {n} true vs {n} wrong labels |\n| --- | --- | --- | --- |")
    for anchor in (False, True):
        j = cfg.judge.model_copy(update={"rubric": ["correctness"], "jurors": 2, "jury": [], "anchor": anchor})
        out, judgments = judge.judge_rows(
            cfg.model_copy(update={"judge": j}), rows, pd.DataFrame(), data.seeds(cfg), llm, tempfile.gettempdir()
        )
        for juror in (0, 1):
            s = judgments.loc[judgments["juror"] == juror, "score"].to_numpy()
            print(f"| {llm.identity} | {anchor} | {juror} | {roc_auc_score(y, s):.3f} |")
        alpha = judge.judge_alpha(judgments)["alpha"].iloc[0]
        print(
            f"| {llm.identity} | {anchor} | mean of both (alpha {alpha:.2f}) | {roc_auc_score(y, out['judge_score']):.3f} |"
        )


if __name__ == "__main__":
    main(*sys.argv[1:2], *(int(a) for a in sys.argv[2:3]), sys.argv[3:])
