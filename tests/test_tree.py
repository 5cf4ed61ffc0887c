"""The README's layout block lists every file of the package, notebooks, configs and tests."""

import re

LISTED_DIRS = ["workbench", "notebooks", "configs", "tests"]


def readme_tree(root) -> set[str]:
    text = (root / "README.md").read_text()
    block = re.search(r"## Layout\n.*?```\n(.*?)```", text, re.S).group(1)
    paths, current = set(), ""
    for line in block.splitlines():
        if not line.strip():
            continue
        name = line.split()[0]
        if not line.startswith(" "):
            current = name if name.endswith("/") else ""
            paths.add(name.rstrip("/"))
        else:
            paths.add(current + name)
    return paths


def test_readme_tree_matches_files(root):
    listed = readme_tree(root)
    missing = sorted(p for p in listed if not (root / p).exists())
    assert not missing, f"README lists paths that do not exist: {missing}"
    on_disk = {
        f"{d}/{p.name}" for d in LISTED_DIRS for p in (root / d).iterdir() if p.is_file() and not p.name.startswith(".")
    }
    unlisted = sorted(on_disk - listed)
    assert not unlisted, f"files missing from the README's layout: {unlisted}"
