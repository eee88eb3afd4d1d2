"""Device profiles: what a class of device runs (runtime, precision, threads, CPU) and its budgets, as data.

A profile is a TOML file. Three places hold them (later ones win on a name clash, so a user can tighten a
shipped profile by saving a file of the same name):

  shipped   ``devices/profiles/*.toml`` (iphone-class, pixel-class, rpi4-class, arm64-linux)
  user      ``$COMPRESS_PROFILES_DIR/*.toml``, else ``platformdirs.user_config_dir("compress")/profiles``
  a path    ``load_profile("my/board.toml")``: any file given directly

A profile's registry name is its file name without ``.toml``; its ``name`` key defaults to that and, when
given, must equal it (so ``--device NAME`` always finds the file called NAME.toml).

Keys (``SCHEMA``; anything else is an error naming the nearest valid key):

  name, description, runtime (a registered target), precision (fp32 | fp16 | int8), threads (>= 1),
  cpu, emulator_cpu (QEMU ``-cpu`` model for the arm64 emulator, optional), and the settings a target reads (``Backend.profile_keys``, e.g. tflite's delegate: xnnpack | none)
  [budgets]   latency_ms (p50, batch 1), size_kb (1 kB = 1024 bytes), peak_memory_mb (MiB),
              max_accuracy_drop (points vs the reference)
  [estimate]  host_to_device_latency_factor (device p50 ~= host p50 x factor) and basis (where the factor
              comes from: required with the factor). Without it the device latency is "not estimated".
"""

from __future__ import annotations

import difflib
import functools
import os
import tomllib
from pathlib import Path
from typing import Callable

from compress.core.errors import InputError

SHIPPED_DIR = Path(__file__).parent / "profiles"
PRECISIONS = ("fp32", "fp16", "int8")

NUMBER = (int, float)
# key -> (expected type(s), type name for messages)
TOP_LEVEL: dict[str, tuple[type | tuple, str]] = {
    "name": (str, "string"),
    "description": (str, "string"),
    "runtime": (str, "string"),
    "precision": (str, "string"),
    "threads": (int, "integer"),
    "cpu": (str, "string"),
    "emulator_cpu": (str, "string"),
    "budgets": (dict, "table"),
    "estimate": (dict, "table"),
}
BUDGETS: dict[str, tuple[type | tuple, str]] = {
    "latency_ms": (NUMBER, "number"),
    "size_kb": (NUMBER, "number"),
    "peak_memory_mb": (NUMBER, "number"),
    "max_accuracy_drop": (NUMBER, "number"),
}
ESTIMATE: dict[str, tuple[type | tuple, str]] = {
    "host_to_device_latency_factor": (NUMBER, "number"),
    "basis": (str, "string"),
}
SCHEMA = {"": TOP_LEVEL, "budgets": BUDGETS, "estimate": ESTIMATE}
DEFAULTS = {"description": "", "precision": "fp32", "threads": 1, "cpu": "", "budgets": {}}


def user_dir() -> Path:
    """Where a user's own profiles live: ``$COMPRESS_PROFILES_DIR`` or ``<user config dir>/compress/profiles``."""
    env = os.environ.get("COMPRESS_PROFILES_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("compress")) / "profiles"


def _nearest(word: str, options) -> str:
    best = difflib.get_close_matches(word, list(options), n=1, cutoff=0.0)
    return best[0] if best else ""


def _target_keys() -> dict[str, tuple[type, str]]:
    """The top-level settings the registered targets read (``Backend.profile_keys``, e.g. tflite's delegate)."""
    from compress.export.registry import TARGETS

    return {key: (str, "string") for backend in TARGETS.values() for key in backend.profile_keys}


def _check_table(table: dict, section: str, where: str) -> None:
    schema = {**SCHEMA[section], **(_target_keys() if section == "" else {})}
    prefix = f"[{section}] " if section else ""
    for key, value in table.items():
        if key not in schema:
            near = _nearest(key, schema)
            raise InputError(f"{where}: unknown key {prefix}{key!r}; nearest valid key: {near!r} "
                             f"(valid: {', '.join(schema)})")
        types, type_name = schema[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise InputError(f"{where}: key {prefix}{key!r} must be a {type_name}, got {type(value).__name__} "
                             f"{value!r}")


def validate_profile(raw: dict, where: str, registry_name: str | None = None) -> dict:
    """Check keys, types and values; returns the profile with defaults filled in. Raises InputError."""
    _check_table(raw, "", where)
    for section in ("budgets", "estimate"):
        if section in raw:
            _check_table(raw[section], section, where)
    for key in ("name", "runtime"):
        if key not in raw and not (key == "name" and registry_name):
            raise InputError(f"{where}: missing required key {key!r}")
    profile = {**DEFAULTS, **raw, "budgets": dict(raw.get("budgets", {}))}
    profile.setdefault("name", registry_name)
    if registry_name is not None and profile["name"] != registry_name:
        raise InputError(f"{where}: name {profile['name']!r} differs from the file name {registry_name!r}; "
                         f"rename the file or the profile")
    from compress.export.registry import TARGETS

    if profile["runtime"] not in TARGETS:
        raise InputError(f"{where}: runtime {profile['runtime']!r} is not a target; expected one of {list(TARGETS)}")
    if profile["precision"] not in PRECISIONS:
        raise InputError(f"{where}: precision {profile['precision']!r}; expected one of {list(PRECISIONS)}")
    if profile["threads"] < 1:
        raise InputError(f"{where}: threads {profile['threads']}: expected an integer >= 1")
    for key in {k for b in TARGETS.values() for k in b.profile_keys} & set(profile):
        allowed = TARGETS[profile["runtime"]].profile_keys.get(key)
        if allowed is None:
            owners = [name for name, b in TARGETS.items() if key in b.profile_keys]
            raise InputError(f"{where}: {key} is a {' and '.join(owners)} setting, but runtime is {profile['runtime']!r}")
        if profile[key] not in allowed:
            raise InputError(f"{where}: {key} {profile[key]!r}; expected one of {list(allowed)}")
    for key, value in profile["budgets"].items():
        if value < 0:
            raise InputError(f"{where}: [budgets] {key} {value}: expected a number >= 0")
    est = profile.get("estimate")
    if est is not None:
        if "host_to_device_latency_factor" not in est or not est.get("basis", "").strip():
            raise InputError(f"{where}: [estimate] needs both host_to_device_latency_factor and basis "
                             "(where the factor comes from); leave the table out to report 'not estimated'")
        if est["host_to_device_latency_factor"] <= 0:
            raise InputError(f"{where}: [estimate] host_to_device_latency_factor must be > 0")
    return profile


def load_profile_file(path: Path | str, registry_name: str | None = None) -> dict:
    """Read and validate one profile file; the result records its ``source`` path."""
    path = Path(path)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{where}: device profile not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: cannot read the device profile ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{where}: not valid TOML ({exc})") from None
    return {**validate_profile(raw, where, registry_name), "source": where}


def _scan(folder: Path) -> dict[str, Callable[[], dict]]:
    if not folder.is_dir():
        return {}
    return {p.stem: functools.partial(load_profile_file, p, p.stem) for p in sorted(folder.glob("*.toml"))}


# The shipped profiles: name -> loader (a plain dict, like ``compress.export.TARGETS``).
PROFILES: dict[str, Callable[[], dict]] = _scan(SHIPPED_DIR)


def available() -> dict[str, Callable[[], dict]]:
    """Shipped profiles plus the user's (read now, so a changed ``$COMPRESS_PROFILES_DIR`` is seen)."""
    return {**PROFILES, **_scan(user_dir())}


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".toml") or "/" in spec or os.sep in spec


def load_profile(name_or_path: str | os.PathLike) -> dict:
    """A profile by registry name (shipped or user) or by file path; InputError names the nearest name."""
    spec = str(name_or_path)
    if _looks_like_path(spec):
        return load_profile_file(spec)
    registry = available()
    if spec in registry:
        return registry[spec]()
    near = _nearest(spec, registry)
    hint = f"; did you mean {near!r}?" if near else ""
    raise InputError(f"device profile {spec!r}: unknown{hint} (known: {', '.join(sorted(registry))}; "
                     f"or give a .toml path, or add one to {user_dir()})")
