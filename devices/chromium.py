"""Headless Chromium: find it, install it on Debian, and screenshot a local HTML file.

Why: ``report.html`` is meant to be looked at, so the tests (and a person checking CI output without a
desktop) render it in a real browser and look at the pixels, rather than trusting the HTML source. Build
and CI machines here have no network beyond the package mirror, so Chromium is started with everything
that would phone home switched off, in a fresh throw-away profile, and it only ever opens ``file://``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable to use, or None when there is none."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def version(path: str) -> str | None:
    """``Chromium 150.0...`` as printed by ``--version`` (stdout only: Debian's wrapper script chatters on stderr)."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def setup(progress=None) -> dict:
    """Make sure Chromium is there; install Debian's ``chromium`` package when it is not.

    ``progress`` (optional) is called with one-line status messages. Returns ``{"path", "version",
    "seconds", "cached"}``; ``cached`` is True when it was already installed. Raises ``RuntimeError`` with a
    one-line reason when it is missing and cannot be installed here (not root, not Debian, apt failed),
    because installing a browser is never worth a silent partial state.
    """
    say = progress or (lambda msg: None)
    started = time.perf_counter()
    found = find_chromium()
    if found:
        return {"path": found, "version": version(found), "seconds": round(time.perf_counter() - started, 2),
                "cached": True}
    if not Path("/etc/debian_version").is_file() or shutil.which("apt-get") is None:
        raise RuntimeError("Chromium is not installed and this is not a Debian system with apt-get; "
                           "install chromium (or google-chrome) yourself")
    if os.geteuid() != 0:
        raise RuntimeError("Chromium is not installed and installing it needs root: run `sudo apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> subprocess.CompletedProcess:
        say(f"apt-get {' '.join(args)}")
        return subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env)

    proc = apt("install", "-y", "chromium")
    if proc.returncode != 0:  # stale or missing package lists are the usual cause: refresh once and retry
        apt("update")
        proc = apt("install", "-y", "chromium")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"apt-get install -y chromium failed (exit {proc.returncode}): {last}")
    found = find_chromium()
    if not found:
        raise RuntimeError("apt-get installed chromium but no chromium executable is on PATH")
    say(f"installed {found}")
    return {"path": found, "version": version(found), "seconds": round(time.perf_counter() - started, 2),
            "cached": False}


def screenshot(html_path, png_path, width: int = 1280, height: int = 2000, timeout: float = 60) -> Path:
    """Render ``html_path`` in headless Chromium and save a ``width`` x ``height`` PNG at ``png_path``.

    The network is closed on these machines, so every background service that would try to reach it
    (component updates, sync, QUIC, first-run) is disabled; that also keeps the run from hanging until
    the timeout. Raises ``RuntimeError`` when Chromium is missing, times out or writes no image.
    """
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("Chromium not found; call compress.devices.chromium.setup() or install chromium")
    html_path = Path(html_path).resolve()
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="compress-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
               f"--user-data-dir={profile}", f"--screenshot={png_path}", f"--window-size={width},{height}",
               html_path.as_uri()]
        # own process group: Chromium forks helpers, and on a timeout all of them must go, not just the parent
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError(f"Chromium did not finish the screenshot within {timeout:g} s") from None
    if not png_path.is_file() or png_path.stat().st_size == 0:
        tail = (err or "").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"Chromium wrote no screenshot (exit {proc.returncode}): {tail[0]}")
    return png_path
