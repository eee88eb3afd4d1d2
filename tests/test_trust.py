"""Trust, second round (issue 23): no code runs from a model file, no folder is deleted by a file output, no
budget passes on a wrong number. Each test failed on the code before the fix."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COMPRESS_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "compress.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# -- 1. a .pt2 teacher runs no code while loading ------------------------------------------------------------

class _Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plain_pt2(path: Path) -> Path:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), str(path))
    return path


def _rewrite(src: Path, dest: Path, change) -> Path:
    """A copy of the archive ``src`` with ``change(relative name, bytes) -> bytes | None`` applied (None drops)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            rel = info.filename.partition("/")[2]
            data = change(rel, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
        for rel, data in getattr(change, "extra", {}).items():
            zout.writestr(f"{zin.namelist()[0].partition('/')[0]}/{rel}", data)
    return dest


def _evil_weight(marker: Path):
    def change(rel: str, data: bytes) -> bytes:
        if rel.endswith("_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"]))
            config["config"][first]["use_pickle"] = True
            return json.dumps(config).encode()
        if rel == "data/weights/weight_0":
            return pickle.dumps(_Payload(str(marker)))
        return data
    return change


def _evil_constant(marker: Path):
    def change(rel: str, data: bytes) -> bytes:
        if rel.endswith("_constants_config.json"):
            return json.dumps({"config": {"c": {"path_name": "opaque_obj_0", "is_param": False,
                                                "use_pickle": True, "tensor_meta": None}}}).encode()
        return data
    change.extra = {"data/constants/opaque_obj_0": pickle.dumps(_Payload(str(marker)))}
    return change


def _evil_sample_inputs(marker: Path):
    def change(rel: str, data: bytes) -> bytes:
        if rel.startswith("data/sample_inputs/"):
            buffer = io.BytesIO()
            torch.save(_Payload(str(marker)), buffer)
            return buffer.getvalue()
        return data
    return change


@pytest.mark.parametrize("craft, what", [(_evil_weight, "pickled"), (_evil_constant, "pickled object"),
                                         (_evil_sample_inputs, "sample inputs")])
def test_a_pt2_with_pickled_payloads_is_refused_before_any_code_runs(tmp_path, craft, what):
    from compress.teachers import load_pt2 as load_teacher

    marker = tmp_path / "payload-ran"
    evil = _rewrite(_plain_pt2(tmp_path / "plain.pt2"), tmp_path / "evil.pt2", craft(marker))
    with pytest.raises(InputError, match=what) as info:
        load_teacher(str(evil))
    assert "evil.pt2" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists(), "code from the .pt2 ran while loading it"


def test_a_pt2_with_compiled_code_is_refused(tmp_path):
    from compress.teachers import load_pt2 as load_teacher

    change = lambda rel, data: data  # noqa: E731
    change.extra = {"data/aotinductor/model/model.so": b"\x7fELF"}
    evil = _rewrite(_plain_pt2(tmp_path / "plain.pt2"), tmp_path / "aoti.pt2", change)
    with pytest.raises(InputError, match="compiled code"):
        load_teacher(str(evil))


def test_a_plain_pt2_still_loads_and_predicts(tmp_path, digits):
    from compress.teachers import load_pt2 as load_teacher

    member = load_teacher(str(_plain_pt2(tmp_path / "plain.pt2")))
    assert member.logits(digits.x_test[:4]).shape == (4, 10)


def test_the_cli_refuses_a_pickled_pt2_with_exit_2_and_runs_nothing(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = _rewrite(_plain_pt2(tmp_path / "plain.pt2"), tmp_path / "evil.pt2", _evil_weight(marker))
    proc = _cli("soft-targets", "--teacher", str(evil), "-o", "out.npz", "--limit-train", "100", cwd=tmp_path,
                cache=tmp_path / "c")
    assert proc.returncode == 2, proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert "evil.pt2" in line and "pickled" in line
    assert not marker.exists() and not (tmp_path / "out.npz").exists()


# -- 2. a file output never replaces a folder ----------------------------------------------------------------

def _project(folder: Path) -> Path:
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    return folder


def test_init_force_does_not_replace_a_folder(tmp_path):
    project = _project(tmp_path / "myproject")
    proc = _cli("init", "myproject/", "--force", cwd=tmp_path, cache=tmp_path / "c")
    assert proc.returncode == 2, proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert "myproject" in line and "folder" in line
    assert (project / "keep.txt").read_text() == "precious"


def test_soft_targets_does_not_replace_a_folder_named_like_its_output(tmp_path):
    folder = _project(tmp_path / "X.npz")
    proc = _cli("soft-targets", "--teacher", "mlp-small", "--teacher-epochs", "1", "--limit-train", "100",
                "-o", "X.npz", "--quiet", cwd=tmp_path, cache=tmp_path / "c")
    assert proc.returncode == 2, proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert "X.npz" in line and "folder" in line
    assert (folder / "keep.txt").read_text() == "precious"
    assert not (tmp_path / "c" / "teachers").exists(), "refused before any work"


def test_the_atomic_move_itself_refuses_a_file_over_a_folder(tmp_path):
    from compress.core.atomic import write_text

    folder = _project(tmp_path / "out.json")
    with pytest.raises(InputError, match="is a folder"):
        write_text(folder, "{}")
    assert (folder / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"], "no temporary left behind"


# -- 3. the teacher-ensemble row from probabilities, not log(0) ----------------------------------------------

K, N = 4, 40
Y = np.arange(N) % K


def _member(output: str, wrong_rows: list[int], margin: float = 1.0):
    """A fake member answering ``Y`` except on ``wrong_rows`` (class + 1 there): one-hot labels, or logits
    with ``margin`` between the answer and the rest (2000: float64 softmax underflows to exact 0 and 1)."""
    from types import SimpleNamespace

    answer = Y.copy()
    answer[wrong_rows] = (answer[wrong_rows] + 1) % K
    table = np.eye(K, dtype=np.float64)[answer] * (1.0 if output == "label" else margin)

    def predict(x: np.ndarray) -> np.ndarray:
        return table[x[:, 0].astype(int)]

    return SimpleNamespace(output=output, predict=predict, own_input=lambda b: b, logits=predict, name=output), answer


def _ensemble_accuracy(members, timed: bool) -> float:
    from types import SimpleNamespace

    from compress.soft_targets import output_probs
    from compress.stages.evaluate import ensemble_row

    x = np.arange(N, dtype=np.float32).reshape(N, 1)
    data = SimpleNamespace(x_test=x, y_test=Y)
    cfg = SimpleNamespace(latency_runs=2, threads=1)
    probs = np.mean([output_probs(m.output, m.predict(x)) for m in members], axis=0).astype(np.float32)
    m_rows = [{"params": 1, "macs": None, "size_bytes": None} for _ in members]
    runners = [(SimpleNamespace(predict=m.predict, engine="fake"), m) for m in members] if timed else []
    row, _ = ensemble_row(cfg, data, probs, np.argmax(probs, axis=1), m_rows, runners)
    return row["accuracy"]


@pytest.mark.parametrize("timed", [True, False], ids=["same-runtime", "mixed-runtimes"])
def test_the_ensemble_row_of_label_only_confident_and_mixed_members_matches_hand_counts(timed):
    label, label_answer = _member("label", wrong_rows=[0, 5, 10, 15])  # 36 of 40 right: 90%
    confident, confident_answer = _member("logits", wrong_rows=[1, 2], margin=2000.0)  # 38 of 40: 95%
    assert _ensemble_accuracy([label], timed) == pytest.approx(36 / 40)
    assert _ensemble_accuracy([confident], timed) == pytest.approx(38 / 40)
    # mixed: the mean of two one-hots; where they disagree the tie goes to the lower class index (argmax)
    votes = np.eye(K)[label_answer] + np.eye(K)[confident_answer]
    by_hand = float(np.mean(np.argmax(votes, axis=1) == Y))
    assert 0.5 < by_hand < 1.0
    assert _ensemble_accuracy([label, confident], timed) == pytest.approx(by_hand)


# -- 5. a full cache disk: one warning, the run goes on without caching --------------------------------------

_FULL_DISK = """
import logging, resource, signal, sys, torch
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from compress.core.cache import write_entry
from compress.pipeline import save_traceback
ok = write_entry(Path(sys.argv[1]) / "teacher.pt", lambda tmp: torch.save({"w": torch.zeros(100_000)}, str(tmp)))
print("written" if ok else "not written")
try:
    raise ValueError("x" * 10_000)
except ValueError:
    print("traceback:", save_traceback("distill"))
"""


def test_a_full_cache_disk_is_one_warning_and_leaves_nothing_behind(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**os.environ, "COMPRESS_CACHE_DIR": str(cache), "TMPDIR": str(tmp_path / "tmp"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(cache)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "not written" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "cannot write" in line]
    assert len(warnings) == 1 and "teacher.pt" in warnings[0] and "continuing without caching" in warnings[0]
    assert sorted(p.name for p in cache.iterdir()) == ["errors"] or sorted(p.name for p in cache.iterdir()) == []
    left = [p for p in cache.rglob("*") if p.is_file()] + [p for p in (tmp_path / "tmp").rglob("*") if p.is_file()]
    assert left == [], f"half-written files left behind: {left}"
    assert "traceback: None" in proc.stdout


# -- 6-8. compress search: shared caches, damaged journals, killed writers' leftovers -------------------------

SEARCH = ["search", "--family", "mlp", "--widths", "0.5", "--depths", "0.5", "--schemes", "none", "--epochs", "1",
          "--teacher", "mlp-small", "--teacher-epochs", "1", "--time-budget", "5", "--latency-runs", "3",
          "--limit-train", "300", "--quiet", "--json", "--out", "dist"]


def _search_env(cache: Path, **extra) -> dict:
    return {**os.environ, "COMPRESS_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def _start_search(cwd: Path, cache: Path, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compress.cli", *SEARCH], cwd=cwd, env=_search_env(cache, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _read_until(stream, *needles: str) -> str:
    """Lines of ``stream`` up to the first holding one of ``needles`` (blocking reads: no timing)."""
    for line in stream:
        if any(n in line for n in needles):
            return line
    return ""


def test_two_searches_on_one_cache_take_turns_and_the_second_reuses_the_first(tmp_path):
    cache, fifo = tmp_path / "cache", tmp_path / "pause"
    os.mkfifo(fifo)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _start_search(tmp_path / "a", cache, COMPRESS_TEST_SEARCH_PAUSE_AFTER_ASK=str(fifo))
    second = None
    try:
        assert "trial 0 running" in _read_until(first.stderr, "test hook"), first.stderr.read()
        second = _start_search(tmp_path / "b", cache)  # starts while the first holds a running trial
        line = _read_until(second.stderr, "waiting for another compress search", "test hook")
        assert "waiting for another compress search" in line, "the second search did not wait for the first"
        fifo.write_text("go\n")  # lets the first one finish its trial
        out_first, err_first = first.communicate(timeout=600)
        out_second, err_second = second.communicate(timeout=600)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first.returncode == 0, err_first
    assert second.returncode == 0, err_second
    summary = json.loads(out_second)
    assert (summary["trained"], summary["resumed"]) == (0, 1), summary
    assert summary["chosen"] == json.loads(out_first)["chosen"]


@pytest.mark.parametrize("damage", [b"{not json\n", b"\xff\xfe\x00garbage\n"], ids=["bad-line", "non-utf8"])
def test_a_damaged_search_journal_is_discarded_with_a_warning_and_recomputed(tmp_path, damage):
    cache = tmp_path / "cache"
    first = subprocess.run([sys.executable, "-m", "compress.cli", *SEARCH], cwd=tmp_path, env=_search_env(cache),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    (journal,) = (cache / "search").glob("*.journal")
    with open(journal, "ab") as fh:
        fh.write(damage)
    again = subprocess.run([sys.executable, "-m", "compress.cli", *SEARCH], cwd=tmp_path, env=_search_env(cache),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    warnings = [line for line in again.stderr.splitlines() if "discarding" in line]
    assert len(warnings) == 1 and journal.name in warnings[0] and "journal" in warnings[0], again.stderr
    result = json.loads(again.stdout)  # measured again (the student loaded from its verified checkpoint)
    assert result["chosen"] is not None and [c["status"] for c in result["candidates"]] == ["measured"]


def test_a_killed_searchs_scratch_is_under_the_cache_and_cleaned_by_the_next_command(tmp_path):
    cache = tmp_path / "cache"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited: its temporaries are leftovers
    scratch = cache / "search" / f".scratch.{dead_pid}.abc123.tmp"
    (scratch / "none").mkdir(parents=True)
    (scratch / "none" / "model.onnx").write_bytes(b"\0" * 1024)
    seen = []
    env = _search_env(cache)
    proc = subprocess.run([sys.executable, "-c", "import tempfile, compress.search_measure as m; "
                           "d = m.scratch_folder(); print(d.name); print(tempfile.gettempdir())"],
                          env=env, capture_output=True, text=True, timeout=120)
    seen = proc.stdout.split()
    assert Path(seen[0]).parent == cache / "search" and not seen[0].startswith(seen[1] + "/compress-search-")
    result = subprocess.run([sys.executable, "-m", "compress.cli", *SEARCH], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert not scratch.exists(), "a dead search's scratch folder was left behind"
    assert not [p for p in (cache / "search").iterdir() if p.name.startswith(".scratch.")]


def test_soft_targets_cleans_a_killed_writers_temporary_beside_its_output(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / f".big.npz.{int(dead.stdout)}.x1y2.tmp"
    leftover.mkdir()
    (leftover / "big.npz").write_bytes(b"\0" * 4096)
    proc = _cli("soft-targets", "--teacher", "mlp-small", "--teacher-epochs", "1", "--limit-train", "100",
                "-o", "big.npz", "--quiet", cwd=tmp_path, cache=tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "big.npz").is_file() and not leftover.exists()
