"""Teacher members and the ensemble teacher.

A member is given as one of (``TEACHER_FORMATS``, chosen by the spec's form):
  builtin      a registry name from ``compress.models`` ("cnn"), trained on the fly and cached
  torchscript  a ``.ts`` / ``.torchscript`` / ``.pt`` TorchScript archive
  pt2          a ``torch.export`` ``.pt2`` archive
  onnx         an ``.onnx`` file, run through ONNX Runtime
  factory      ``package.module:function=weights.pt`` (a Python factory plus a state_dict)

Every member is reduced to the same thing: a function from a float32 batch to logits, a content
fingerprint (so soft-target caches invalidate when the teacher changes) and, where available, the torch
module (for export, parameter and MAC counts).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from compress import models
from compress.contracts import Contract, make_contract, member_view, split_spec
from compress.core.cache import content_key, file_sha256, state_dict_sha256
from compress.core.errors import InputError
from compress.core.pt2_check import check_pt2_archive
from compress.core.registry import Registry
from compress.train import fit, pick_device, predict_logits
from compress.soft_targets import ensemble_probs, soft_targets, softmax  # noqa: E402,F401  (re-exported)



@dataclass
class Teacher:
    """One ensemble member, whatever its origin."""

    name: str
    kind: str
    logits: Callable[[np.ndarray], np.ndarray]
    fingerprint: str
    module: nn.Module | None = None
    artifact: Path | None = None  # a file one registered target runs (the member has no torch module)
    cached: bool = False
    input_shape: tuple | None = None  # per-sample input shape the member declares (None entries: dynamic), if known
    output: str = "logits"  # what ``logits`` returns: "logits", "probs", or "label" (one-hot; a black-box member)
    contract: Contract = field(default_factory=Contract)  # what the member was trained on (compress.contracts)
    view: Callable[[np.ndarray], np.ndarray] | None = None  # data samples -> the member's own input (None: as is)
    recorded: dict | None = None  # the contract the member's file records about its training data, if any
    training: dict | None = None  # a built-in member's training curve (compress.teacher_training)
    file_params: int | None = None  # the weight count a model file declares (Backend.model_facts)

    def own_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` (the data's samples, as the student sees them) in the member's own input contract."""
        return x if self.view is None else self.view(x)

    @property
    def params(self) -> int | None:
        if self.module is not None:
            return models.count_params(self.module)
        return self.file_params


def _module_teacher(name: str, kind: str, module: nn.Module, fingerprint: str, cached: bool = False) -> Teacher:
    module = module.eval().cpu()
    return Teacher(name, kind, lambda x: predict_logits(module, x), fingerprint, module=module, cached=cached)


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"teacher {str(path)!r}: file not found; expected {what}")
    return path


def _reason(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception, cut to its first sentence when long (messages stay one short line)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if len(text) > limit:
        text = text.split(". ")[0]
        text = text if len(text) <= limit else text[:limit - 3] + "..."
    return text


def _check_finite_weights(spec: str, module: nn.Module) -> None:
    """A member whose parameters or buffers hold NaN/inf is a broken checkpoint: name the tensor."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in named:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(f"teacher {spec!r}: weight {name!r} holds {bad} NaN or infinite value(s); "
                             "expected finite weights (a diverged or corrupted checkpoint?)")


def load_torchscript(spec: str, **_) -> Teacher:
    path = _require_file(Path(spec), "a TorchScript archive")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise InputError(f"teacher {spec!r}: not a loadable TorchScript archive ({_reason(exc)}); "
                         "expected a file written by torch.jit.save") from None
    _check_finite_weights(spec, module)
    return _module_teacher(path.name, "torchscript", module, file_sha256(path))


def load_pt2(spec: str, **_) -> Teacher:
    path = _require_file(Path(spec), "a torch.export .pt2 archive")
    check_pt2_archive(spec, path)  # torch.export.load unpickles some payloads with a full unpickler: refuse those
    try:
        module = torch.export.load(str(path)).module()
    except Exception as exc:
        raise InputError(f"teacher {spec!r}: not a loadable torch.export archive ({_reason(exc)}); "
                         "expected a file written by torch.export.save") from None
    _check_finite_weights(spec, module)
    cpu = torch.device("cpu")

    def logits(x: np.ndarray) -> np.ndarray:
        try:
            return predict_logits(module, x, device=cpu, set_eval=False)
        except (AssertionError, RuntimeError):  # exported with a static batch size: one sample at a time
            return np.concatenate([predict_logits(module, x[i:i + 1], device=cpu, set_eval=False) for i in range(len(x))])

    return Teacher(path.name, "pt2", logits, file_sha256(path), module=module)


def load_onnx(spec: str, **_) -> Teacher:
    """A model file that its target's runtime runs and whose format can describe itself (an ``.onnx`` from
    any producer): run in that runtime, with what the file declares (``Backend.model_facts``)."""
    from compress.export.registry import by_suffix

    path = _require_file(Path(spec), "an ONNX model")
    backend = by_suffix(path)
    try:
        runner = backend.open(path, threads=0)
    except InputError as exc:
        reason = str(exc).partition(": not a loadable ONNX model ")[2] or f"({exc})"
        raise InputError(f"teacher {spec!r}: not a loadable ONNX model {reason}; expected an .onnx file "
                         "(e.g. from torch.onnx.export)") from None
    facts = backend.model_facts(path) if backend.model_facts is not None else {}
    if facts.get("nonfinite"):
        name, bad = facts["nonfinite"]
        raise InputError(f"teacher {spec!r}: weight {name!r} holds {bad} NaN or infinite value(s); "
                         "expected finite weights (a diverged or corrupted checkpoint?)")

    def logits(x: np.ndarray) -> np.ndarray:
        return np.concatenate([runner.predict(x[i:i + 256]) for i in range(0, len(x), 256)])

    return Teacher(path.name, backend.name, logits, file_sha256(path), artifact=path,
                   input_shape=facts.get("input_shape"), recorded=_recorded_contract(facts.get("metadata") or {}),
                   file_params=facts.get("params"))


def _recorded_contract(props: dict) -> dict | None:
    """What a model file says about its own inputs: an ``input_contract`` JSON table in its metadata (any
    producer can write it), or the ``normalization`` this tool writes into its exports."""
    import json

    for key in ("input_contract", "normalization"):
        try:
            table = json.loads(props[key]) if key in props else None
        except ValueError:
            continue
        if isinstance(table, dict):
            return table if key == "input_contract" else {k: table[k] for k in ("scale", "mean", "std") if k in table}
    return None


def load_folder(spec: str, **_) -> Teacher:
    """A folder this tool wrote (``dist/<name>/``): its model in its own runtime, and its manifest's
    normalization as the member's recorded input contract."""
    import json

    from compress.export.registry import by_suffix

    folder = Path(spec)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        artifact = folder / manifest["artifact"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"teacher {spec!r}: not a folder written by compress ({_reason(exc)}); expected its "
                         "manifest.json and model") from None
    backend = by_suffix(artifact)
    if backend is None or not artifact.exists():
        raise InputError(f"teacher {spec!r}: the manifest's model {artifact.name!r} is missing or of no known target")
    runner = backend.open(artifact, threads=0)

    def logits(x: np.ndarray) -> np.ndarray:
        return np.concatenate([runner.predict(x[i:i + 256]) for i in range(0, len(x), 256)])

    norm = manifest.get("normalization") or {}
    return Teacher(folder.name, "folder", logits, file_sha256(artifact), artifact=artifact,
                   recorded={k: norm[k] for k in ("scale", "mean", "std") if k in norm} or None)


def load_factory(spec: str, **_) -> Teacher:
    target, _, weights = spec.partition("=")
    module_name, _, func_name = target.partition(":")
    if not weights:
        raise InputError(f"teacher {spec!r}: expected 'package.module:function=weights.pt' (state_dict path missing)")
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"teacher {spec!r}: cannot import factory {target!r} ({exc})") from None
    path = _require_file(Path(weights), "a state_dict saved with torch.save")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        module = factory()
        module.load_state_dict(state)
    except Exception as exc:
        raise InputError(f"teacher {spec!r}: weights do not load into {target}() ({_reason(exc)}); "
                         f"expected a state_dict of the model {target}() builds") from None
    _check_finite_weights(spec, module)
    return _module_teacher(Path(weights).name, "factory", module, state_dict_sha256(module.state_dict()))


def train_builtin(name: str, data, *, epochs: int, seed: int, device: str | None = None,
                  jitter_pixels: int = 0, on_epoch=None, recipe=None) -> Teacher:
    """Train registry model ``name`` on the labelled training split, or reuse the cached weights: see
    ``compress.teacher_training`` (validation split, early stopping, schedule, augmentation, curve)."""
    from compress.teacher_training import TeacherRecipe, train_builtin_module
    from compress.train import Augment

    recipe = recipe or TeacherRecipe(epochs=epochs, augment=Augment(crop=jitter_pixels))
    module, curve, cached = train_builtin_module(name, data, recipe=recipe, seed=seed, device=device,
                                                 on_epoch=on_epoch)
    member = _module_teacher(name, "builtin", module, state_dict_sha256(module.state_dict()), cached=cached)
    member.training = curve
    return member


def load_precomputed(spec: str, **kwargs) -> Teacher:
    """Outputs computed elsewhere (``compress soft-targets`` on a bigger machine): see ``compress.precomputed``."""
    from compress.precomputed import load_precomputed as load

    return load(spec, **kwargs)


TEACHER_FORMATS = Registry("teacher format", "--teacher")  # name -> loader(spec, **kwargs) -> Teacher
TEACHER_FORMATS.register("torchscript", load_torchscript)
TEACHER_FORMATS.register("pt2", load_pt2)
TEACHER_FORMATS.register("onnx", load_onnx)
TEACHER_FORMATS.register("factory", load_factory)
TEACHER_FORMATS.register("precomputed", load_precomputed)
TEACHER_FORMATS.register("folder", load_folder)
# file suffix -> the format that reads it (a built-in name, a run folder and module:function=weights come first)
SUFFIX_FORMATS = {".onnx": "onnx", ".pt2": "pt2", ".npz": "precomputed", ".npy": "precomputed",
                  **dict.fromkeys((".ts", ".torchscript", ".pt", ".pth", ".jit"), "torchscript")}


def teacher_format(spec: str) -> str:
    """Which loader a teacher spec needs: a registry name, a file by suffix, or a factory."""
    if models.is_known(spec):
        return "builtin"
    if Path(spec).is_dir() and (Path(spec) / "manifest.json").is_file():
        return "folder"
    if ":" in spec and "=" in spec:
        return "factory"
    fmt = SUFFIX_FORMATS.get(Path(spec).suffix.lower())
    if fmt is not None:
        return fmt
    raise InputError(
        f"teacher {spec!r}: not a built-in model ({models.why_unknown(spec)}), nor a .ts/.pt/.pt2/.onnx file, "
        "nor outputs computed elsewhere (.npz from compress soft-targets), nor 'module:function=weights.pt'"
    )


def check_members(members: list[Teacher], sample: np.ndarray, num_classes: int) -> None:
    """Members must agree on the class count (with each other and the data) and give finite logits."""
    from compress.precomputed import MissingOutputs  # here: compress.precomputed builds on this module
    seen: tuple[str, int] | None = None
    for m in members:
        declared = m.input_shape
        data_shape = tuple(m.own_input(sample).shape[1:])
        if declared is not None and (len(declared) != len(data_shape)
                                     or any(d is not None and d != s for d, s in zip(declared, data_shape))):
            shown = tuple("?" if d is None else d for d in declared)
            fed = "the data's samples have" if m.view is None else "its input contract gives"
            raise InputError(f"teacher {m.name!r}: takes samples of shape {shown} but {fed} shape {data_shape}; "
                             "expected a teacher for this data's input shape, or declare its input contract "
                             "(--teacher 'SPEC?shape=...&size=...', README)")
        try:
            out = m.logits(sample)
        except MissingOutputs:  # outputs computed elsewhere without the test split: checked at load
            continue
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"teacher {m.name!r}: fails on the data's samples of shape {data_shape} ({_reason(exc)}); "
                             f"expected a model that takes (batch, {', '.join(map(str, data_shape))}) float32 inputs") from None
        if out.ndim != 2:
            raise InputError(f"teacher {m.name!r}: outputs shape {tuple(out.shape)}; expected (batch, classes)")
        if not np.isfinite(out).all():
            raise InputError(f"teacher {m.name!r}: outputs NaN or infinity on real inputs; expected finite logits")
        if seen is not None and out.shape[1] != seen[1]:
            raise InputError(
                f"teachers {seen[0]!r} and {m.name!r} disagree on the number of classes ({seen[1]} vs {out.shape[1]}); "
                "expected every member to predict the same classes"
            )
        seen = (m.name, out.shape[1])
    if seen is not None and seen[1] != num_classes:
        raise InputError(f"teacher {seen[0]!r}: predicts {seen[1]} classes but the data has {num_classes} labels; "
                         f"expected {num_classes} outputs, one per label")


def with_contract(member: Teacher, contract: Contract, data) -> Teacher:
    """The member fed its own view of the data's samples: its ``logits(x)`` take the data's samples and
    apply the contract first; its fingerprint changes with the contract (caches invalidate)."""
    if contract.key() == Contract().key():
        return replace(member, contract=contract, output=contract.output if contract.output != "logits" else member.output)
    raw = member.logits

    def view(x: np.ndarray) -> np.ndarray:
        return member_view(contract, x, data.normalization, data.input_kind, member.name)

    return replace(member, logits=lambda x: raw(view(x)), view=view, contract=contract,
                   output=contract.output if contract.output != "logits" else member.output,
                   fingerprint=content_key(member.fingerprint, contract.key()))


def _contract_for(spec: str, table: dict, recipe_contracts: dict, member: Teacher, data) -> Contract:
    """The member's contract: the CLI's ``SPEC?key=value``, else the recipe's table for it, else what the
    member's file says about its own training data (this tool's output folders and ONNX files record
    their normalization), else the data's own view."""
    if table:
        return make_contract(spec, table, "command line")
    for key in (spec, Path(spec).name):
        if key in (recipe_contracts or {}):
            return make_contract(spec, recipe_contracts[key], "recipe")
    recorded = member.recorded
    if recorded and not ({"scale", "mean", "std"} >= set(recorded) and _same_values(recorded, data.normalization)):
        return make_contract(spec, recorded, "the member's own metadata")
    return Contract()


def _same_values(a: dict, b: dict) -> bool:
    try:
        return all(np.allclose(np.asarray(a.get(k, 0.0), dtype=np.float64), np.asarray(b.get(k, 0.0), dtype=np.float64),
                               rtol=1e-6, atol=1e-9) for k in ("scale", "mean", "std"))
    except (TypeError, ValueError):
        return False


def load_teachers(specs: list[str], data, *, epochs: int, seed: int, device: str | None = None,
                  jitter_pixels: int = 0, on_member=None, contracts: dict | None = None, recipe=None,
                  on_epoch=None) -> list[Teacher]:
    """Resolve every teacher spec into a member (training built-ins when not cached), each fed its own
    input contract (``SPEC?key=value&...``, ``contracts[spec]``, or what its file records)."""
    if not specs:
        raise InputError("--teacher: at least one teacher member is needed")
    members = []
    for i, full_spec in enumerate(specs):
        spec, table = split_spec(full_spec)
        fmt = teacher_format(spec)
        if on_member:
            on_member(i, full_spec, fmt)
        if fmt == "builtin":
            member = train_builtin(spec, data, epochs=epochs, seed=seed + i, device=device,
                                   jitter_pixels=jitter_pixels, recipe=recipe,
                                   on_epoch=None if on_epoch is None else (lambda e, acc, s=spec: on_epoch(s, e, acc)))
        else:
            member = TEACHER_FORMATS[fmt](spec, data=data)
        contract = _contract_for(spec, table, contracts, member, data)
        if fmt == "precomputed" and contract.key() != Contract().key():
            raise InputError(f"teacher {full_spec!r}: outputs computed elsewhere take no input contract (they were "
                             "computed on the inputs their hashes name); expected the file alone, or output=...")
        members.append(with_contract(member, contract, data))
    names = [m.name for m in members]
    for i, m in enumerate(members):  # make names unique for the report
        if names.count(m.name) > 1:
            m.name = f"{m.name}#{i + 1}"
    check_members(members, data.x_test[:8], data.num_classes)
    return members


FAR_BELOW_POINTS = 10.0  # a member this far below the best one was probably fed the wrong inputs
DECLARED_MISS_POINTS = 2.0  # a member this far below the accuracy it declares: its contract is wrong


def _linear_baseline(data, limit: int = 4000) -> float | None:
    """Test accuracy of a logistic regression trained here in seconds on (a slice of) the training split:
    a pretrained member that scores below it was almost certainly fed inputs it was not trained on."""
    from sklearn.linear_model import LogisticRegression

    if data.y_train is None or len(np.unique(data.y_train[:limit])) < 2:
        return None
    x = data.x_train[:limit].reshape(min(limit, len(data.x_train)), -1)
    model = LogisticRegression(max_iter=300).fit(x, data.y_train[:limit])
    return float(model.score(data.x_test.reshape(len(data.x_test), -1), data.y_test))


def contract_warnings(members: list[Teacher], data, strict: bool = False) -> list[str]:
    """Catch a wrong input contract before distilling from it: a member near chance, far below the best
    member, or (pretrained members) below a linear baseline is a warning naming the contract used (an
    InputError with ``strict``); a member far below the accuracy it declares is always an InputError."""
    if data.y_test is None or not len(data.y_test):
        return []
    scores = {}
    for m in members:
        try:
            scores[m.name] = float(np.mean(np.argmax(m.logits(data.x_test), axis=1) == data.y_test))
        except InputError:  # outputs computed elsewhere for the transfer set only
            continue
    if not scores:
        return []
    best, chance = max(scores.values()), 1.0 / data.num_classes
    pretrained = any(m.kind != "builtin" for m in members if m.name in scores)
    baseline = _linear_baseline(data) if pretrained else None
    warnings = []
    for m in (m for m in members if m.name in scores):
        acc, used = scores[m.name], json.dumps(m.contract.describe())
        if m.contract.accuracy is not None and 100 * acc < m.contract.accuracy - DECLARED_MISS_POINTS:
            raise InputError(f"teacher {m.name!r}: {100 * acc:.2f}% on the test split, but it declares "
                             f"{m.contract.accuracy:g}%; check its input contract (used: {used})")
        why = ("near chance" if acc < chance + 0.5 * (1 - chance) * 0.2 else
               f"{100 * (best - acc):.1f} points below the best member" if 100 * (best - acc) > FAR_BELOW_POINTS else
               f"below a linear model trained here ({100 * baseline:.1f}%)" if (
                   baseline is not None and m.kind != "builtin" and acc < baseline - 0.02) else None)
        if why:
            message = (f"teacher {m.name!r}: {100 * acc:.2f}% on the test split ({why}); check its input contract "
                       f"(used: {used})")
            if strict:
                raise InputError(message + "; failing because of --strict")
            warnings.append(message)
    return warnings
