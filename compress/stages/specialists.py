"""The specialists stage of ``distill-and-export`` (``[specialists]``; Hinton et al. 2015 §5): after the
members, the generalist's confusions are clustered into class subsets, one specialist is trained per subset,
and the generalist's soft targets are replaced by the combination of generalist + specialists, which the
student is distilled from. The report's ``specialists`` section says what was built and what it gave on the
test split (generalist alone vs the combination, with the paired difference's interval; the paper's Table 4
view; the combination's cost vs the student's), all measured in PyTorch on this CPU with the run's threads.

The generalist is the ensemble (default) or one named member; the specialists start from the weights of
the generalist (a member with a torch module; for the ensemble, its first built-in member) unless
``--specialist-arch`` names another architecture, which then trains from scratch. Members without a torch
module (ONNX files, outputs computed elsewhere) can be the generalist: the specialists then need
``--specialist-arch``. Specialists computed elsewhere (``--specialist-outputs``, files written by
``compress soft-targets --specialist``) are read instead of trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from compress import models
from compress.config import RunConfig
from compress.core import metrics
from compress.core.cache import cache_dir, content_key, read_verified, write_entry
from compress.core.errors import InputError
from compress.core.threads import torch_threads
from compress.data import Dataset
from compress.specialists import (Specialist, check_given, cluster_classes, combined, coverage_view,
                                  describe_subsets, train_specialists)
from compress.specialists.outputs import load_specialist
from compress.teachers import Teacher, ensemble_probs
from compress.teachers.soft_targets import load_targets, soft_targets
from compress.teachers.training import TeacherRecipe

COMBINATION_VERSION = 1


@dataclass(frozen=True)
class Generalist:
    """Whose distribution the specialists refine: its name, its members (the ensemble's, or one), its content
    key, the module the specialists start from (None: from scratch), their architecture and input view."""

    name: str
    members: tuple[Teacher, ...]
    fingerprint: str
    start: nn.Module | None
    arch: str
    view: Callable[[np.ndarray], np.ndarray] | None  # the start member's input contract (None: the data's own)

    def probs(self, x: np.ndarray, temperature: float) -> np.ndarray:
        """The generalist's distribution on ``x`` (the mean of its members' softmax(z / T))."""
        return ensemble_probs(list(self.members), x, temperature)

    def transfer_probs(self, data: Dataset, temperature: float) -> np.ndarray:
        """Its distribution on the transfer set: the run's soft-target cache (the ensemble's at the run's T is
        the entry the run has just read); every torchrun process takes part, as in the soft-targets stage."""
        return soft_targets(list(self.members), data.x_train, temperature,
                            content_key(data.fingerprint(), len(data.x_train)))[0]

    @property
    def modules(self) -> list[nn.Module]:
        """What runs to get its distribution (its cost)."""
        return [m.module for m in self.members if m.module is not None]


def _base_name(member: Teacher) -> str:
    return member.name.split("#")[0]


def pick_generalist(cfg: RunConfig, members: list[Teacher]) -> Generalist:
    """The generalist named by ``--generalist`` (``ensemble`` or a member's name) and where specialists start
    (with specialists computed elsewhere, nowhere: they are not trained here)."""
    wanted, arch = cfg.specialists.generalist, cfg.specialists.arch
    if wanted == "ensemble":
        chosen = members
        start_from = next((m for m in members if m.kind == "builtin" and m.module is not None), None)
    else:
        chosen = [m for m in members if m.name == wanted]
        if not chosen:
            raise InputError(f"--generalist {wanted!r}: not a member of this run; expected 'ensemble' or one of "
                             f"{', '.join(repr(m.name) for m in members)}")
        start_from = chosen[0] if chosen[0].module is not None else None
    if arch is not None and (start_from is None or start_from.kind != "builtin" or _base_name(start_from) != arch):
        start_from = None  # another architecture than the generalist's: trained from scratch
    elif cfg.specialists.outputs:
        start_from, arch = None, "computed elsewhere"
    elif arch is None:
        if start_from is None:
            raise InputError(f"--specialists: the generalist {wanted!r} has no torch module to start the specialists "
                             "from; expected --specialist-arch NAME (a registered architecture, trained from scratch)")
        arch = _base_name(start_from) if start_from.kind == "builtin" else f"{start_from.kind}-generalist"
    return Generalist(name=wanted, members=tuple(chosen), arch=arch,
                      fingerprint=content_key("generalist", [m.fingerprint for m in chosen]),
                      start=None if start_from is None else start_from.module,
                      view=None if start_from is None else start_from.view)


def subsets_for(cfg: RunConfig, data: Dataset, probs_train: np.ndarray) -> list[tuple[int, ...]]:
    """The specialists' classes: given by hand (``cat+dog`` entries), else clustered from the generalist."""
    s = cfg.specialists
    if s.subsets:
        return check_given([entry.split("+") for entry in s.subsets], data.labels)
    subsets = cluster_classes(probs_train, s.count, s.min_classes, s.max_classes, seed=cfg.distill.seed)
    if not subsets:
        raise InputError(f"--specialists {s.count}: every cluster of the {data.num_classes} classes had fewer than "
                         f"--specialist-min-classes {s.min_classes}; expected fewer, larger clusters (a smaller count)")
    return subsets


def _combined_targets(key: str, compute: Callable[[], np.ndarray], rows: int) -> tuple[np.ndarray, bool]:
    """The combined soft targets, cached as a checksummed ``.npy`` (a damaged entry is computed again)."""
    path = cache_dir("soft-targets") / f"specialists-{key[:32]}.npy"
    cached = read_verified(path, lambda p: load_targets(p, rows))
    if cached is not None:
        return cached, True
    targets = compute().astype(np.float32)
    write_entry(path, lambda tmp: np.save(tmp, targets, allow_pickle=False))
    return targets, False


def _trained(cfg: RunConfig, data: Dataset, generalist: Generalist, subsets: list[tuple[int, ...]],
             recipe: TeacherRecipe, progress, rank: int, world: int) -> list[Specialist]:
    """Every subset's specialist, trained (or from the cache); under ``torchrun`` each process trains its
    share, then all read every one from the cache after a barrier."""
    task = progress.add_task(f"specialists ({len(subsets)})", total=len(subsets))

    def train(rank_: int, world_: int) -> list[Specialist]:
        return train_specialists(subsets, data, arch=generalist.arch, generalist=generalist.start,
                                 generalist_key=generalist.fingerprint, recipe=recipe, seed=cfg.distill.seed,
                                 device=cfg.distill.train_device, rank=rank_, world=world_, view=generalist.view,
                                 on_specialist=lambda i, subset: progress.update(task, completed=i))

    if world > 1:
        train(rank, world)
        torch.distributed.barrier()
    specialists = train(0, 1)  # every one of them (from the cache, where another process trained it)
    progress.update(task, completed=len(subsets))
    return specialists


def specialist_targets(cfg: RunConfig, data: Dataset, members: list[Teacher], recipe: TeacherRecipe, progress,
                       rank: int = 0, world: int = 1) -> tuple[np.ndarray, dict, Generalist, list[Specialist]]:
    """(the student's soft targets from generalist + specialists, the report section so far, the generalist,
    the specialists). Specialists train in parallel under ``torchrun`` (one share per process); process 0
    computes the combination and the others read it from the cache."""
    generalist = pick_generalist(cfg, members)
    temperature, s = cfg.distill.temperature, cfg.specialists
    probs_train = np.asarray(generalist.transfer_probs(data, 1.0))
    if s.outputs:
        specialists = [load_specialist(path, data) for path in s.outputs]
        subsets = [sp.classes for sp in specialists]
    else:
        subsets = subsets_for(cfg, data, probs_train)
        specialists = _trained(cfg, data, generalist, subsets, recipe, progress, rank, world)
    key = content_key("specialist-targets", COMBINATION_VERSION, generalist.fingerprint,
                      [sp.fingerprint for sp in specialists], s.top_n, float(temperature), data.fingerprint())
    probs_t = np.asarray(generalist.transfer_probs(data, temperature))  # every torchrun process takes part
    compute = lambda: combined(probs_t, specialists, data.x_train, temperature, s.top_n)[0]  # noqa: E731
    if rank > 0:  # process 0 computes and writes the combination; the others read it
        torch.distributed.barrier()
    targets, cached = _combined_targets(key, compute, len(data.x_train))
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    section = {"generalist": generalist.name, "arch": generalist.arch,
               "started_from_generalist": generalist.start is not None, "top_n": s.top_n,
               "given_by_hand": bool(s.subsets), "computed_elsewhere": [Path(f).name for f in s.outputs or []],
               "targets_key": key, "targets_cached": cached,
               "subsets": [dict(d, specialist_training=sp.curve, dustbin_correction=round(sp.correction, 4))
                           for d, sp in zip(describe_subsets(subsets, data.labels, probs_train, data.y_train), specialists)]}
    return targets, section, generalist, specialists


def measure(section: dict, generalist: Generalist, specialists: list[Specialist], *, data: Dataset,
            student: nn.Module, threads: int, runs: int) -> dict:
    """The section completed with the test split: generalist vs combination accuracy (the student's is in the
    report's rows), the paper's Table 4 view, and the combination's MACs and PyTorch latency vs the student's."""
    probs_test = generalist.probs(data.x_test, 1.0)
    q, on = combined(probs_test, specialists, data.x_test, 1.0, section["top_n"])
    before, after = probs_test.argmax(1), q.argmax(1)
    return {**section, "test_rows": int(len(data.y_test)),
            "generalist_accuracy": float((before == data.y_test).mean()),
            "combined_accuracy": float((after == data.y_test).mean()),
            "combined_vs_generalist": metrics.paired_difference(before == data.y_test, after == data.y_test),
            "active_per_row": round(float(on.sum(1).mean()), 3),
            "table4": coverage_view(data.y_test, [tuple(d["indices"]) for d in section["subsets"]], before, after),
            "cost": _cost(generalist, specialists, on, data=data, student=student, threads=threads, runs=runs)}


def _cost(generalist: Generalist, specialists: list[Specialist], on: np.ndarray, *, data: Dataset,
          student: nn.Module, threads: int, runs: int) -> dict:
    """The combination's MACs per row (the generalist's + the active specialists') and PyTorch latency beside
    the student's; None where a part has no module here (computed elsewhere), with the reason."""
    with torch_threads(threads), torch.inference_mode():
        student_latency = metrics.measure_latency(lambda b: student(torch.from_numpy(b)), data.x_test, runs=runs)
    cost = {"runtime": f"torch {torch.__version__}", "threads": threads, "student_latency_ms": student_latency,
            "student_macs": models.count_macs(student, data.input_shape)}
    elsewhere = sum(m.module is None for m in generalist.members) + sum(sp.module is None for sp in specialists)
    if elsewhere:
        return {**cost, "combination_macs_per_row": None, "combination_latency_ms": None,
                "note": f"the combination's cost is not measured: {elsewhere} of its parts have no PyTorch module "
                        "here (outputs computed elsewhere, or a model file run by another runtime)"}
    spec_macs = [models.count_macs(sp.module, data.input_shape) for sp in specialists]
    gen_macs = sum(models.count_macs(m, data.input_shape) for m in generalist.modules)
    modules = [*generalist.modules, *(sp.module for sp in specialists)]
    with torch_threads(threads), torch.inference_mode():
        combination_latency = metrics.measure_latency(lambda b: [m(torch.from_numpy(b)) for m in modules], data.x_test, runs=runs)
    return {**cost, "combination_latency_ms": combination_latency,
            "combination_macs_per_row": int(gen_macs + sum(on[:, m].mean() * spec_macs[m] for m in range(len(spec_macs)))),
            "note": "latency: the generalist's modules and every specialist run on each row (the active ones are "
                    "known only after the generalist), batch 1"}
