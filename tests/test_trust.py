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

    from compress.teachers.ensemble import output_probs
    from compress.config import DeviceSection
    from compress.stages.evaluate import ensemble_row

    x = np.arange(N, dtype=np.float32).reshape(N, 1)
    data = SimpleNamespace(x_test=x, y_test=Y)
    device = DeviceSection(threads=1, latency_runs=2)
    probs = np.mean([output_probs(m.output, m.predict(x)) for m in members], axis=0).astype(np.float32)
    m_rows = [{"params": 1, "macs": None, "size_bytes": None} for _ in members]
    runners = [(SimpleNamespace(predict=m.predict, engine="fake"), m) for m in members] if timed else []
    row, _ = ensemble_row(device, data, probs, np.argmax(probs, axis=1), m_rows, runners)
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


def _start_search(cwd: Path, cache: Path, driver: str = "compress.cli", **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", driver, *SEARCH], cwd=cwd, env=_search_env(cache, **extra),
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
    first = _start_search(tmp_path / "a", cache, driver="tests.interrupting", PAUSE_IN_TRIAL=str(fifo))
    second = None
    try:
        assert "trial running" in _read_until(first.stderr, "test hook"), first.stderr.read()
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


def test_a_damaged_search_journal_is_discarded_with_a_warning_and_recomputed(tmp_path):
    cache = tmp_path / "cache"
    first = subprocess.run([sys.executable, "-m", "compress.cli", *SEARCH], cwd=tmp_path, env=_search_env(cache),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    (journal,) = (cache / "search").glob("*.journal")
    for damage in (b"{not json\n", b"\xff\xfe\x00garbage\n"):  # a bad line, then a non-UTF-8 byte
        with open(journal, "ab") as fh:
            fh.write(damage)
        again = subprocess.run([sys.executable, "-m", "compress.cli", *SEARCH], cwd=tmp_path,
                               env=_search_env(cache), capture_output=True, text=True, timeout=600)
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
    env = _search_env(cache)
    proc = subprocess.run([sys.executable, "-c", "import tempfile, compress.search.measure as m; "
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


# -- 9. every numeric option range-checked where it is declared, before any work ----------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from compress import recipe  # noqa: E402

NUMERIC_KEYS = [(section, name, key) for section, keys in recipe.schema().items() for name, key in keys.items()
                if key.types in ((int,), (int, float), (list, float))]


def test_every_numeric_option_declares_its_range():
    assert NUMERIC_KEYS and all(key.bounds is not None for _, _, key in NUMERIC_KEYS), \
        [f"[{s}] {n}" for s, n, k in NUMERIC_KEYS if k.bounds is None]


@settings(max_examples=400, deadline=None)
@given(option=st.sampled_from(NUMERIC_KEYS),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**40, 2**40),
                       st.sampled_from([0, -1, 1, 0.5, 1.5, float("nan"), float("inf"), -float("inf")])))
def test_a_value_passes_the_range_check_exactly_when_its_declaration_accepts_it(option, value):
    import math

    section, name, key = option
    integer = key.types == (int,)
    if integer and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    given_value = [value] if key.types == (list, float) else value
    accepted = (math.isfinite(value) and (not integer or isinstance(value, int))
                and (key.bounds.low is None or (value > key.bounds.low if key.bounds.low_open else value >= key.bounds.low))
                and (key.bounds.high is None or (value < key.bounds.high if key.bounds.high_open else value <= key.bounds.high)))
    if accepted:
        recipe.check_ranges({key.field: given_value})
    else:
        with pytest.raises(InputError) as info:
            recipe.check_ranges({key.field: given_value})
        message = str(info.value)
        assert message.startswith(f"{key.flag} ") and name in message and "\n" not in message


@pytest.mark.parametrize("args, flag", [
    (["distill-and-export", "--lr", "nan"], "--lr"), (["distill-and-export", "--lr", "-1"], "--lr"),
    (["distill-and-export", "--calibration-samples", "-5"], "--calibration-samples"),
    (["distill-and-export", "--seed", "-1"], "--seed"),
    (["distill-and-export", "--max-latency-ms", "nan"], "--max-latency-ms"),
    (["search", "--time-budget", "nan"], "--time-budget"), (["search", "--prune-margin", "nan"], "--prune-margin"),
    (["search", "--alphas", "nan"], "--alphas"), (["search", "--temperatures", "0"], "--temperatures"),
])
def test_bad_numbers_are_exit_2_before_any_work(tmp_path, args, flag):
    proc = _cli(*args, "--teacher", "mlp-small", "--teacher-epochs", "1", "--quiet", cwd=tmp_path, cache=tmp_path / "c")
    assert proc.returncode == 2, proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert line.startswith(f"error: {flag} ") and "expected" in line, line
    assert not (tmp_path / "c" / "teachers").exists(), "refused before any work"


def test_a_recipe_value_out_of_range_names_the_recipe_key(tmp_path):
    (tmp_path / "compress.toml").write_text("[distill]\nlr = nan\n")
    proc = _cli("distill-and-export", "--quiet", cwd=tmp_path, cache=tmp_path / "c")
    assert proc.returncode == 2 and "[distill] lr" in proc.stderr, proc.stderr


@pytest.mark.parametrize("table, expected", [
    ({"accuracy": "nan"}, "expected a finite number"), ({"accuracy": -5}, "in [0, 100]"),
    ({"scale": True}, "expected a number"), ({"shape": [1.5]}, "expected integers"),
    ({"sample_rate": 0}, "expected a rate in Hz"), ({"sample_rate": -8000}, "expected a rate in Hz"),
    ({"size": 20000}, "at most 8192"), (5, "expected a table"),
])
def test_bad_contract_values_are_one_line_errors(table, expected):
    from compress.teachers.contracts import make_contract

    with pytest.raises(InputError, match="teacher 'm.onnx'") as info:
        make_contract("m.onnx", table, "recipe")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_size_whose_elements_do_not_match_the_shape_fails_before_resizing(monkeypatch):
    import compress.teachers.contracts as contracts

    monkeypatch.setattr(contracts, "_resize", lambda *a: pytest.fail("resized before the element check"))
    c = contracts.make_contract("m.onnx", {"size": "8000", "shape": "64"}, "recipe")
    with pytest.raises(InputError, match="has 64 elements"):
        contracts.member_view(c, np.zeros((2, 1, 8, 8), np.float32), {}, "image", "m.onnx")


def test_an_npz_declaring_a_huge_shape_is_refused_before_loading(tmp_path):
    from compress.data import load_data

    path = tmp_path / "huge.npz"
    np.savez(path, x_train=np.zeros((4, 3), np.float32), y_train=np.zeros(4, int), x_test=np.zeros((2, 3), np.float32),
             y_test=np.zeros(2, int))
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["x_train.npy"] = members["x_train.npy"].replace(b"(4, 3)", b"(4000000, 300000)".ljust(6))
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(InputError, match="'x_train' declares shape"):
        load_data(str(path))


def test_a_run_name_that_is_a_symlink_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("precious")
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "run").symlink_to(elsewhere)
    proc = _cli("distill-and-export", "--name", "run", "--teacher", "mlp-small", "--quiet", cwd=tmp_path,
                cache=tmp_path / "c")
    assert proc.returncode == 2 and "symbolic link" in proc.stderr, proc.stderr
    assert (elsewhere / "keep.txt").read_text() == "precious" and (tmp_path / "dist" / "run").is_symlink()


# -- 10. smaller ones ---------------------------------------------------------------------------------------

def test_float_raw_pixels_are_refused_not_clipped():
    from compress.export.common.preprocess import to_raw

    pre = {"input": "uint8", "layout": "NCHW", "channels": "L", "scale": 1 / 255, "mean": [0.5], "std": [0.25]}
    normalized = (np.arange(256, dtype=np.float64).reshape(1, 1, 16, 16) / 255 - 0.5) / 0.25
    assert to_raw(normalized, pre).reshape(-1).tolist() == list(range(256))
    with pytest.raises(InputError, match="outside 0..255"):
        to_raw(np.full((1, 1, 4, 4), 200.0), pre)


def test_validate_refuses_a_manifest_pointing_outside_its_folder(tmp_path):
    from compress.stages.validate import _resolve

    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"x")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"artifact": "../outside.onnx", "target": "onnx"}))
    with pytest.raises(InputError, match="outside the folder"):
        _resolve(folder)


def test_a_builtin_member_recomputed_after_a_discarded_cache_entry_matches_a_cold_run(tmp_path, monkeypatch, digits):
    from compress.teachers import load_teachers

    def members(cache: Path) -> list[str]:
        monkeypatch.setenv("COMPRESS_CACHE_DIR", str(cache))
        loaded = load_teachers(["mlp-small", "mlp-small"], digits, epochs=1, seed=0)
        return [m.fingerprint for m in loaded]

    cold = members(tmp_path / "cold")
    warm_cache = tmp_path / "warm"
    members(warm_cache)
    second = sorted((warm_cache / "teachers").glob("*.pt"))
    for entry in second:  # discard one member's entry: it is recomputed, the other comes from the cache
        entry.unlink()
        break
    assert members(warm_cache) == cold


def test_a_class_folder_linking_to_a_sibling_is_refused(tmp_path):
    from PIL import Image

    from compress.data import load_data

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "c").symlink_to(tmp_path / "imgs" / "a")
    with pytest.raises(InputError, match="links to the class folder 'a'"):
        load_data(str(tmp_path / "imgs"))


def test_a_teacher_file_with_a_question_mark_in_its_name_loads_as_is(tmp_path):
    from compress.teachers.contracts import split_spec

    odd = tmp_path / "what?.onnx"
    odd.write_bytes(b"x")
    assert split_spec(str(odd)) == (str(odd), {})
    assert split_spec(f"{odd}?scale=1/16") == (str(odd), {"scale": "1/16"})
