"""Recipes: ``compress.toml`` holds everything a run needs; every CLI flag overrides it.

One table, ``schema()``, says which key lives in which section (the ``RunConfig`` section of the same name,
field of the same name), which flat setting it is (``compress.config.SETTINGS``: the flag's name), its type
and its help text. Parsing, the errors for unknown keys and wrong types, and ``compress init``'s commented
file are all generated from it, so the three can never disagree. A recipe maps one-to-one to a run
configuration, as torchdistill's YAML maps to objects.

A target's own options (``TargetOption`` records in ``export/<target>/``) are ``[export]`` keys generated from
the registry each time the table is asked for, so a target registered later (a plugin, a test) has its keys
too; their values travel together as one table, ``RunConfig.export.options`` (``take_target_options``).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from compress.core.errors import InputError, InternalError
from compress.core.registry import nearest
from compress.export.registry import declared_options, describe_option, describe_schemes

RECIPE_FILE = "compress.toml"


@dataclass(frozen=True)
class Range:
    """The values a numeric option accepts: finite, and within [low, high] (ends excluded where open)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, integer: bool) -> str:
        what, num = ("an integer" if integer else "a number"), lambda v: str(int(v)) if float(v).is_integer() else f"{v:g}"
        if self.low is not None and self.high is not None:
            return (f"{what} in {'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {num(self.low)}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {num(self.high)}"
        return f"a finite {what.split()[1]}"


POSITIVE, AT_LEAST_1, NON_NEGATIVE, FRACTION = Range(0, low_open=True), Range(1), Range(0), Range(0, 1)
FINITE = Range()


@dataclass(frozen=True)
class Key:
    """One recipe key: the flat setting it sets (``compress.config.SETTINGS``), the TOML type(s) it accepts, and what it means; for a
    numeric key, the values it accepts (``bounds``: checked once, in ``check_ranges``, for the recipe and
    every command's flags alike)."""

    field: str
    types: tuple[type, ...]
    help: str
    example: Any = None  # shown (commented out) by ``compress init`` when the default is "unset"
    bounds: Range | None = None

    @property
    def flag(self) -> str:
        """The command-line flag that sets this key (``[search]`` keys drop their ``search_`` prefix)."""
        return "--" + self.field.removeprefix("search_").replace("_", "-")


_STR, _INT, _NUM, _BOOL, _LIST, _TABLE = (str,), (int,), (int, float), (bool,), (list,), (dict,)
_SIZE = (str, int)
_NUMS = (list, float)  # a list of numbers (``widths = [0.25, 0.5]``)

_FIXED: dict[str, dict[str, Key]] = {  # every key but the targets' own options (schema())
    "": {
        "name": Key("name", _STR, "Run name; artifacts go to <out>/<name>/ (default: <data>-<student>-<target>).", "my-model"),
        "out": Key("out", _STR, "Output root folder."),
    },
    "data": {
        "path": Key("data", _STR, "IDX folder, class-per-folder images, labelled audio folder or .npz; unset = scikit-learn's digits.", "../shared/datasets/mnist"),
        "format": Key("data_format", _STR, "Force a loader: digits, idx, image-folder, npz, audio-folder (default: detected).", "idx"),
        "limit_train": Key("limit_train", _INT, "Use only the first N training samples.", 10000, bounds=AT_LEAST_1),
        "limit_test": Key("limit_test", _INT, "Use only the first N test samples.", 1000, bounds=AT_LEAST_1),
        "unlabelled": Key("unlabelled", _BOOL, "Ignore training labels: distill from soft targets only."),
        "image_size": Key("image_size", _SIZE, "Images: resize to cover HEIGHTxWIDTH and centre-crop (default: the most common size).", "32x32"),
        "options": Key("data_options", _TABLE, "Loader options, e.g. split = \"index<5\", sample_rate = 8000, "
                       "label_pattern, test_fraction, image_size, allow_unreadable.", {"split": "index<5"}),
    },
    "teachers": {
        "members": Key("teachers", _LIST, "Ensemble members (default: chosen for the data's kind and size, and said): built-in names, .ts/.pt TorchScript, .pt2, .onnx, a dist/<name> folder, outputs computed elsewhere (.npz from compress soft-targets), or module:function=weights.pt.", ["mlp-1200", "cnn", "resnet"]),
        "contract": Key("teacher_contracts", _TABLE, "Per-member input contract: member spec -> what it was trained on "
                        "(scale, mean, std, layout, channels, size, shape, dtype, sample_rate, input, output, accuracy; README).",
                        {"teacher.onnx": {"scale": "1/16", "mean": 0, "std": 1, "shape": "64"}}),
        "strict": Key("strict_teachers", _BOOL, "Fail (exit 2) instead of warning when a member scores far below the others or near chance."),
        "epochs": Key("teacher_epochs", _INT, "Most training epochs for built-in members; early stopping on a validation split "
                      "usually ends sooner (default: chosen for the data size; cached).", 10, bounds=AT_LEAST_1),
        "patience": Key("teacher_patience", _INT, "Early stopping: epochs without a better validation accuracy before a built-in member stops (default: 3, or a fifth of its epochs where more).", bounds=AT_LEAST_1),
        "augment": Key("augment", _STR, "Augmentation when training the built-in teachers (the student's: --student-augment): auto (crop for 8-bit "
                       "images of 16px and up, none for others), none, or a comma list of crop[=PIXELS],flip for images "
                       "(flip only where mirrored images keep their class) and shift=MS,noise=LOW:HIGH,gain=LOW:HIGH,"
                       "speed=LOW:HIGH for audio (a random time shift; noise at a random SNR in dB, the --background "
                       "recordings where given; a gain in dB; a speed factor); --task keyword-spotting's auto is "
                       "its time shift, gain and background mixing."),
        "jitter": Key("jitter", _INT, "Random shift of up to N pixels when training built-in members.", bounds=NON_NEGATIVE),
    },
    "student": {
        "arch": Key("student", _STR, "Student architecture: a registry name (compress.models.MODELS) or a family with multipliers "
                          "(compress.models.FAMILIES), e.g. mobilenet:0.35 (width) or mobilenet:0.5:0.5 (width:depth); default: chosen for the data's kind and size.", "mobilenet:0.35"),
    },
    "distill": {
        "loss": Key("loss", _STR, "Distillation loss from compress.distill.losses.LOSSES."),
        "temperature": Key("temperature", _NUM, "Softmax temperature T (the soft loss is scaled by T^2).", bounds=POSITIVE),
        "alpha": Key("alpha", _NUM, "Weight of the hard-label loss; the soft loss gets 1 - alpha.", bounds=FRACTION),
        "epochs": Key("epochs", _INT, "Student epochs (default: chosen for the data size; a checkpoint is kept after every epoch: an interrupted run resumes).", 100, bounds=AT_LEAST_1),
        "optimizer": Key("optimizer", _STR, "adam, adamw or sgd (compress.distill.train.OPTIMIZERS)."),
        "lr": Key("lr", _NUM, "Peak learning rate (cosine schedule).", bounds=POSITIVE),
        "weight_decay": Key("weight_decay", _NUM, "Weight decay.", bounds=NON_NEGATIVE),
        "batch_size": Key("batch_size", _INT, "Batch size (global: split across processes under torchrun).", bounds=AT_LEAST_1),
        "seed": Key("seed", _INT, "Same recipe + seed -> same result.", bounds=Range(0, 2**32 - 1)),
        "train_device": Key("device", _STR, "Torch device for training (default: cuda when present, else cpu).", "cuda"),
        "train_threads": Key("train_threads", _INT, "Torch threads for training teachers and student (default: 1 for small "
                             "models, else the CPUs this process may use; the report says which and why).", 2, bounds=AT_LEAST_1),
        "train_precision": Key("train_precision", _STR, "auto (default), fp32 or bf16: bf16 runs the training forward pass "
                               "under bf16 autocast (weights, optimizer and loss stay fp32); auto uses it for convolutional "
                               "image members (not the student) on a CPU with native bf16 where a timed step says it pays (the report says "
                               "which and why).", "fp32"),
        "bias_correction": Key("bias_correction", _STR, "LABEL=DELTA: raise one class's output bias after distillation.", "3=+3.5"),
        "augment": Key("student_augment", _STR, "Augmentation when distilling the student: auto (default: none for images, whose "
                       "soft targets are the teachers' outputs on the un-augmented images; the teachers' --augment for audio, "
                       "where the device hears noise), teachers (the teachers' --augment), none, or a spec as --augment.", "crop=2"),
    },
    "quantize": {
        "scheme": Key("quantize", _STR, "Quantization scheme (the list per target is generated: schema())."),
        "calibration_samples": Key("calibration_samples", _INT, "Transfer-set samples used to calibrate static int8.", bounds=AT_LEAST_1),
        "qat": Key("qat", _BOOL, "Quantization-aware distillation before int8 conversion."),
        "qat_epochs": Key("qat_epochs", _INT, "Epochs of quantization-aware distillation.", bounds=AT_LEAST_1),
        "int8_budget": Key("int8_budget", _NUM, "Largest accepted int8 accuracy drop in points; the worst layers stay in float until it fits.", 0.5, bounds=Range(0, 100)),
    },
    "export": {
        "targets": Key("targets", _LIST, "Export targets, one output folder each (compress.export.registry.TARGETS)."),
        "input": Key("model_input", _STR, "raw: 8-bit images go into the model as is (uint8 / a Core ML image; it normalizes "
                     "in its first op); normalized: float32 input the app normalizes (the data's formula)."),
    },
    "device": {
        "profile": Key("profile", _STR, "Device profile (compress devices list) or a profile .toml path.", "pixel-class"),
        "threads": Key("threads", _INT, "Runtime threads for validation and latency (default: the profile's, else 1).", bounds=AT_LEAST_1),
        "latency_runs": Key("latency_runs", _INT, "Timed batch-1 runs per model after warm-up.", bounds=AT_LEAST_1),
    },
    "budgets": {
        "max_accuracy_drop": Key("max_accuracy_drop", _NUM, "Largest accepted accuracy drop vs the teacher ensemble, in points.", 2.0, bounds=Range(-100, 100)),
        "max_latency_ms": Key("max_latency_ms", _NUM, "Largest accepted p50 batch-1 latency of the student, ms (measured on this host).", 5.0, bounds=POSITIVE),
        "max_size_kb": Key("max_size_kb", _NUM, "Largest accepted artifact size, kB.", 500, bounds=POSITIVE),
        "max_peak_memory_mb": Key("max_peak_memory_mb", _NUM, "Largest accepted peak memory of loading and running the model, MB.", 200, bounds=POSITIVE),
        "max_false_accepts_per_hour": Key("max_false_accepts_per_hour", _NUM, "Keyword spotting: the threshold is the "
                                          "lowest-FRR one within this many false accepts per hour on the validation "
                                          "streams (default 1.0); set, it also gates the test streams' rate.", 1.0, bounds=NON_NEGATIVE),
        "max_false_reject_rate": Key("max_false_reject_rate", _NUM, "Keyword spotting: largest accepted share of "
                                     "keywords missed on the test streams (0.1 = 10%).", 0.1, bounds=FRACTION),
        "max_macs_per_second": Key("max_macs_per_second", _NUM, "Keyword spotting: largest accepted multiply-accumulates "
                                   "per second of audio of the streaming student (front-end included).", 2e6, bounds=POSITIVE),
    },
    "streaming": {
        "task": Key("task", _STR, "classify (clips) or keyword-spotting (a streaming student on continuous audio: "
                    "--keywords, _unknown_ for every other label, _silence_ from the background)."),
        "keywords": Key("keywords", _LIST, "Keyword spotting: the labels that are keywords (flag: a comma list).", ["3"]),
        "background": Key("background", _STR, "Keyword spotting: a folder (or file) of long background recordings, "
                          "resampled; unset: generated pink noise, and the report says so.", "noise/"),
        "background_snr": Key("background_snr", _NUMS, "Keyword spotting: training mixes background into clips at an "
                              "SNR drawn from [LOW, HIGH] dB (flag: LOW,HIGH).", bounds=Range(-50, 100)),
        "time_shift_ms": Key("time_shift_ms", _INT, "Keyword spotting: training shifts clips by up to this many ms "
                             "either way.", bounds=NON_NEGATIVE),
        "gain_db": Key("gain_db", _NUMS, "Keyword spotting: training scales each clip by a gain drawn from [LOW, HIGH] "
                       "dB (a near or a far talker; flag: LOW,HIGH; 0,0 for none).", bounds=Range(-60, 60)),
        "silence_share": Key("silence_share", _NUM, "Keyword spotting: share of _silence_ clips in each split.",
                             bounds=Range(0, 1, high_open=True)),
        "unknown_share": Key("unknown_share", _NUM, "Keyword spotting: share of _unknown_ clips in training "
                             "(unset: every other word is kept).", 0.3, bounds=Range(0, 1, high_open=True)),
        "validation_share": Key("validation_share", _NUM, "Keyword spotting: share of training clips held out for "
                                "the validation streams the threshold is chosen on.", bounds=Range(0, 1, True, True)),
        "test_snr": Key("test_snr", _NUMS, "Keyword spotting: one generated test stream per SNR, dB (flag: a comma "
                        "list).", bounds=Range(-50, 100)),
        "test_streams": Key("test_streams", _STR, "Keyword spotting: a folder of your long test recordings with "
                            "labels.csv (file,start_s,end_s,label); unset: streams built from the test split.", "streams/"),
        "stream_hours": Key("stream_hours", _NUM, "Keyword spotting: built validation and test streams are re-mixed "
                            "(new order, gaps and noise) until each SNR has this many hours (0: each clip once); "
                            "one false accept in h hours is 1/h per hour, so a 1/h budget needs hours.", 2.0, bounds=NON_NEGATIVE),
        "smoothing_hops": Key("smoothing_hops", _INT, "Detection rule: a keyword fires when its probability averaged "
                              "over this many hops reaches the threshold.", bounds=AT_LEAST_1),
        "refractory_hops": Key("refractory_hops", _INT, "Detection rule: hops after a detection before the keyword "
                               "can fire again.", bounds=NON_NEGATIVE),
        "tolerance_s": Key("tolerance_s", _NUM, "Scoring: a detection up to this many seconds after a keyword ends "
                           "still hits it (default: one window).", 1.0, bounds=NON_NEGATIVE),
    },
    "specialists": {
        "count": Key("specialists", _INT, "Specialist members (Hinton et al. 2015 section 5): K-means clusters of "
                     "the classes the generalist confuses, one specialist each (its classes + a dustbin), combined "
                     "with the generalist into the student's soft targets; 0: none.", 4, bounds=NON_NEGATIVE),
        "subsets": Key("specialist_subsets", _LIST, "Specialists' classes by hand instead of clustering: one entry "
                       "per specialist, class names joined by + (flag: a comma list, e.g. cat+dog,fox+wolf).",
                       ["cat+dog", "fox+wolf"]),
        "min_classes": Key("specialist_min_classes", _INT, "Specialists: a cluster with fewer classes gets no "
                           "specialist.", bounds=Range(2, 1e9)),
        "max_classes": Key("specialist_max_classes", _INT, "Specialists: a larger cluster is cut into parts "
                           "(default: the number of classes - 1).", 12, bounds=Range(2, 1e9)),
        "generalist": Key("generalist", _STR, "Specialists: the generalist whose confusions they cover and whose "
                          "distribution they refine: ensemble, or one member's name."),
        "arch": Key("specialist_arch", _STR, "Specialists: their architecture (default: the generalist's own, "
                    "started from its weights with a new head; for an ensemble, its first built-in member's).", "cnn"),
        "top_n": Key("specialist_top_n", _INT, "Specialists: a row's top-N generalist classes decide which "
                     "specialists take part in its distribution.", bounds=AT_LEAST_1),
        "outputs": Key("specialist_outputs", _LIST, "Specialists computed elsewhere instead of trained here: their "
                       ".npz files (compress soft-targets --specialist a+b), one per specialist.",
                       ["cat-dog.npz", "fox-wolf.npz"]),
    },
    "search": {  # compress search only; distill-and-export ignores this section
        "families": Key("search_families", _LIST, "compress search: student families to try (compress.models.FAMILIES; "
                        "default: chosen for the data's kind).", ["mlp", "cnn-small", "mobilenet"]),
        "widths": Key("search_widths", _NUMS, "compress search: width multipliers (default: per family, "
                      "compress.models.FAMILIES' search defaults).", [0.25, 0.5, 1.0], bounds=POSITIVE),
        "depths": Key("search_depths", _NUMS, "compress search: depth multipliers for families that take one.", [0.5, 1.0], bounds=POSITIVE),
        "frames": Key("search_frames", _NUMS, "compress search: frame multipliers for the streaming families (the "
                      "front-end's frame and hop, 25 ms and 20 ms at 1; a longer hop runs the network fewer times "
                      "a second).", [1.0, 1.5], bounds=POSITIVE),
        "schemes": Key("search_schemes", _LIST, "compress search: quantization schemes to measure each student in "
                       "(default: none, int8-weights, int8 where the target has them).", ["none", "int8"]),
        "temperatures": Key("search_temperatures", _NUMS, "compress search: temperatures to try (default: [distill] temperature).", [2.0, 4.0], bounds=POSITIVE),
        "alphas": Key("search_alphas", _NUMS, "compress search: alphas to try (default: [distill] alpha).", [0.1, 0.5], bounds=FRACTION),
        "time_budget": Key("search_time_budget", _NUM, "compress search: minutes to spend (the first student always "
                           "finishes; a rerun continues where this one stopped).", 20, bounds=POSITIVE),
        "prune_margin": Key("search_prune_margin", _NUM, "compress search: a half-trained student more than this many "
                            "points below the accuracy budget is stopped.", 3.0, bounds=Range(0, 100)),
    },
}
SEARCH_FIELDS = {k.field for k in _FIXED["search"].values()}
_TOML_TYPES = {str: _STR, int: _INT, float: _NUM, bool: _BOOL}


def target_option_keys() -> dict[str, Key]:
    """One ``[export]`` key per target option the registered targets declare; the help says which targets
    read it. A name that is already a run setting is a target's mistake, said at once."""
    keys = {}
    for name, declared in declared_options().items():
        if name in _FIXED["export"] or any(k.field == name for sec in _FIXED.values() for k in sec.values()):
            raise InternalError(f"target option {name!r} ({declared[0][0]}): the name of a run setting; rename it")
        types = {option.type for _, option in declared}
        if len(types) > 1:
            raise InternalError(f"target option {name!r}: declared with different types by {[t for t, _ in declared]}")
        first = declared[0][1]
        example = next((o.example if o.example is not None else o.default for _, o in declared
                        if o.example is not None or o.default is not None), None)
        keys[name] = Key(name, _TOML_TYPES[first.type], describe_option(name), example)
    return keys


def schema() -> dict[str, dict[str, Key]]:
    """Every recipe key by section: the fixed ones and, in ``[export]``, the registered targets' options;
    the quantization scheme's help lists each registered target's schemes."""
    scheme = replace(_FIXED["quantize"]["scheme"], help=f"Quantization scheme, per target: {describe_schemes()}.")
    return {**_FIXED, "quantize": {**_FIXED["quantize"], "scheme": scheme},
            "export": {**_FIXED["export"], **target_option_keys()}}


def key_for(field: str) -> Key:
    """The recipe key that sets run-configuration ``field`` (its help, type and bounds: what a command's flag for
    the same setting shows, ``compress.cli.options.run_option``)."""
    for keys in schema().values():
        for key in keys.values():
            if key.field == field:
                return key
    raise InternalError(f"no recipe key sets {field!r}")


def section_fields(section: str, prefix: str = "") -> list[str]:
    """The settings of one recipe section (those whose flag name starts with ``prefix``), in declaration order."""
    return [k.field for k in _FIXED[section].values() if k.field.startswith(prefix)]


def list_fields() -> dict[str, type]:
    """Settings whose recipe value is a list, with their item type (a flag types them as one comma list)."""
    return {k.field: (str if k.types == _LIST else float) for keys in _FIXED.values() for k in keys.values()
            if k.types in (_LIST, _NUMS) and k.field != "teachers"}


def take_target_options(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``values`` without the target options, the target options given): flags and recipe keys name each
    option flat; a run configuration holds them as one ``target_options`` table."""
    names = set(declared_options())
    options = {k: v for k, v in values.items() if k in names and v is not None}
    return {k: v for k, v in values.items() if k not in names}, options


def _type_name(types: tuple[type, ...]) -> str:
    return {_STR: "a string", _INT: "an integer", _NUM: "a number", _BOOL: "true or false",
            _LIST: "a list of strings", _TABLE: "a table", _SIZE: "a size (32 or \"48x64\")",
            _NUMS: "a list of numbers"}[types]


def _check_type(where: str, key: Key, value: Any) -> Any:
    if key.types == _NUMS:
        if not (isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in value)):
            raise InputError(f"{where}: expected a list of numbers, got {type(value).__name__} {value!r}")
        return [float(v) for v in value]
    ok = isinstance(value, key.types) and not (isinstance(value, bool) and bool not in key.types)
    if ok and key.types == _LIST:
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        raise InputError(f"{where}: expected {_type_name(key.types)}, got {type(value).__name__} {value!r}")
    return float(value) if key.types == _NUM else value


def parse(text: str, source: str = RECIPE_FILE) -> dict[str, Any]:
    """TOML text -> {flat setting: value}. Unknown keys and wrong types raise InputError (one line)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source}: not valid TOML ({exc})") from None
    values: dict[str, Any] = {}
    table = schema()
    all_keys = [f"{s}.{k}" if s else k for s, keys in table.items() for k in keys]
    for name, value in doc.items():
        if isinstance(value, dict) and name in table and name != "":
            for key_name, item in value.items():
                where = f"{source}: [{name}] {key_name}"
                if key_name not in table[name]:
                    raise InputError(f"{where}: unknown key{nearest(key_name, list(table[name]))}")
                key = table[name][key_name]
                values[key.field] = _check_type(where, key, item)
        elif name in table[""]:
            values[table[""][name].field] = _check_type(f"{source}: {name}", table[""][name], value)
        else:
            kind = "section" if isinstance(value, dict) else "key"
            choices = list(table) if kind == "section" else all_keys
            raise InputError(f"{source}: unknown {kind} {name!r}{nearest(name, [c for c in choices if c])}")
    return values


def load(path: str | Path) -> dict[str, Any]:
    """Read and parse a recipe file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: recipe file not found; expected a compress.toml (write one with `compress init`)")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read the recipe ({exc})") from None
    return parse(text, str(p))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        body = "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else "\\" + c if c in '"\\' else c
                       for c in value)  # TOML basic string: control characters must be escaped
        return f'"{body}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


_PLACEHOLDERS = {_STR: "", _INT: 1, _NUM: 1.0, _BOOL: True, _LIST: [], _TABLE: {}, _SIZE: 32, _NUMS: [1.0]}


def example_value(key: Key) -> Any:
    """What ``compress init`` shows, commented out, for an unset key: its example, else a value of its type
    within its bounds (so that uncommenting any line gives a recipe that loads)."""
    if key.example is not None:
        return key.example
    if key.bounds is not None and key.bounds.low is not None:
        low = key.bounds.low + (1 if key.bounds.low_open else 0)
        return int(low) if key.types == _INT else float(low)
    return _PLACEHOLDERS[key.types]


def render(defaults: dict[str, Any]) -> str:
    """A commented recipe: every key with its help; unset keys commented out with an example value."""
    lines = ["# compress.toml: a recipe for `compress distill-and-export` (written by `compress init`).",
             "# Every key can be overridden by the CLI flag of the same name; unset keys use the defaults.",
             "# Keys and meanings: README.md, 'Recipes'.", ""]
    for section, keys in schema().items():
        if section:
            lines += ["", f"[{section}]"]
        for key_name, key in keys.items():
            lines.append(f"# {key.help}")
            value = defaults.get(key.field)
            if value is None or value == {}:
                lines.append(f"# {key_name} = {_toml_value(example_value(key))}")
            else:
                lines.append(f"{key_name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def check_ranges(values: dict[str, Any]) -> None:
    """Every numeric option within its declared ``bounds`` (NaN and infinity never are): one ``InputError``
    naming the flag and the recipe key, before any work. Lists of numbers are checked item by item."""
    for section, keys in schema().items():
        for name, key in keys.items():
            value = values.get(key.field)
            if key.bounds is None or value is None:
                continue
            integer = key.types == _INT
            for item in (value if isinstance(value, (list, tuple)) else [value]):
                ok = isinstance(item, (int, float)) and not isinstance(item, bool)
                ok = ok and (not integer or float(item).is_integer()) and key.bounds.accepts(float(item))
                if not ok:
                    where = f"[{section}] {name}" if section else name
                    raise InputError(f"{key.flag} {item!r}: expected {key.bounds.describe(integer)} "
                                     f"(recipe key {where})")


def merge(defaults: dict[str, Any], recipe: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """defaults <- recipe <- CLI flags that were given (None means 'not given')."""
    out = dict(defaults)
    out.update(recipe)
    out.update({k: v for k, v in flags.items() if v is not None})
    return out


def config_fields(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def resolve(recipe_path: str | None, flags: dict, defaults: dict) -> tuple[str | None, dict]:
    """(the recipe file used, defaults <- that recipe <- flags): the recipe given, or ./compress.toml when
    present. Every command that reads a recipe resolves it here, so they cannot disagree."""
    path = recipe_path or (RECIPE_FILE if Path(RECIPE_FILE).is_file() else None)
    merged = merge(defaults, load(path) if path else {}, flags)
    check_ranges(merged)
    merged, given = take_target_options(merged)
    return path, {**merged, "target_options": {**(merged.get("target_options") or {}), **given}}

