"""ARM64 emulator runner: the exported file in the real aarch64 builds of its runtime, under QEMU user-mode.

Phones run the ARM builds of ONNX Runtime and LiteRT, whose NEON / XNNPACK kernels are not the x86 ones the
host runners exercise. This runner executes the same ``.onnx`` / ``.tflite`` file in the aarch64 wheels of
``onnxruntime`` and ``ai-edge-litert`` (the host's versions, so results are comparable) inside an emulated
aarch64 Debian Python, and compares the scores with the host run. Emulation is ~400x slower than native:
the numbers are for correctness, never for timing (``open_arm64`` returns ``measured=False``).

``setup()`` builds the emulator once, without root and without touching the host system: ``apt-get`` with a
private configuration (its own state folder, Debian bookworm sources, architectures amd64 + arm64) downloads
``qemu-user-static`` (amd64) and the arm64 Python 3.11 runtime packages, which ``dpkg -x`` unpacks into a
sysroot; ``pip download`` fetches the aarch64 wheels. The result lives under ``$COMPRESS_EMU_DIR``, else
``arm64-emu`` under the cache root (``$COMPRESS_CACHE_DIR``, else the user cache dir; ``emu_root``; the test
suite, which isolates the cache per session, points ``COMPRESS_EMU_DIR`` at the user's so that a build is
reused), in a folder keyed by the package versions, built in a temporary sibling and renamed into place
only when its marker file is written.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from compress.core.errors import InputError
from compress.core.runner import Runner
from compress.export.common.streaming import run_stream

CPU = "neoverse-n1"  # QEMU_CPU: ~10x faster to emulate than the default "max" (no SVE, fewer features)
SUITE = "bookworm"
MIRRORS = {  # Debian sources for the private apt configuration: the arm64 sysroot matches the suite
    "http://deb.debian.org/debian": [SUITE, f"{SUITE}-updates"],
    "http://deb.debian.org/debian-security": [f"{SUITE}-security"],
}
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# arm64 packages unpacked into the sysroot: python3.11 and what its interpreter, stdlib extension modules
# and the manylinux wheels (libstdc++, libgcc_s) load. dbm/nis/krb5 extras are left out.
DEBS = [
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libgcc-s1",
    "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libcrypt1",
    "libuuid1", "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8",
]
PYTHON = "/usr/bin/python3.11"  # inside the sysroot
# Without an ARM /proc/cpuinfo (the guest would see the host's x86 one) both runtimes' CPU detection
# segfaults; qemu's -L prefix makes the guest read this one. Features of a Neoverse-N1 (Graviton2).
CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

"""
MARKER = "emulator.json"  # written last: a folder without it is a half-finished build
CHILD = Path(__file__).with_name("arm64_emu_child.py")


class EmulatorUnavailable(RuntimeError):
    """The ARM64 emulator could not be built or started here; the message names the step that failed."""


def emu_root() -> Path:
    """``$COMPRESS_EMU_DIR``, else ``arm64-emu`` under the cache root (``$COMPRESS_CACHE_DIR`` when set, so a
    user who moves the cache moves the emulator with it; else the user cache dir)."""
    root = os.environ.get("COMPRESS_EMU_DIR")
    if root:
        return Path(root)
    cache = os.environ.get("COMPRESS_CACHE_DIR")
    if cache:
        return Path(cache) / "arm64-emu"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("compress")) / "arm64-emu"


def _wheels() -> list[str]:
    """numpy and every emulated target's runtime wheel, pinned to the host's installed versions."""
    return ["numpy"] + [b.emulator_wheel for b in emulated_backends().values()]


def _wanted() -> dict[str, str]:
    """Wheel name -> the host's installed version (the emulator runs the same release)."""
    versions = {}
    for name in _wheels():
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise EmulatorUnavailable(f"{name} is not installed on the host: nothing to match the aarch64 wheel to")
    return versions


def _build_dir() -> Path:
    from compress.core.cache import content_key

    key = content_key(SUITE, DEBS, _wanted(), CPUINFO, 1)
    return emu_root() / f"{SUITE}-py311-{key[:12]}"


def _info(folder: Path) -> dict | None:
    try:
        info = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    info.update(sysroot=str(folder / "sysroot"), qemu=str(folder / info["qemu"]), site=str(folder / "site"))
    return info


def status() -> dict | None:
    """The built emulator's description (as ``setup`` returns it, ``cached=True``), or None when not built."""
    info = _info(_build_dir())
    return None if info is None else {**info, "cached": True}


def _step(name: str, cmd: list[str], timeout: float = 900, **kw) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise EmulatorUnavailable(f"{name} failed: {cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise EmulatorUnavailable(f"{name} failed: no result after {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise EmulatorUnavailable(f"{name} failed: {_reason(proc.stderr or proc.stdout)}")
    return proc.stdout


def _reason(text: str) -> str:
    """The informative line of a failed apt/pip/dpkg run: apt ends with a generic "E: Some index files
    failed" after the "W: Failed to fetch ... (cause)" line, pip with "ERROR:" lines."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    for pick in (lambda s: "Failed to fetch" in s or s.startswith("ERROR:"), lambda s: s.startswith("E:")):
        hits = [line for line in lines if pick(line)]
        if hits:
            return hits[0]
    return _last_line(text)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _apt_config(apt: Path) -> dict[str, str]:
    """A private apt (state, cache, sources) that knows arm64: no root, no change to the host's apt."""
    for sub in ("state/lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "state" / "status").touch()
    signed = f"\nSigned-By: {KEYRING}" if KEYRING.is_file() else ""
    (apt / "sources.list.d" / "debian.sources").write_text("\n".join(
        f"Types: deb\nURIs: {uri}\nSuites: {' '.join(suites)}\nComponents: main{signed}\n"
        for uri, suites in MIRRORS.items()
    ))
    (apt / "apt.conf").write_text(
        'APT::Architecture "amd64";\nAPT::Architectures { "amd64"; "arm64"; };\n'
        f'Dir::State "{apt}/state";\nDir::State::status "{apt}/state/status";\nDir::Cache "{apt}/cache";\n'
        f'Dir::Etc::SourceList "/dev/null";\nDir::Etc::SourceParts "{apt}/sources.list.d";\n'
        f'Dir::Etc::Preferences "/dev/null";\nDir::Etc::PreferencesParts "{apt}/preferences.d";\n'
        'Debug::NoLocking "true";\n'
        + ('APT::Sandbox::User "root";\n' if os.geteuid() == 0 else "")
    )
    return {**os.environ, "APT_CONFIG": str(apt / "apt.conf")}


def setup(progress: Callable[[str], None] | None = None) -> dict:
    """Build the emulator once (about a minute, ~200 MB download) and return its description.

    Returns {"sysroot", "qemu", "python_version", "packages": {name: version}, "seconds", "cached"}.
    Fast when already built. Raises ``EmulatorUnavailable`` naming the step that failed.
    """
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    final = _build_dir()
    info = _info(final)
    if info is not None:
        return {**info, "seconds": time.perf_counter() - start, "cached": True}
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise EmulatorUnavailable(f"host is {platform.machine()}: the emulator build needs an x86_64 Debian host")
    if final.exists():  # no marker: an interrupted copy of a build, redo it
        shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        _build(tmp, say)
        info = json.loads((tmp / MARKER).read_text())
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same build first: use that one
            if _info(final) is None:
                raise EmulatorUnavailable(f"moving the build into {final} failed") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    say(f"arm64 emulator ready in {seconds:.0f} s: {final}")
    return {**_info(final), "seconds": seconds, "cached": False}


def _build(tmp: Path, say: Callable[[str], None]) -> None:
    wanted = _wanted()
    env = _apt_config(tmp / "apt")
    debs = tmp / "debs"
    debs.mkdir()
    say("apt-get update (private config, amd64 + arm64)")
    _step("apt-get update", ["apt-get", "-q", "--error-on=any", "update"], env=env)
    say(f"apt-get download qemu-user-static + {len(DEBS)} arm64 packages")
    _step("apt-get download", ["apt-get", "-q", "download", "qemu-user-static:amd64",
                               *(f"{p}:arm64" for p in DEBS)], env=env, cwd=debs)
    sysroot, qemu_root = tmp / "sysroot", tmp / "qemu"
    for deb in sorted(debs.glob("*.deb")):
        dest = qemu_root if deb.name.startswith("qemu-user-static_") else sysroot
        _step(f"dpkg -x {deb.name}", ["dpkg", "-x", str(deb), str(dest)])
    qemu = qemu_root / "usr" / "bin" / "qemu-aarch64-static"
    if not qemu.is_file():
        raise EmulatorUnavailable(f"unpacking qemu-user-static failed: no {qemu.name} in the package")
    for other in qemu.parent.iterdir():  # the package holds every guest architecture (~370 MB): keep one
        if other != qemu:
            other.unlink()
    (sysroot / "proc").mkdir(exist_ok=True)
    (sysroot / "proc" / "cpuinfo").write_text(CPUINFO)

    say(f"pip download aarch64 wheels: {', '.join(f'{k}=={v}' for k, v in wanted.items())}")
    wheels, site = tmp / "wheels", tmp / "site"
    platforms = ["manylinux2014_aarch64", *(f"manylinux_2_{m}_aarch64" for m in range(17, 37))]  # glibc 2.36
    _step("pip download", [
        sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--implementation",
        "cp", "--python-version", "3.11", *(a for p in platforms for a in ("--platform", p)), "-d", str(wheels),
        *(f"{k}=={v}" for k, v in wanted.items()),
    ], env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    import zipfile

    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)
    for whl_file in site.rglob("*"):  # zipfile drops the exec bits that some bundled libraries need
        if whl_file.is_file() and ".so" in whl_file.name:
            whl_file.chmod(0o755)
    # Debian compiles the stdlib in postinst (never run here): byte-compile it and the wheels once with the
    # host's 3.11 (same bytecode magic), so emulated runs don't recompile on every start.
    say("byte-compiling the sysroot's stdlib and the wheels")
    _step("compileall", [sys.executable, "-m", "compileall", "-q", "-j", "0", "-s", str(sysroot), "-p", "/",
                         str(sysroot / "usr" / "lib" / "python3.11")])
    _step("compileall", [sys.executable, "-m", "compileall", "-q", "-j", "0", str(site)])

    modules = ["numpy"] + [b.runtime_module for b in emulated_backends().values()]
    say(f"smoke test: importing {', '.join(modules)} in the emulated Python")
    probe = (f"import importlib, importlib.metadata as md, json, platform; "
             f"[importlib.import_module(m) for m in {modules!r}]; "
             f"print(json.dumps({{'machine': platform.machine(), 'python': platform.python_version(), "
             f"**{{w: md.version(w) for w in {list(wanted)!r}}}}}))")
    out = _step("smoke test in the emulator", _guest_cmd(qemu, sysroot, ["-c", probe]), timeout=600,
                env=_guest_env(site))
    seen = json.loads(out.strip().splitlines()[-1])
    if seen["machine"] != "aarch64":
        raise EmulatorUnavailable(f"smoke test in the emulator failed: guest reports {seen['machine']}")
    packages = {k: seen[k] for k in wanted}
    if packages != wanted:
        raise EmulatorUnavailable(f"smoke test in the emulator failed: got {packages}, expected {wanted}")
    qemu_version = _last_line(_step("qemu --version", [str(qemu), "--version"]).splitlines()[0])
    shutil.rmtree(tmp / "apt")
    shutil.rmtree(qemu_root / "usr" / "share", ignore_errors=True)
    shutil.rmtree(debs)
    shutil.rmtree(wheels)
    (tmp / MARKER).write_text(json.dumps({
        "qemu": str(qemu.relative_to(tmp)), "qemu_version": qemu_version, "cpu": CPU,
        "python_version": seen["python"], "packages": packages, "suite": SUITE,
    }, indent=1))


def _guest_cmd(qemu: Path, sysroot: Path, args: list[str]) -> list[str]:
    return [str(qemu), "-cpu", CPU, "-L", str(sysroot), str(sysroot) + PYTHON, "-s", *args]


def _guest_env(site: Path) -> dict[str, str]:
    """A clean environment: the guest must not see the host's Python paths or thread settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "QEMU_", "LD_", "OMP_"))}
    return {**env, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1", "QEMU_CPU": CPU}


def emulated_backends() -> dict:
    """suffix -> Backend, for the targets whose folder ships a runner for the emulator."""
    from compress.export.registry import TARGETS

    return {b.suffix: b for b in TARGETS.values() if b.emulated_runner is not None}


def _backend(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    backends = emulated_backends()
    if path.suffix not in backends:
        raise InputError(f"{path}: expected a {' or '.join(backends)} file for the ARM64 emulator")
    return backends[path.suffix]


def _run(path: Path, x: np.ndarray, threads: int, timeout: float) -> tuple[np.ndarray, dict]:
    """One qemu process for the whole batch: (scores, {"engine", "seconds"})."""
    backend = _backend(path)
    info = setup()
    with tempfile.TemporaryDirectory(prefix="compress-arm64-") as tmp:
        in_path, out_path = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
        x = np.asarray(x)  # uint8 stays uint8 (raw pixels, as an app passes them); anything else is float32
        np.save(in_path, np.ascontiguousarray(x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32))
        cmd = _guest_cmd(Path(info["qemu"]), Path(info["sysroot"]),
                         [str(CHILD), str(backend.emulated_runner), str(path.resolve()), str(in_path), str(out_path),
                          str(int(threads))])
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=_guest_env(Path(info["site"])))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{path.name}: the ARM64 emulator run took longer than {timeout:.0f} s") from None
        except OSError as exc:
            raise EmulatorUnavailable(f"starting qemu failed: {exc}") from None
        seconds = time.perf_counter() - start
        if proc.returncode == 2:
            raise InputError(_last_line(proc.stderr))
        if proc.returncode < 0:
            raise RuntimeError(f"{path.name}: the ARM64 emulator run died with "
                               f"{signal.Signals(-proc.returncode).name} ({_last_line(proc.stderr)})")
        if proc.returncode != 0 or not out_path.is_file():
            raise RuntimeError(f"{path.name}: the ARM64 emulator run failed: {_last_line(proc.stderr)}")
        meta = json.loads(proc.stdout.strip().splitlines()[-1])
        return np.load(out_path), {**meta, "wall_seconds": seconds, "qemu_cpu": CPU}


def _engine(meta: dict) -> str:
    return f"{meta['engine']} (aarch64, QEMU user-mode, cpu {CPU})"


def run_on_emulator(path: Path | str, x: np.ndarray, threads: int = 1, timeout: float = 600) -> np.ndarray:
    """Scores of ``x`` (float32, the model's normalized input space; or uint8 raw pixels for a file that
    takes them) from ``path`` run on emulated aarch64."""
    return _run(Path(path), x, threads, timeout)[0]


def compare_with_host(path: Path | str, x: np.ndarray, threads: int = 1) -> dict:
    """Run ``x`` through ``path`` on the host runner and on the emulator; how closely they agree."""
    path = Path(path)
    host_runner = _backend(path).open(path, threads)
    host = host_runner.predict(x)
    emu, meta = _run(path, x, threads, 600)
    if emu.shape != host.shape:
        raise RuntimeError(f"{path.name}: emulator output shape {emu.shape} differs from the host's {host.shape}")
    n = len(host)
    diff = np.abs(emu.astype(np.float64) - host.astype(np.float64))
    return {
        "bit_exact": bool(np.array_equal(emu.view(np.uint32), host.astype(np.float32).view(np.uint32))),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "top1_agreement": float((emu.argmax(1) == host.argmax(1)).mean()) if n else 1.0,
        "samples": n,
        "engine": _engine(meta),
        "host_engine": host_runner.engine,
        "seconds": meta["wall_seconds"],
    }


def compare_stream_with_host(path: Path | str, audio: np.ndarray, threads: int = 1) -> dict:
    """Feed ``audio`` hop by hop to a streaming file (``compress.export.common.streaming``) on the host runtime
    and on the emulator (one qemu process for the whole stream); how closely the per-hop ``probs`` agree."""
    path = Path(path)
    host_runner = _backend(path).open_streaming(path, threads)
    hop = host_runner.contract.hop_samples
    hops = np.ascontiguousarray(np.asarray(audio, np.float32)[:len(audio) // hop * hop].reshape(-1, hop))
    host = run_stream(host_runner.step, host_runner.state_shapes, hops.reshape(-1), hop)
    emu, meta = _run(path, hops, threads, 1200)
    if emu.shape != host.shape:
        raise RuntimeError(f"{path.name}: emulator output shape {emu.shape} differs from the host's {host.shape}")
    diff = np.abs(emu.astype(np.float64) - host.astype(np.float64))
    return {"bit_exact": bool(np.array_equal(emu.view(np.uint32), host.astype(np.float32).view(np.uint32))),
            "max_abs_diff": float(diff.max()) if diff.size else 0.0, "hops": int(len(hops)),
            "engine": _engine(meta), "host_engine": host_runner.engine, "seconds": meta["wall_seconds"]}


def open_arm64(path: Path | str, threads: int = 1) -> Runner:
    """A Runner on emulated aarch64. Loads the model once in the emulator to fail early and name the engine;
    every ``predict`` is one qemu process (seconds of start-up), and ``measured=False``: no timings."""
    path = Path(path)
    _, meta = _run(path, np.zeros((0,), np.float32), threads, 600)

    def predict(x: np.ndarray) -> np.ndarray:
        return run_on_emulator(path, x, threads)

    return Runner(engine=_engine(meta), predict=predict, threads=int(threads), measured=False)
