"""Rebuild train.csv and test.csv from the aclsum 0.1.2 wheel (PyPI, MIT): `pip download --no-deps
aclsum==0.1.2`, unzip it, then `python data/aclsum/make.py <unzipped>/aclsum/dataset`.

Each row: text (the abstract, its space-tokenized sentences joined and detokenized), label
(`paper_abstract`: ACLSum has no topics), reference (the three aspect summaries, challenge then
approach then outcome, joined), id (the ACL Anthology id). train.csv is the wheel's train and val
splits (150 papers), test.csv its test split (100 papers)."""

import csv
import json
import re
import sys
from pathlib import Path


def detokenize(s: str) -> str:
    s = re.sub(r" ([,.;:!?%)\]])", r"\1", s)
    s = re.sub(r"([(\[]) ", r"\1", s)
    s = re.sub(r" (n't|'s|'re|'ve|'ll|'d)\b", r"\1", s)
    s = re.sub(r"`` | ''", '"', s).replace("``", '"').replace("''", '"')
    return re.sub(r"\s+", " ", s).strip()


def rows(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        s = r["summary"]
        out.append({"id": r["id"], "text": detokenize(" ".join(r["sentences"]["abstract"])), "label": "paper_abstract",
                    "reference": " ".join(s[k].strip() for k in ("challenge", "approach", "outcome"))})
    return out


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, ["text", "label", "reference", "id"])
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    src, here = Path(sys.argv[1]), Path(__file__).resolve().parent
    write(here / "train.csv", rows(src / "train.jsonl") + rows(src / "val.jsonl"))
    write(here / "test.csv", rows(src / "test.jsonl"))
