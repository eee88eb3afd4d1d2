"""Shared fixtures: an isolated cache per test session, the shared data sets, and small real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
MNIST = SHARED / "mnist"
FSDD = SHARED / "fsdd"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Never touch the user's cache: every test session gets its own."""
    from compress.devices.arm64_emu import emu_root

    os.environ.setdefault("COMPRESS_EMU_DIR", str(emu_root()))  # the emulator built before the session is reused
    path = tmp_path_factory.mktemp("compress-cache")
    os.environ["COMPRESS_MACHINE_DIR"] = str(tmp_path_factory.mktemp("compress-machine"))  # calibrations too
    old = os.environ.get("COMPRESS_CACHE_DIR")
    os.environ["COMPRESS_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("COMPRESS_CACHE_DIR", None)
    else:
        os.environ["COMPRESS_CACHE_DIR"] = old


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Test models are tiny: one intra-op thread is fastest and immune to OpenMP spin-waits on a busy box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def require_mnist() -> Path:
    if not (MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST IDX files not found at {MNIST} (the shared data sets are absent in a fresh clone)")
    return MNIST


@pytest.fixture(scope="session")
def fsdd_dataset():
    """The FSDD clips through the audio loader, once per session (skips where ../shared is absent)."""
    pytest.importorskip("soundfile")
    if not (FSDD / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {FSDD} (the shared data sets are absent in a fresh clone)")
    from compress.data import load_data

    return load_data(str(FSDD))


def fsdd_test_clips(ds, count: int = 10):
    """``count`` real FSDD test clips spread across the digits (the test split is sorted by label)."""
    import numpy as np

    step = len(ds.x_test) // count
    assert len(set(ds.y_test[::step][:count])) >= count // 2
    return np.ascontiguousarray(ds.x_test[::step][:count])


@pytest.fixture(scope="session")
def digits():
    from compress.data import load_digits

    return load_digits()


def export_and_open(model, example, folder: Path, target: str, info, **options):
    """Export ``model`` with the target's exporter and open the file in the target's runner (the registries)."""
    from compress.export import TARGETS

    backend = TARGETS[target]
    return backend.open(backend.export(model, example, folder / backend.file_name, info, **options))
