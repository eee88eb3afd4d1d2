"""Teacher members in every supported format, the ensemble, and the soft-target cache."""

import numpy as np
import pytest
import torch

from compress import teachers as T
from compress.teachers.member import module_teacher
from compress.teachers.soft_targets import soft_targets
from compress.teachers.torch_formats import load_factory, load_torchscript
from compress.core.errors import InputError
from compress.distill.train import fit
from compress.export.common import ModelInfo
from tests.helper_models import small_mlp, wrong_classes


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    m = small_mlp()
    y = torch.as_tensor(digits.y_train)
    fit(m, digits.x_train, lambda z, i: torch.nn.functional.cross_entropy(z, y[i]), epochs=3)
    return m.eval()


def test_every_format_gives_the_source_models_logits(tmp_path, trained, digits):
    x = digits.x_test[:50]
    ref = trained(torch.as_tensor(x)).detach().numpy()
    torch.jit.save(torch.jit.trace(trained, torch.as_tensor(x[:1])), str(tmp_path / "m.ts"))
    torch.export.save(torch.export.export(trained, (torch.as_tensor(x[:1]),)), str(tmp_path / "m.pt2"))
    torch.save(trained.state_dict(), str(tmp_path / "w.pt"))
    from compress.export.onnx.convert import export

    export(trained, torch.as_tensor(x[:1]), tmp_path / "m.onnx", ModelInfo("m", [str(i) for i in range(10)]))
    for spec, kind in ((str(tmp_path / "m.ts"), "torchscript"), (str(tmp_path / "m.pt2"), "pt2"),
                       (str(tmp_path / "m.onnx"), "onnx"), (f"tests.helper_models:small_mlp={tmp_path / 'w.pt'}", "factory")):
        assert T.teacher_format(spec) == kind
        member = T.TEACHER_FORMATS[kind](spec)
        np.testing.assert_allclose(member.logits(x), ref, atol=1e-4, err_msg=kind)
        assert member.params == 64 * 32 + 32 + 32 * 10 + 10, kind


def test_members_with_different_class_counts_name_both(tmp_path, trained, digits):
    torch.save(wrong_classes().state_dict(), str(tmp_path / "w7.pt"))
    torch.save(trained.state_dict(), str(tmp_path / "w.pt"))
    a = load_factory(f"tests.helper_models:small_mlp={tmp_path / 'w.pt'}")
    b = load_factory(f"tests.helper_models:wrong_classes={tmp_path / 'w7.pt'}")
    with pytest.raises(InputError, match=r"teachers 'w.pt' and 'w7.pt' disagree on the number of classes \(10 vs 7\)"):
        T.check_members([a, b], digits.x_test[:4], 10)


def test_bad_teacher_specs_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        T.load_teachers([str(tmp_path / "missing.pt2")], None, epochs=1, seed=0)
    (tmp_path / "corrupt.ts").write_bytes(b"garbage")
    with pytest.raises(InputError, match="corrupt.ts'?: not a loadable TorchScript"):
        load_torchscript(str(tmp_path / "corrupt.ts"))
    with pytest.raises(InputError, match="not a built-in model"):
        T.teacher_format("something.weird")


def test_nan_teacher_output_is_rejected(trained, digits):
    broken = small_mlp()
    broken.load_state_dict(trained.state_dict())
    with torch.no_grad():
        broken[1].weight[0, 0] = float("nan")
    member = module_teacher("nan-teacher", "factory", broken, "x")
    with pytest.raises(InputError, match="'nan-teacher': outputs NaN"):
        T.check_members([member], digits.x_test[:8], 10)


def test_ensemble_is_the_mean_of_temperature_softmaxes(trained, digits):
    other = small_mlp().eval()
    a = module_teacher("a", "factory", trained, "fa")
    b = module_teacher("b", "factory", other, "fb")
    x = digits.x_test[:10]
    for temp in (1.0, 5.0):
        pa = torch.softmax(trained(torch.as_tensor(x)) / temp, -1).detach().numpy()
        pb = torch.softmax(other(torch.as_tensor(x)) / temp, -1).detach().numpy()
        np.testing.assert_allclose(T.ensemble_probs([a, b], x, temp), (pa + pb) / 2, atol=1e-6)


def test_soft_targets_computed_once_and_invalidated_by_changes(trained, digits):
    calls = []
    base = module_teacher("a", "factory", trained, "fingerprint-a")
    counting = T.Teacher("a", "factory", lambda x: (calls.append(len(x)), base.logits(x))[1], "fingerprint-a")
    x = digits.x_train[:200]
    first, cached1 = soft_targets([counting], x, 3.0, "data-1")
    second, cached2 = soft_targets([counting], x, 3.0, "data-1")
    assert (cached1, cached2) == (False, True) and len(calls) == 1
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(second, T.ensemble_probs([base], x, 3.0), atol=1e-6)
    changed_teacher = T.Teacher("a", "factory", counting.logits, "fingerprint-b")
    assert soft_targets([changed_teacher], x, 3.0, "data-1")[1] is False
    assert soft_targets([counting], x, 3.0, "data-2")[1] is False
    assert soft_targets([counting], x, 4.0, "data-1")[1] is False
    assert len(calls) == 4


def test_builtin_teacher_is_cached_between_runs(digits):
    from compress.data import Dataset

    small = Dataset("d", "s", digits.x_train[:200], digits.y_train[:200], digits.x_test, digits.y_test, digits.labels)
    a = T.train_builtin("mlp-small", small, epochs=2, seed=0)
    b = T.train_builtin("mlp-small", small, epochs=2, seed=0)
    assert (a.cached, b.cached) == (False, True)
    assert a.fingerprint == b.fingerprint
    c = T.train_builtin("mlp-small", small, epochs=2, seed=1)
    assert c.cached is False and c.fingerprint != a.fingerprint
