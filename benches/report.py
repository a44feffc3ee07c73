"""Print a pytest-benchmark JSON file as one table: each group's rows as ratios to the pure twin.

Usage: python benches/report.py build/bench.json [--markdown]
(`make bench` runs the benchmarks and this; --markdown prints a table for benches/README.md).
Each benchmark names its implementation in extra_info["impl"] ("rust", "cython", "python", or an
outside baseline such as "ormsgpack"); the ratio column is python-median / this-median, so 10.0
means ten times faster than the pure-Python twin.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:8.2f} {unit}"
    return f"{seconds * 1e9:8.2f} ns"


def rows(data: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    groups: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for bench in data["benchmarks"]:
        impl = bench.get("extra_info", {}).get("impl") or bench["name"]
        groups[bench.get("group") or bench["name"]].append((impl, bench["stats"]["median"]))
    return groups


def markdown(data: dict[str, Any]) -> None:
    print("| group | impl | median | x pure |")
    print("|---|---|---:|---:|")
    for group, entries in sorted(rows(data).items()):
        pure = dict(entries).get("python")
        for impl, median in sorted(entries, key=lambda e: e[1]):
            ratio = f"{pure / median:.2f}" if pure else "-"
            print(f"| {group} | {impl} | {_fmt_time(median).strip()} | {ratio} |")


def main(path: str, as_markdown: bool = False) -> None:
    with open(path) as handle:
        data = json.load(handle)
    if as_markdown:
        markdown(data)
        return
    print(f"{'group':28} {'impl':22} {'median':>12} {'x pure':>8}")
    for group, entries in sorted(rows(data).items()):
        pure = dict(entries).get("python")
        for impl, median in sorted(entries, key=lambda e: e[1]):
            ratio = f"{pure / median:8.2f}" if pure else "       -"
            print(f"{group:28} {impl:22} {_fmt_time(median):>12} {ratio}")
        print()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--markdown"]
    main(args[0] if args else "build/bench.json", as_markdown="--markdown" in sys.argv[1:])
