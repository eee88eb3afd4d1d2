"""Real data as apps feed it (issue 15): colour images at any size, per-channel statistics, augmentation
that never touches the test split, built-in teachers with a validation split and early stopping, and
defaults chosen for the data's size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from compress import defaults
from compress.cli import app
from compress.core.errors import InputError
from compress.data import Dataset, fit_image, load_data, parse_image_size


def _colour_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real images: scikit-learn's digits painted with a random foreground and background colour (uint8 RGB)."""
    d = load_digits()
    rng = np.random.default_rng(seed)
    gray = d.images[:n] / 16.0
    fg, bg = rng.integers(0, 256, (n, 3)), rng.integers(0, 256, (n, 3))
    rgb = bg[:, None, None] * (1 - gray[..., None]) + fg[:, None, None] * gray[..., None]
    return rgb.round().astype(np.uint8), d.target[:n]


def _write_folder(root, images, labels, sizes) -> None:
    """Class-per-folder PNGs, image i upscaled to ``sizes[i % len(sizes)]`` (width, height)."""
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize(sizes[i % len(sizes)], Image.Resampling.NEAREST).save(folder / f"{i:04d}.png")


@pytest.mark.parametrize("image_size, expected", [(None, (24, 24)), ("16", (16, 16)), ("12x20", (12, 20))])
def test_rgb_folders_of_mixed_sizes_load_resized_with_per_channel_statistics(tmp_path, image_size, expected):
    images, labels = _colour_digits(120)
    _write_folder(tmp_path / "colour", images, labels, [(24, 24), (24, 24), (40, 30), (18, 32)])
    ds = load_data(str(tmp_path / "colour"), image_size=image_size, test_fraction=0.25)
    assert ds.input_shape == (3, *expected)
    norm = ds.normalization
    assert norm["channels"] == "RGB" and len(norm["mean"]) == 3 and len(norm["std"]) == 3
    # the statistics are the training split's, per channel: the normalized training data has mean 0, std 1
    assert np.allclose(ds.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    assert np.allclose(ds.x_train.std(axis=(0, 2, 3)), 1, atol=1e-3)
    assert len(set(np.round(norm["mean"], 4))) == 3, "colour channels have different statistics"
    assert ds.raw_dtype == "uint8"
    pre = ds.preprocessing
    assert pre["input"] == "uint8" and pre["channels"] == "RGB" and pre["mean"] == norm["mean"]
    raw = np.round((ds.x_test * np.asarray(norm["std"])[:, None, None] + np.asarray(norm["mean"])[:, None, None])
                   / norm["scale"])
    assert raw.min() >= 0 and raw.max() <= 255 and np.allclose(raw, np.round(raw), atol=1e-3)


def test_grayscale_folder_is_one_channel_and_the_digits_keep_float_input(tmp_path):
    d = load_digits()
    images = (d.images[:60] * 15).astype(np.uint8)
    _write_folder(tmp_path / "gray", images, d.target[:60], [(8, 8)])
    ds = load_data(str(tmp_path / "gray"), test_fraction=0.25)
    assert ds.input_shape == (1, 8, 8) and ds.normalization["channels"] == "L"
    assert ds.preprocessing["channels"] == "L"
    assert load_data().preprocessing == {}, "the digits are not 8-bit images: the app keeps feeding floats"


def test_resize_covers_and_crops_the_centre():
    img = np.zeros((40, 80), np.uint8)
    img[10:30, 30:50] = 255  # a square in the centre of a wide image
    out = np.asarray(fit_image(Image.fromarray(img), (20, 20)))
    assert out.shape == (20, 20)
    assert out[6:14, 6:14].min() == 255 and out[0, 0] == 0 and out[:, 0].max() == 0  # the square, centred


@pytest.mark.parametrize("bad", ["0", "abc", "10x", "1x2x3", "-4", "5000"])
def test_bad_image_size_is_one_line_error(bad):
    with pytest.raises(InputError, match="--image-size"):
        parse_image_size(bad)


def test_bad_image_size_on_the_cli_exits_2_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["distill-and-export", "--image-size", "big", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--image-size 'big'" in result.output and len(result.output.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_augmentation_parses_and_changes_only_image_batches():
    from compress.distill.train import Augment, augment_batch, parse_augment

    assert parse_augment("crop=3,flip") == Augment(3, True)
    assert parse_augment("none") == Augment() and not parse_augment("none")
    with pytest.raises(InputError, match="--augment"):
        parse_augment("rotate")
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    flipped = augment_batch(x, Augment(0, True), torch.Generator().manual_seed(1))
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x))
    features = torch.randn(5, 10)
    assert augment_batch(features, Augment(2, True), torch.Generator()) is features


def test_augmentation_never_sees_the_test_split(tmp_path, monkeypatch):
    """Every batch the augmentation receives (teachers and student) is made of training rows only, and
    the reported accuracy is the unaugmented test split's."""
    import compress.distill.train as train
    from compress.pipeline import RunConfig, run

    images, labels = _colour_digits(400)
    _write_folder(tmp_path / "data", images, labels, [(16, 16)])
    seen = []
    real = train.augment_batch
    monkeypatch.setattr(train, "augment_batch", lambda x, a, g: seen.append(x.clone()) or real(x, a, g))
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    report = run(RunConfig.from_settings(data=str(tmp_path / "data"), augment="crop=2,flip", student_augment="teachers",
                                         teachers=["cnn"], teacher_epochs=2, student="cnn-small", epochs=2, latency_runs=3,
                                         out=str(tmp_path / "dist")), quiet=True)
    ds = load_data(str(tmp_path / "data"))
    assert len(seen) >= 4, "teachers and student were augmented"
    train_rows = {r.tobytes() for r in ds.x_train}
    test_rows = {r.tobytes() for r in ds.x_test}
    originals = [row for batch in seen for row in batch]
    assert len(originals) == sum(len(b) for b in seen)
    assert not any(r.numpy().tobytes() in test_rows for r in originals)
    assert report["run"]["augment"] == "random crop after padding 2px, horizontal flip"
    assert report["run"]["student_augment"] == report["run"]["augment"]
    assert report["run"]["data"]["test"] == len(ds.x_test) and len(train_rows) > 0


def test_the_student_trains_on_the_images_its_soft_targets_came_from(tmp_path, monkeypatch):
    """``--student-augment auto`` (the default): the teachers train on cropped images, the student on the
    images the soft targets were computed on (no augmentation); the report says both."""
    import compress.pipeline as pipeline
    from compress.distill.train import Augment

    images, labels = _colour_digits(300)
    _write_folder(tmp_path / "data", images, labels, [(16, 16)])
    student_fits = []
    real_fit = pipeline.fit
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: student_fits.append(k["augment"]) or real_fit(*a, **k))
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    report = pipeline.run(pipeline.RunConfig.from_settings(
        data=str(tmp_path / "data"), teachers=["cnn"], teacher_epochs=2, student="cnn-small", epochs=2, latency_runs=3,
        out=str(tmp_path / "dist")), quiet=True)
    assert student_fits == [Augment()]
    assert report["run"]["augment"] == "random crop after padding 1px" and report["run"]["student_augment"] == "none"


def test_student_augment_choices(tmp_path):
    """auto: none for images, the teachers' for audio; ``teachers``; an explicit spec; a bad one is one line."""
    from dataclasses import replace

    from compress.distill.train import Augment
    from compress.pipeline import RunConfig, augmentation, student_augmentation

    images, labels = _colour_digits(60)
    _write_folder(tmp_path / "data", images, labels, [(20, 20)])
    images_ds = load_data(str(tmp_path / "data"), test_fraction=0.25)
    audio_ds = replace(images_ds, x_train=np.zeros((4, 800), np.float32), input_kind="audio",
                       normalization={"sample_rate": 8000})
    default = RunConfig.from_settings()
    assert augmentation(default, images_ds) == Augment(crop=2)
    assert student_augmentation(default, images_ds) == Augment()
    assert student_augmentation(default.with_settings(student_augment="teachers"), images_ds) == Augment(crop=2)
    assert student_augmentation(default.with_settings(student_augment="crop=3,flip"), images_ds) == Augment(3, True)
    noisy = default.with_settings(augment="shift=50,noise=5:20")
    assert student_augmentation(noisy, audio_ds) == augmentation(noisy, audio_ds)
    assert student_augmentation(noisy, audio_ds).shift_ms == 50 and student_augmentation(noisy, audio_ds).sample_rate == 8000
    with pytest.raises(InputError, match="--student-augment 'rotate'"):
        default.with_settings(student_augment="rotate").validate()


def test_validation_split_is_stratified_and_held_out():
    from compress.teachers.training import validation_split

    y = np.repeat(np.arange(5), 40)
    train, val = validation_split(y, 0.1, seed=0)
    assert len(val) == 20 and not set(train) & set(val) and len(train) + len(val) == len(y)
    assert np.bincount(y[val]).tolist() == [4] * 5
    lonely = np.array([0, 0, 0, 1, 1, 2])  # class 2 has one sample: no stratified split possible
    assert len(validation_split(lonely, 0.5, seed=0)[1]) == 0


def test_early_stopping_keeps_the_best_epoch_and_says_why(tmp_path, monkeypatch):
    from compress.teachers.training import TeacherRecipe, train_builtin_module, validation_split
    from compress.distill.train import predict_logits

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path))
    ds = load_data(limit_train=400)
    module, curve, cached = train_builtin_module("mlp-small", ds, recipe=TeacherRecipe(epochs=40, patience=2), seed=0)
    assert not cached and curve["epochs_run"] < 40 and curve["stopped"].startswith("early stopping")
    assert curve["epochs_run"] >= 20  # never in the first half of the schedule, while the rate is high
    _, val = validation_split(ds.y_train, 0.1, seed=0)
    acc = float((predict_logits(module, ds.x_train[val]).argmax(1) == ds.y_train[val]).mean())
    assert acc == pytest.approx(max(curve["val_accuracy"]))
    assert curve["val_accuracy"][curve["best_epoch"] - 1] == max(curve["val_accuracy"])
    again, curve2, cached2 = train_builtin_module("mlp-small", ds, recipe=TeacherRecipe(epochs=40, patience=2), seed=0)
    assert cached2 and curve2["val_accuracy"] == curve["val_accuracy"]
    assert curve["seconds"] > 0 and curve2["seconds"] == curve["seconds"]  # the training run's time, kept with it
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), again.state_dict().values()))


def test_image_members_train_with_label_smoothing_and_audio_members_without(tmp_path, monkeypatch):
    """The image recipe (``RECIPE_BY_KIND``) reaches the members' loss: with label smoothing 0.1 over 10 classes the
    cross-entropy cannot fall below the smoothed targets' entropy (about 0.50), without it a member that fits its
    rows goes far below; audio data keeps the general recipe."""
    from compress.pipeline import RunConfig, teacher_recipe
    from compress.teachers.training import TeacherRecipe, train_builtin_module

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path))
    ds = load_data(limit_train=300)
    recipe = teacher_recipe(RunConfig.from_settings(teacher_epochs=30), ds)
    assert (ds.input_kind, recipe.label_smoothing, recipe.lr, recipe.weight_decay) == ("image", 0.1, 3e-3, 5e-4)
    floor = -(0.91 * np.log(0.91) + 9 * 0.01 * np.log(0.01))
    curves = {smoothing: train_builtin_module("mlp-small", ds, seed=0, recipe=TeacherRecipe(
        epochs=60, patience=60, lr=1e-2, label_smoothing=smoothing))[1]["train_loss"] for smoothing in (0.0, 0.1)}
    assert min(curves[0.1]) > floor - 0.02 and min(curves[0.0]) < floor / 2
    clips = Dataset("clips", "test", np.zeros((20, 800), np.float32), np.arange(20) % 2, np.zeros((4, 800), np.float32),
                    np.arange(4) % 2, ["no", "yes"], normalization={"sample_rate": 8000}, input_kind="audio")
    audio = teacher_recipe(RunConfig.from_settings(teacher_epochs=30), clips)
    assert (audio.label_smoothing, audio.lr, audio.weight_decay) == (0.0, TeacherRecipe.lr, TeacherRecipe.weight_decay)


def test_the_patience_grows_with_the_planned_epochs_unless_given():
    from compress.pipeline import RunConfig, teacher_recipe

    ds = load_data(limit_train=100)
    patience = {epochs: teacher_recipe(RunConfig.from_settings(teacher_epochs=epochs), ds).patience for epochs in (4, 10, 20, 60)}
    assert patience == {4: 3, 10: 3, 20: 4, 60: 12}
    assert teacher_recipe(RunConfig.from_settings(teacher_epochs=60, teacher_patience=2), ds).patience == 2


def _large(shape, n=60000, kind="image") -> Dataset:
    """A data set that is large in every way the defaults look at, without holding 60k samples."""
    x = np.broadcast_to(np.zeros((1, *shape), np.float32), (n, *shape))
    y = np.arange(n) % 10
    return Dataset("big", "test", x, y, x[:100], y[:100], [str(i) for i in range(10)], input_kind=kind)


def test_defaults_follow_the_data_and_keep_what_the_user_set():
    from compress.pipeline import RunConfig

    given = RunConfig()
    small, picked = defaults.choose(given, load_data(), "cpu")
    assert (small.teachers.members, small.student.arch, small.teachers.epochs, small.distill.epochs) == (
        ["mlp-1200", "cnn", "resnet"], "mlp-small", 10, 100)
    assert given == RunConfig(), "a new configuration; the one given is not changed"
    big, picked = defaults.choose(RunConfig(), _large((1, 28, 28)), "cpu")
    assert big.teachers.members[0] == "resnet" and big.student.arch == "mlp-800"
    assert 2 <= big.teachers.epochs <= 15 and 3 <= big.distill.epochs < 100
    assert "60,000 training samples" in defaults.describe(picked)
    again, _ = defaults.choose(RunConfig(), _large((1, 28, 28)), "cpu")
    assert (again.teachers.epochs, again.distill.epochs) == (big.teachers.epochs, big.distill.epochs), "deterministic"
    cuda, _ = defaults.choose(RunConfig(), _large((1, 28, 28)), "cuda")
    assert cuda.distill.epochs >= big.distill.epochs and cuda.teachers.epochs >= big.teachers.epochs
    mine, picked = defaults.choose(RunConfig.from_settings(teachers=["resnet"], epochs=7), _large((1, 28, 28)), "cpu")
    assert mine.teachers.members == ["resnet"] and mine.distill.epochs == 7 and "teachers" not in picked and "epochs" not in picked
    audio, _ = defaults.choose(RunConfig(), _large((8000,), n=3000, kind="audio"), "cpu")
    assert audio.teachers.members[0].startswith("speech-") and audio.student.arch.startswith("ds-cnn")
    flat, _ = defaults.choose(RunConfig(), _large((20,), n=500, kind="features"), "cpu")
    assert set(flat.teachers.members) == {"mlp-1200"}


def test_the_teachers_budget_leaves_out_the_last_members_before_training_any_too_briefly():
    """Each default member should see ``MEMBER_MIN_SAMPLES`` rows: where the budget does not hold the list at
    that floor, the last members go (the list is strongest first) and the line says so; a member list or
    teacher epochs the user set are never trimmed."""
    from compress.pipeline import RunConfig

    def seconds(per_member):
        return lambda name, data, batch, device, student: 1.0 if student else per_member[name]

    mnist = _large((1, 28, 28))  # 60,000 rows: a 2-epoch floor
    all_three, picked = defaults.choose(RunConfig(), mnist, "cpu", seconds({"resnet": 20, "cnn": 20, "mlp-1200": 10}))
    assert all_three.teachers.members == ["resnet", "cnn", "mlp-1200"] and "left out" not in picked["why"]
    assert all_three.teachers.epochs == 140 // 50
    slow = seconds({"resnet": 33, "cnn": 36, "mlp-1200": 15})  # 2 x 84 s > 140 s; 2 x 69 s fits
    two, picked = defaults.choose(RunConfig(), mnist, "cpu", slow)
    assert two.teachers.members == ["resnet", "cnn"] and two.teachers.epochs == 2
    assert "holds 2 of the 3 default members at 2+ epochs" in picked["why"] and "mlp-1200 is left out" in picked["why"]
    spectrograms = _large((3, 40, 40), n=2700)  # 45 epochs to see 120,000 rows: 2 x 45 x 4 s > 280 s
    one, picked = defaults.choose(RunConfig(), spectrograms, "cpu", seconds({"vgg": 4.0}))
    assert one.teachers.members == ["vgg"] and one.teachers.epochs == 280 // 4
    assert "holds 1 of the 2 default members at 45+ epochs" in defaults.describe(picked)
    never = defaults.choose(RunConfig(), spectrograms, "cpu", seconds({"vgg": 100.0}))[0]
    assert never.teachers.members == ["vgg"] and never.teachers.epochs == 2, "one member stays, at the epoch floor"
    mine = defaults.choose(RunConfig.from_settings(teachers=["vgg", "vgg"]), spectrograms, "cpu", seconds({"vgg": 4.0}))[0]
    assert mine.teachers.members == ["vgg", "vgg"] and mine.teachers.epochs == 280 // 8
    fixed = defaults.choose(RunConfig.from_settings(teacher_epochs=10), spectrograms, "cpu", seconds({"vgg": 4.0}))[0]
    assert fixed.teachers.members == ["vgg", "vgg"], "teacher epochs the user set: the budget does not decide members"


def test_a_run_reports_member_curves_and_the_chosen_defaults(tmp_path, monkeypatch):
    from compress.pipeline import RunConfig, run

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    report = run(RunConfig.from_settings(teachers=["mlp-small", "cnn-small"], teacher_epochs=3, latency_runs=3, limit_train=300,
                           out=str(tmp_path / "dist")), quiet=True)
    run_facts = report["run"]
    assert run_facts["defaults_chosen"]["student"] == "mlp-small" and run_facts["defaults_chosen"]["epochs"] == 100
    for member in run_facts["teachers"]:  # 300 rows of 10 classes: too few to hold out a validation split
        curve = member["training"]
        assert curve["val_accuracy"] == [] and curve["val_samples"] == 0 and curve["epochs_run"] == 3
        assert curve["stopped"] == "epoch budget reached (no validation split: under 1,000 training rows a class, so every row trains)"
    saved = json.loads((tmp_path / "dist" / run_facts["name"] / "report.json").read_text())
    assert saved["run"]["teachers"][0]["training"]["best_epoch"] == 3
    html = (tmp_path / "dist" / run_facts["name"] / "report.html").read_text()
    section = html[html.index("<h2>Teacher training</h2>"):]
    assert "mlp-small" in section and "cnn-small" in section and "<svg" in section



def test_the_training_rate_is_timed_once_per_machine_and_a_damaged_entry_is_measured_again(tmp_path, monkeypatch, caplog):
    """The defaults' epoch budgets rest on calibrated step times: timed on the first use (a fixed MACs-per-
    second model was 1.6x off on the next CI machine), then read back, on this machine only, from a folder
    that runs with separate caches share (same machine -> same epochs -> same models)."""
    from compress import estimate

    monkeypatch.setenv("COMPRESS_MACHINE_DIR", str(tmp_path / "machine"))
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    timed = []
    real = estimate.estimate_fit_seconds
    monkeypatch.setattr(estimate, "estimate_fit_seconds", lambda *a, **k: timed.append(a[0]) or real(*a, **k))
    x = np.zeros((8, 1, 12, 12), np.float32)
    first = estimate.calibrated_step_seconds("mlp-small", x, 10, 8, threads=1)
    assert first > 0 and len(timed) == 1
    assert estimate.calibrated_step_seconds("mlp-small", x, 10, 8, threads=1) == first and len(timed) == 1
    (entry,) = (tmp_path / "machine").glob("step-*.json")
    assert not list((tmp_path / "cache").rglob("step-*")), "not in the run's cache: fresh caches share it"
    entry.write_text('{"seconds_per_step": 1e9}')  # changed since it was written: its checksum fails
    with caplog.at_level("WARNING"):
        again = estimate.calibrated_step_seconds("mlp-small", x, 10, 8, threads=1)
    assert len(timed) == 2 and again < 1e9 and "checksum mismatch" in caplog.text
    monkeypatch.setattr(estimate, "machine_fingerprint", lambda device_type="cpu": {"cpu": "another machine"})
    elsewhere = estimate.calibrated_step_seconds("mlp-small", x, 10, 8, threads=1)
    assert len(timed) == 3, "another machine measures anew"
    big = _large((1, 12, 12), n=8000)
    assert estimate.calibrated_epoch_seconds("mlp-small", big, 8, threads=1) == pytest.approx(1000 * elsewhere)
