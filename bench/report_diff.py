"""Diff two ``report.json`` files with the timings left out: what a refactor must leave unchanged.

    python bench/report_diff.py BEFORE/report.json AFTER/report.json

Prints each differing field (path, before, after) and writes ``bench/results/report_diff.json``; exit 0 when
the reports agree on everything but the fields that measure time or name the run's place and moment
(``TIMING_KEYS``), 1 otherwise. To compare two versions of the tool, run the default job once with each
(``compress distill-and-export --out DIR --json > DIR.json``, each with its own ``COMPRESS_CACHE_DIR``)
and diff the two files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# fields that measure time, or say where and when the run happened: they differ between any two runs
TIMING_KEYS = {"latency_ms", "wall_time_s", "latency_ratio_p50", "latency_ratio", "timing_note", "elapsed_s",
               "out_dir", "peak_memory", "peak_memory_mb", "seconds", "created_utc", "soft_targets_cached",
               "teacher_latency", "load_s", "estimate"}


def differences(before, after, path: str = "") -> list[tuple[str, object, object]]:
    """Every leaf that differs, as (dotted path, before, after), skipping ``TIMING_KEYS`` at any depth."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after)):
            if key in TIMING_KEYS:
                continue
            out += differences(before.get(key, "<absent>"), after.get(key, "<absent>"), f"{path}.{key}" if path else key)
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{path}[{i}]")]
    return [] if before == after else [(path, before, after)]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    before, after = (json.loads(Path(p).read_text()) for p in argv)
    found = differences(before, after)
    print(f"{'field':<60} {'before':>24} {'after':>24}")
    for path, b, a in found:
        print(f"{path:<60} {str(b)[:24]:>24} {str(a)[:24]:>24}")
    print(f"{len(found)} field(s) differ (timings and the run's place left out: {', '.join(sorted(TIMING_KEYS))})")
    out = Path(__file__).with_name("results") / "report_diff.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"before": argv[0], "after": argv[1], "differences": [
        {"field": p, "before": b, "after": a} for p, b, a in found]}, indent=2, default=str))
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
