"""CI gates: compare what ``compress validate`` measured with a device's budgets.

``check_budgets(measured, budgets) -> list[check]``.

measured: ``accuracy_drop`` (points: reference accuracy minus the artifact's, in percent), ``latency_ms``
(host p50, batch 1), ``size_kb`` (1 kB = 1024 bytes), ``peak_memory_mb`` (MiB); for a keyword spotter
``false_accepts_per_hour``, ``false_reject_rate`` (a share) and ``macs_per_second`` (of audio); a value that is missing or
None was not measured here, and ``notes[key]`` may say why (e.g. "Core ML does not run on Linux").

budgets: budget key (``max_accuracy_drop``, ``latency_ms``, ``size_kb``, ``peak_memory_mb``) -> either a
number (set explicitly by the user) or ``{"limit": number, "source": "pixel-class", "explicit": bool}``.

A budget passes when the value is <= the limit. A budget whose value was not measured here:
  * explicitly set by the user (a ``--max-...`` flag or keyword): FAILS, detail "not measured here: why".
    Asking for a gate that cannot be evaluated must not turn CI green silently.
  * from a device profile: skipped (passed, ``checked`` False) with a note, because a profile's budgets
    cover every runtime it names and some (Core ML latency on Linux) can only be measured on the device.
"""

from __future__ import annotations

# budget key -> (measured key, what, unit)
BUDGET_KEYS = {
    "max_accuracy_drop": ("accuracy_drop", "accuracy drop", "points"),
    "latency_ms": ("latency_ms", "latency p50", "ms"),
    "size_kb": ("size_kb", "size", "kB"),
    "peak_memory_mb": ("peak_memory_mb", "peak memory", "MB"),
    # keyword spotting (the streaming student on the test streams)
    "max_false_accepts_per_hour": ("false_accepts_per_hour", "false accepts per hour", "/h"),
    "max_false_reject_rate": ("false_reject_rate", "false-reject rate", "of keywords"),
    "max_macs_per_second": ("macs_per_second", "MACs per second of audio", "MAC/s"),
}
FLAGS = {"max_accuracy_drop": "--max-accuracy-drop", "latency_ms": "--max-latency-ms", "size_kb": "--max-size-kb",
         "peak_memory_mb": "--max-peak-memory-mb", "max_false_accepts_per_hour": "--max-false-accepts-per-hour",
         "max_false_reject_rate": "--max-false-reject-rate", "max_macs_per_second": "--max-macs-per-second"}


def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _spec(key: str, value) -> dict:
    if isinstance(value, dict):
        return {"limit": float(value["limit"]), "source": value.get("source") or FLAGS.get(key, key),
                "explicit": bool(value.get("explicit", False))}
    return {"limit": float(value), "source": FLAGS.get(key, key), "explicit": True}


def check_budgets(measured: dict, budgets: dict, *, notes: dict | None = None) -> list[dict]:
    """One check per budget: name, budget, limit, value, unit, passed, checked, source, explicit, detail."""
    notes = notes or {}
    checks = []
    for key, raw in budgets.items():
        if raw is None:
            continue
        if key not in BUDGET_KEYS:
            raise KeyError(f"unknown budget {key!r}; expected one of {sorted(BUDGET_KEYS)}")
        spec = _spec(key, raw)
        mkey, what, unit = BUDGET_KEYS[key]
        value = measured.get(mkey)
        limit, source = spec["limit"], spec["source"]
        check = {"name": what, "budget": key, "limit": limit, "value": value, "unit": unit, "source": source,
                 "explicit": spec["explicit"]}
        if value is None:
            why = notes.get(mkey) or "no measurement"
            check["checked"] = False
            if spec["explicit"]:
                check.update(passed=False, detail=f"{what} not measured here ({why}); budget {_num(limit)} {unit} "
                                                  f"({source}) cannot be checked")
            else:
                check.update(passed=True, detail=f"{what} not checked: not measured here ({why}); budget "
                                                 f"{_num(limit)} {unit} from profile {source} skipped")
        else:
            ok = value <= limit
            op = "<=" if ok else ">"
            check.update(checked=True, passed=bool(ok),
                         detail=f"{what} {_num(value)} {unit} {op} budget {_num(limit)} {unit} ({source})")
        checks.append(check)
    return checks


def breaches(checks: list[dict]) -> list[str]:
    """One line per failed budget, for CI logs."""
    return [c["detail"] for c in checks if not c["passed"]]


def gather(profile: dict | None, explicit: dict) -> dict:
    """The budgets in force: the profile's, each overridden by a limit the user set explicitly."""
    budgets: dict = {}
    if profile:
        for key, value in profile["budgets"].items():
            budgets[key] = {"limit": value, "source": profile["name"], "explicit": False}
    for key, value in explicit.items():
        if value is not None:
            budgets[key] = {"limit": value, "source": FLAGS[key], "explicit": True}
    return budgets
