"""What ``compress search`` chooses, and ``search.json``: the fastest candidate meeting every budget (the
smallest where latency is not measured here), latencies within the timing noise counting as a tie broken
by accuracy then size; the Pareto flags, the closest miss when nothing fits, and a sentence saying why."""

from __future__ import annotations

from compress.core.pareto import on_front
from compress.export.registry import TARGETS
from compress.search.measure import INT8_SLOWER, Context, accuracy_floor, budget_limit, device_factor
from compress.search.space import SearchSpace, Trial


TIE_TOLERANCE = 0.05  # two p50s closer than 5% are one speed on a shared machine (measured noise is larger)


CLOSEST_TIE = 0.2  # misses of a budget within 20% of the smallest miss: the cheapest of them is named closest


def latency_ties(a: dict, b: dict) -> bool:
    """Whether two candidates' latencies are one speed: their re-timed intervals (round p50s, fastest to
    slowest) overlap, or their p50s lie within ``TIE_TOLERANCE`` of each other."""
    la, lb = a["latency_ms"], b["latency_ms"]
    if la is None or lb is None:
        return la is None and lb is None
    ia, ib = a.get("latency_interval_ms"), b.get("latency_interval_ms")
    if ia and ib and ia[0] <= ib[1] and ib[0] <= ia[1]:
        return True
    return abs(la - lb) <= TIE_TOLERANCE * min(la, lb)


def best_feasible(rows: list[dict]) -> dict | None:
    """The candidate the search would choose now: meets every budget; the fastest, where candidates whose
    latency ties the fastest's (``latency_ties``: a difference within the timing noise is no difference)
    are ranked by validation accuracy, then size, then MACs (where latency is not measured here: smallest,
    then fewest MACs, then most accurate)."""
    ok = [r for r in rows if r["status"] == "measured" and r["meets_budgets"]]
    if not ok:
        return None
    fastest = min(ok, key=lambda r: (r["latency_ms"] if r["latency_ms"] is not None else float("inf"), r["size_kb"]))
    if fastest["latency_ms"] is None:
        return min(ok, key=lambda r: (r["size_kb"], r["macs"], -r["val_accuracy"]))
    tied = [r for r in ok if latency_ties(r, fastest)]
    return min(tied, key=lambda r: (-r["val_accuracy"], r["size_kb"], r["macs"], r["latency_ms"]))


def closest(ctx: Context, rows: list[dict]) -> dict | None:
    """Where nothing fits: the candidate whose worst broken budget is broken the least (relative to its
    limit), with what it breaks. Trained candidates count with their measurements; candidates skipped by
    their untrained export count with its latency and size (their accuracy was never measured)."""
    def values(r: dict) -> dict:
        probe = r.get("probe") or {}
        return {"max_accuracy_drop": r["accuracy_drop"], "latency_ms": r["latency_ms"] or probe.get("latency_ms"),
                "size_kb": r["size_kb"] or probe.get("size_kb"), "peak_memory_mb": r["peak_memory_mb"]}

    def excess(r: dict) -> float:
        worst = 0.0
        for key, value in values(r).items():
            limit = budget_limit(ctx, key)
            if limit is not None and value is not None and value > limit:
                worst = max(worst, (value - limit) / max(abs(limit), 1e-9))
        return worst

    pool = [r for r in rows if r["status"] == "measured"] or [r for r in rows if r.get("probe")]
    if not pool:
        return None
    least = min(excess(r) for r in pool)  # misses within CLOSEST_TIE of the least are one miss (timing noise):
    best = min((r for r in pool if excess(r) <= least * (1 + CLOSEST_TIE)), key=lambda r: (r["macs"], excess(r)))
    return {"id": best["id"], "status": best["status"], "breaks": best["breaks"] or [best["note"]]}


OBJECTIVES = [("val_accuracy", "max"), ("latency_ms", "min"), ("size_kb", "min")]


def summarize(ctx: Context, plan: list[Trial], rows: dict, counts: dict, space: SearchSpace, elapsed_s: float) -> dict:
    """``search.json``: every candidate, the Pareto flags, the choice and why (or the closest miss)."""
    flat = [r for t in plan for r in rows[t.key]]
    measured = [r for r in flat if r["status"] == "measured"]
    objectives = OBJECTIVES if all(r["latency_ms"] is not None for r in measured) else [OBJECTIVES[0], OBJECTIVES[2]]
    for r, flag in zip(measured, on_front(measured, objectives)):
        r["pareto"] = flag
    chosen = best_feasible(flat)
    counts = {**counts, "pruned": len({r["student"] + str(r["temperature"]) + str(r["alpha"])
                                       for r in flat if r["status"] == "pruned"})}
    target = TARGETS[ctx.cfg.export.target]
    latency_label = (f"host p50, batch 1, {ctx.cfg.device.threads} thread(s), measured on this machine in the target "
                     f"runtime (not the device)" if measured and measured[0]["latency_ms"] is not None
                     else f"not measured here ({target.name} does not run on this machine)")
    return {"schema": "compress.search/1", "target": ctx.cfg.export.target,
            "runtime": measured[0].get("runtime") if measured else None, "threads": ctx.cfg.device.threads,
            "latency_label": latency_label, "device_factor": device_factor(ctx),
            "reference": {"name": "teacher ensemble", "val_accuracy": ctx.reference_acc,
                          "validation_samples": int(len(ctx.split.y_test)),
                          "training_samples": int(len(ctx.split.y_train))},
            "budgets": {k: float(v["limit"]) for k, v in ctx.budgets.items()},
            "budget_sources": {k: v["source"] for k, v in ctx.budgets.items()},
            "accuracy_floor": accuracy_floor(ctx), "candidates": flat,
            "chosen": None if chosen is None else chosen["id"], "why": why(ctx, chosen, flat),
            "closest": None if chosen is not None else closest(ctx, flat),
            "elapsed_s": round(elapsed_s, 1), "time_budget_min": ctx.options.time_budget_min,
            **counts, "space_notes": list(space.notes), "epochs": ctx.epochs}


def why(ctx: Context, chosen: dict | None, rows: list[dict]) -> str:
    feasible = [r for r in rows if r["status"] == "measured" and r["meets_budgets"]]
    if chosen is None:
        return "no measured candidate meets every budget"
    if chosen["latency_ms"] is not None:
        tied = [r for r in feasible if r is not chosen and latency_ties(r, chosen)]
        basis = "the fastest" + (f" (tied on latency with {len(tied)} other(s): the most accurate, then smallest, of "
                                 "them)" if tied else "")
    else:
        basis = "the smallest (latency is not measured here)"
    scope = (f"of the {len(feasible)} candidate(s) meeting every budget" if ctx is None or ctx.budgets else
             f"of the {len(feasible)} candidate(s): NO budget is in force (no --max-* flag, no profile budget), so "
             "the choice optimizes latency alone, with accuracy only breaking ties; give --max-accuracy-drop to "
             "bound the accuracy")
    text = (f"{chosen['id']}: {basis} {scope} (validation accuracy {100 * chosen['val_accuracy']:.2f}%, "
            f"{chosen['accuracy_drop']:.2f} points below the ensemble)")
    if chosen["scheme"] == "none":  # why not the same student in int8: it was measured, so say what it showed
        for r in rows:
            if r["student"] != chosen["student"] or not r["scheme"].startswith("int8") or r["status"] != "measured":
                continue
            slower = r["latency_ms"] is not None and r["latency_ms"] > chosen["latency_ms"]
            verdict = ("breaks " + "; ".join(r["breaks"]) if r["breaks"] else "meets the budgets") + (
                f" and timed {r['latency_ms']:.3f} ms, slower than float's {chosen['latency_ms']:.3f} ms on this host "
                f"({INT8_SLOWER})" if slower else "")
            text += f"; {r['scheme']} of this student was measured too: it {verdict}"
    return text
