"""Each loader on real or realistic files, plus the errors users will hit."""

import gzip

import numpy as np
import pytest
from PIL import Image

from compress.data import load_data, read_idx
from compress.core.errors import InputError
from tests.conftest import require_mnist


def write_idx(path, arr, gz=False):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def digit_images(digits, n):
    """Real digit images as uint8 0..255 (the sklearn data, rescaled), with labels."""
    from sklearn.datasets import load_digits as sk

    d = sk()
    return (d.images[:n] * 255 / 16).astype(np.uint8), d.target[:n]


def test_digits_default_is_a_stratified_normalized_split(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert abs(float(digits.x_train.mean())) < 1e-4 and abs(float(digits.x_train.std()) - 1) < 1e-3
    assert np.bincount(digits.y_test).min() >= 35  # every class present in the test split
    norm = digits.normalization
    raw = load_digits_raw()
    np.testing.assert_allclose((raw * norm["scale"] - norm["mean"]) / norm["std"],
                               np.sort(np.concatenate([digits.x_train, digits.x_test]).ravel()), atol=1e-5)


def load_digits_raw():
    from sklearn.datasets import load_digits as sk

    return np.sort(sk().images.astype(np.float64).ravel())


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_round_trip(tmp_path, gz, digits):
    imgs, labels = digit_images(digits, 120)
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", imgs[:100], gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", labels[:100].astype(np.uint8), gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", imgs[100:], gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", labels[100:].astype(np.uint8), gz)
    ds = load_data(str(tmp_path))
    assert ds.input_shape == (1, 8, 8) and len(ds.x_train) == 100 and len(ds.x_test) == 20
    np.testing.assert_array_equal(ds.y_test, labels[100:])
    assert ds.normalization["scale"] == pytest.approx(1 / 255)
    back = ds.x_test[:, 0] * ds.normalization["std"] + ds.normalization["mean"]
    np.testing.assert_allclose(back, imgs[100:] / 255, atol=1e-5)


def test_idx_truncated_file_is_a_clear_error(tmp_path):
    arr = np.zeros((4, 8, 8), np.uint8)
    write_idx(tmp_path / "x-idx3-ubyte", arr)
    (tmp_path / "x-idx3-ubyte").write_bytes((tmp_path / "x-idx3-ubyte").read_bytes()[:-10])
    with pytest.raises(InputError, match="x-idx3-ubyte: IDX header says"):
        read_idx(tmp_path / "x-idx3-ubyte")


def test_mnist_idx_from_shared_has_the_published_label_counts():
    ds = load_data(str(require_mnist()))
    assert ds.input_shape == (1, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _write_tree(root, imgs, labels):
    for i, (img, lab) in enumerate(zip(imgs, labels)):
        folder = root / f"class_{lab}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")


def test_image_folder_with_train_test_subfolders(tmp_path, digits):
    imgs, labels = digit_images(digits, 60)
    _write_tree(tmp_path / "train", imgs[:50], labels[:50])
    _write_tree(tmp_path / "test", imgs[50:], labels[50:])
    ds = load_data(str(tmp_path))
    assert ds.labels == [f"class_{i}" for i in range(10)]
    assert len(ds.x_train) == 50 and len(ds.x_test) == 10 and ds.input_shape == (1, 8, 8)
    assert sorted(ds.y_test.tolist()) == sorted(labels[50:].tolist())


def test_image_folder_split_by_fraction(tmp_path, digits):
    imgs, labels = digit_images(digits, 100)
    _write_tree(tmp_path, imgs, labels)
    ds = load_data(str(tmp_path))
    assert len(ds.x_train) == 80 and len(ds.x_test) == 20


def test_unreadable_image_names_the_file(tmp_path, digits):
    imgs, labels = digit_images(digits, 20)
    _write_tree(tmp_path, imgs, labels)
    bad = tmp_path / "class_0" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="broken.png: unreadable image"):
        load_data(str(tmp_path))


def test_empty_image_folder_is_a_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(InputError, match="no image files"):
        load_data(str(tmp_path), "image-folder")


def test_npz_labelled_and_unlabelled(tmp_path, digits):
    imgs, labels = digit_images(digits, 100)
    np.savez(tmp_path / "d.npz", x_train=imgs[:80], y_train=labels[:80], x_test=imgs[80:], y_test=labels[80:],
             labels=np.array(list("0123456789")))
    ds = load_data(str(tmp_path / "d.npz"))
    assert ds.labels == list("0123456789") and ds.y_train is not None and ds.input_shape == (1, 8, 8)
    np.savez(tmp_path / "u.npz", x_train=imgs[:80], x_test=imgs[80:], y_test=labels[80:])
    assert load_data(str(tmp_path / "u.npz")).y_train is None


def test_npz_label_outside_class_list(tmp_path, digits):
    imgs, labels = digit_images(digits, 40)
    y = labels.copy()
    y[3] = 12
    np.savez(tmp_path / "d.npz", x_train=imgs[:30], y_train=y[:30], x_test=imgs[30:], y_test=labels[30:],
             labels=np.array(list("0123456789")))
    with pytest.raises(InputError, match="label 12 is outside the class list"):
        load_data(str(tmp_path / "d.npz"))


def test_npz_missing_arrays_and_missing_path(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.zeros((3, 4)))
    with pytest.raises(InputError, match=r"missing array\(s\)"):
        load_data(str(tmp_path / "d.npz"))
    with pytest.raises(InputError, match="does not exist"):
        load_data(str(tmp_path / "nope"))


def test_flat_features_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", x_train=rng.normal(size=(50, 12)), y_train=rng.integers(0, 3, 50),
             x_test=rng.normal(size=(10, 12)), y_test=rng.integers(0, 3, 10))
    ds = load_data(str(tmp_path / "f.npz"))
    assert ds.input_shape == (12,) and ds.num_classes == 3


def test_loader_options_are_checked_by_name():
    """A recipe's [data] options reach the loader: a misspelled one is an error, not silently ignored."""
    from compress.data import load_data
    from compress.core.errors import InputError

    assert len(load_data(None, None, test_fraction=0.3).x_test) == 540
    with pytest.raises(InputError, match=r"data option 'test_fractoin': not an option of the digits loader; did you mean 'test_fraction'\?"):
        load_data(None, None, test_fractoin=0.3)
