"""Audio folders -> raw-PCM ``Dataset``: labels from folders or file names, split rules, resampling,
pad/crop, unreadable files; plus the real FSDD layout (skipped when ../shared is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from compress.data.audio import fit_length, load_audio_folder, read_clip  # noqa: E402
from compress.data import detect_format, load_data  # noqa: E402
from compress.core.errors import InputError  # noqa: E402
from tests.conftest import FSDD  # noqa: E402


def _tone(freq: float, n: int, rate: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def _write(path, data, rate=8000, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype=subtype)
    return path


def _flat_collection(root, labels=("yes", "no"), speakers=("ann", "bob", "cid"), takes=6, rate=8000):
    for li, label in enumerate(labels):
        for s in speakers:
            for i in range(takes):
                _write(root / f"{label}_{s}_{i}.wav", _tone(300 + 200 * li + 10 * i, 4000 + 100 * i, rate), rate)
    return root


def test_fsdd_style_names_autodetect_index_split(tmp_path):
    root = _flat_collection(tmp_path / "digits")
    assert detect_format(root) == "audio-folder"
    ds = load_data(str(root))
    assert ds.input_kind == "audio" and ds.labels == ["no", "yes"]
    assert ds.x_train.shape == (2 * 3 * 1, 8000) and ds.x_test.shape == (2 * 3 * 5, 8000)  # index 0-4 -> test
    assert ds.x_train.dtype == np.float32 and np.abs(ds.x_train).max() <= 1.0
    n = ds.normalization
    assert n["sample_rate"] == 8000 and n["num_samples"] == 8000 and n["split"] == "index<5"
    assert "int16 / 32768" in n["pcm_scaling"] and "centre-cropped" in n["padding"]
    json.dumps(ds.describe())  # the recipe goes into manifests


def test_recordings_subfolder_and_numeric_label_order(tmp_path):
    _flat_collection(tmp_path / "set" / "recordings", labels=("10", "2", "0"), takes=2)
    ds = load_audio_folder(tmp_path / "set")
    assert ds.labels == ["0", "2", "10"] and ds.name == "set"


@pytest.mark.parametrize("split, n_test", [("index>=4", 2 * 3 * 2), ("speaker=bob", 2 * 6), ("speaker=ann,cid", 2 * 12)])
def test_split_rules(tmp_path, split, n_test):
    ds = load_audio_folder(_flat_collection(tmp_path / "d"), split=split)
    assert len(ds.x_test) == n_test and len(ds.x_train) == 36 - n_test


def test_random_split_is_stratified_and_seeded(tmp_path):
    root = _flat_collection(tmp_path / "d")
    a = load_audio_folder(root, split="random", test_fraction=0.25, seed=1)
    b = load_audio_folder(root, split="random", test_fraction=0.25, seed=1)
    assert len(a.x_test) == 9 and np.array_equal(a.x_test, b.x_test)
    assert sorted(np.bincount(a.y_test).tolist()) == [4, 5]


def test_custom_pattern_and_bad_rules(tmp_path):
    root = tmp_path / "kw"
    for i in range(4):
        _write(root / f"take{i}-up.wav", _tone(440, 800, 8000))
        _write(root / f"take{i}-down.wav", _tone(220, 800, 8000))
    ds = load_audio_folder(root, label_pattern="take{index}-{label}", split="index==0")
    assert ds.labels == ["down", "up"] and len(ds.x_test) == 2
    with pytest.raises(InputError, match="label_pattern"):
        load_audio_folder(root, label_pattern="take{index}")
    with pytest.raises(InputError, match="does not match label_pattern"):
        load_audio_folder(root, label_pattern="{label}_{speaker}_{index}")
    with pytest.raises(InputError, match="no {speaker} field"):
        load_audio_folder(root, label_pattern="take{index}-{label}", split="speaker=x")
    with pytest.raises(InputError, match="expected 'random'"):
        load_audio_folder(root, label_pattern="take{index}-{label}", split="bogus rule!")
    with pytest.raises(InputError, match="cannot tell the label"):
        load_audio_folder(root)  # flat names that are not label_speaker_index


def test_class_folders_with_and_without_train_test(tmp_path):
    for cls in ("left", "right"):
        for i in range(5):
            _write(tmp_path / "a" / cls / f"{i}.wav", _tone(300 if cls == "left" else 600, 2000, 8000))
            _write(tmp_path / "b" / "train" / cls / f"{i}.wav", _tone(300, 2000, 8000))
        _write(tmp_path / "b" / "test" / cls / "x.wav", _tone(300, 2000, 8000))
    a = load_audio_folder(tmp_path / "a", test_fraction=0.2)
    assert a.labels == ["left", "right"] and len(a.x_test) == 2 and a.normalization["split"] == "random"
    b = load_audio_folder(tmp_path / "b")
    assert b.normalization["split"] == "folders" and len(b.x_train) == 10 and len(b.x_test) == 2


def test_resample_mono_mix_pad_and_crop(tmp_path):
    stereo = np.stack([_tone(500, 16000, 16000, 0.4), _tone(500, 16000, 16000, 0.2)], axis=1)
    clip = read_clip(_write(tmp_path / "s.wav", stereo, 16000), 8000)
    assert clip.shape == (8000,)
    ref = _tone(500, 8000, 8000, 0.3)
    assert np.abs(clip[100:-100] - ref[100:-100]).max() < 2e-3  # polyphase resampling of a 500 Hz tone
    # 44.1 kHz -> 8 kHz (ratio 80/441)
    assert read_clip(_write(tmp_path / "h.wav", _tone(300, 44100, 44100), 44100), 8000).shape == (8000,)
    x = np.arange(10, dtype=np.float32)
    assert fit_length(x, 14).tolist() == list(range(10)) + [0] * 4  # pad at the end
    assert fit_length(x, 4).tolist() == [3, 4, 5, 6]  # centre crop
    assert fit_length(x, 10).tolist() == list(range(10))


def test_pcm_scaling_is_int16_over_32768(tmp_path):
    pcm = np.array([0, 16384, -32768, 32767, 1], dtype=np.int16)
    clip = read_clip(_write(tmp_path / "p.wav", pcm), 8000)
    assert clip.tolist() == (pcm / 32768.0).astype(np.float32).tolist()


def test_unreadable_and_empty_files(tmp_path):
    root = _flat_collection(tmp_path / "d", takes=6)
    (root / "yes_bob_9.wav").write_bytes(b"RIFF not really a wav")
    _write(root / "no_bob_9.wav", np.zeros(0, np.float32))
    with pytest.raises(InputError, match=r"(yes_bob_9|no_bob_9)\.wav: (unreadable|empty) audio"):
        load_audio_folder(root)
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable or empty audio file\(s\)"):
        ds = load_audio_folder(root, allow_unreadable=True)
    assert len(ds.x_train) + len(ds.x_test) == 36
    assert sorted(p.split("/")[-1] for p in ds.normalization["skipped_files"]) == ["no_bob_9.wav", "yes_bob_9.wav"]


def test_empty_folder_and_bad_split(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match="no audio files"):
        load_audio_folder(tmp_path / "e")
    root = _flat_collection(tmp_path / "d", takes=2)
    with pytest.raises(InputError, match="expected both non-empty"):
        load_audio_folder(root, split="index<5")  # every take is 0 or 1: nothing left to train on
    with pytest.raises(InputError, match="not found"):
        load_audio_folder(root, split="speaker=zed")


def test_real_fsdd_default_split():
    if not (FSDD / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {FSDD} (the shared data sets are absent in a fresh clone)")
    ds = load_data(str(FSDD))
    assert ds.name == "fsdd" and ds.input_kind == "audio"
    assert ds.x_train.shape == (2700, 8000) and ds.x_test.shape == (300, 8000)
    assert ds.labels == [str(i) for i in range(10)] and np.bincount(ds.y_test).tolist() == [30] * 10
    assert np.abs(ds.x_test).max() <= 1.0 and ds.normalization["split"] == "index<5"
