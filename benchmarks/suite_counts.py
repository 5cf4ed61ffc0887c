"""The test suite's size: test functions and `assert` statements per file of a tests folder, by
reading the code (pytest's own count of collected items, parametrized cases included, is
`pytest --collect-only -q | tail -1`).

    python benchmarks/suite_counts.py [tests]          # the working tree
    git worktree add /tmp/old <rev> && python benchmarks/suite_counts.py /tmp/old/tests
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def counts(path: Path) -> tuple[int, int]:
    """(test functions, assert statements) of one file; helpers' asserts count, as they check too."""
    tree = ast.parse(path.read_text())
    tests = sum(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_") for n in ast.walk(tree)
    )
    return tests, sum(isinstance(n, ast.Assert) for n in ast.walk(tree))


def main(folder: str = "tests") -> None:
    total = [0, 0]
    for path in sorted(Path(folder).glob("*.py")):
        t, a = counts(path)
        total[0], total[1] = total[0] + t, total[1] + a
        print(f"{path.name:28} {t:4} tests {a:5} asserts")
    print(f"{'all':28} {total[0]:4} tests {total[1]:5} asserts")


if __name__ == "__main__":
    main(*sys.argv[1:])
