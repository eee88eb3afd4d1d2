"""Recipes: parsing, errors for unknown keys and wrong types, `compress init`, and flag precedence."""

from __future__ import annotations

import dataclasses
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compress import recipe
from compress.cli import _run_configs
from compress.core.errors import InputError
from compress.pipeline import RunConfig

ALL_KEYS = [(sec, name, key) for sec, keys in recipe.schema().items() for name, key in keys.items()]


def _value_for(key: recipe.Key):
    """A hypothesis strategy producing valid TOML values for ``key``."""
    text = st.text(alphabet=string.ascii_letters + string.digits + "-_./ \"\\", max_size=12)
    return {
        recipe._STR: text,
        recipe._INT: st.integers(min_value=-10**6, max_value=10**6),
        recipe._SIZE: st.one_of(text, st.integers(min_value=-10**6, max_value=10**6)),
        recipe._NUM: st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False, width=32)),
        recipe._BOOL: st.booleans(),
        recipe._LIST: st.lists(text, max_size=4),
        recipe._NUMS: st.lists(st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False,
                                                                               width=32)), min_size=1, max_size=4),
        recipe._TABLE: st.dictionaries(st.sampled_from(["split", "sample_rate", "label_pattern"]),
                                       st.one_of(text, st.integers(0, 10**5)), max_size=3),
    }[key.types]


def _to_toml(chosen: dict) -> str:
    sections: dict[str, list[str]] = {}
    for (sec, name), value in chosen.items():
        sections.setdefault(sec, []).append(f"{name} = {recipe._toml_value(value)}")
    lines = sections.pop("", [])
    for sec, body in sections.items():
        lines += [f"[{sec}]", *body]
    return "\n".join(lines) + "\n"


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_any_valid_recipe_parses_to_exactly_its_values(data):
    picked = data.draw(st.lists(st.sampled_from(ALL_KEYS), unique_by=lambda k: (k[0], k[1]), max_size=12))
    chosen = {(sec, name): data.draw(_value_for(key)) for sec, name, key in picked}
    parsed = recipe.parse(_to_toml(chosen))
    def as_parsed(key, value):
        return float(value) if key.types == recipe._NUM else [float(v) for v in value] if key.types == recipe._NUMS else value

    expected = {key.field: as_parsed(key, chosen[(sec, name)]) for sec, name, key in picked}
    assert parsed == expected


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ALL_KEYS), st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=3), st.data())
def test_a_misspelled_key_is_an_error_naming_it(entry, suffix, data):
    sec, name, key = entry
    wrong = name + suffix
    if wrong in recipe.schema().get(sec, {}) or (not sec and wrong in recipe.schema()):
        return
    toml = _to_toml({(sec, wrong): data.draw(_value_for(key))})
    with pytest.raises(InputError) as exc:
        recipe.parse(toml, "r.toml")
    message = str(exc.value)
    assert "\n" not in message and wrong in message and message.startswith("r.toml")


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([k for k in ALL_KEYS if str not in k[2].types]),
       st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8))  # TOML cannot hold surrogates
def test_a_string_where_another_type_belongs_is_an_error_naming_key_and_type(entry, text):
    sec, name, key = entry
    with pytest.raises(InputError, match=rf"{name}: expected (an integer|a number|true or false|a list of strings|a list of numbers|a table), got str"):
        recipe.parse(_to_toml({(sec, name): text}))


def test_nearest_key_is_suggested():
    with pytest.raises(InputError, match=r"\[distill\] temprature: unknown key; did you mean 'temperature'\?"):
        recipe.parse("[distill]\ntemprature = 3\n")
    with pytest.raises(InputError, match=r"unknown section 'distil'; did you mean 'distill'\?"):
        recipe.parse("[distil]\ntemperature = 3\n")
    with pytest.raises(InputError, match=r"unknown key 'epochs'; did you mean"):
        recipe.parse("epochs = 3\n")  # a section key at the top level
    with pytest.raises(InputError, match=r"expected an integer, got bool True"):
        recipe.parse("[distill]\nepochs = true\n")
    with pytest.raises(InputError, match=r"r.toml: not valid TOML"):
        recipe.parse("[distill\n", "r.toml")


def test_init_writes_a_recipe_that_loads_back_to_the_defaults(tmp_path):
    from typer.testing import CliRunner

    from compress.cli import app

    result = CliRunner().invoke(app, ["init", str(tmp_path / "compress.toml")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "compress.toml").read_text()
    assert all(f"[{sec}]" in text for sec in recipe.schema() if sec)
    values = recipe.load(tmp_path / "compress.toml")
    defaults = {**RunConfig().settings(), "targets": ["onnx"]}
    assert values and all(defaults[k] == v for k, v in values.items())
    # every key is written, either set or commented out with an example
    for sec, name, _ in ALL_KEYS:
        assert f"\n{name} = " in text or f"\n# {name} = " in text, name
    again = CliRunner().invoke(app, ["init", str(tmp_path / "compress.toml")])
    assert again.exit_code == 2 and "already exists" in again.output


def test_flags_override_the_recipe_which_overrides_defaults(tmp_path):
    path = tmp_path / "compress.toml"
    path.write_text('name = "r"\n[distill]\nepochs = 7\ntemperature = 4\n[export]\ntargets = ["onnx", "tflite"]\n'
                    '[data]\noptions = { test_fraction = 0.3 }\n')
    configs = _run_configs(str(path), {"epochs": 2})
    assert [(c.export.target, c.name, c.distill.epochs, c.distill.temperature, c.distill.alpha) for c in configs] == [
        ("onnx", "r-onnx", 2, 4.0, RunConfig().distill.alpha), ("tflite", "r-tflite", 2, 4.0, RunConfig().distill.alpha)]
    assert configs[0].data.options == {"test_fraction": 0.3} and configs[0].recipe_path == str(path)
    only = _run_configs(str(path), {"target": "coreml"})
    assert [c.export.target for c in only] == ["coreml"] and only[0].name == "r"


def test_every_recipe_key_is_the_field_of_the_same_name_in_its_section():
    """A recipe maps one-to-one to the run configuration: ``[distill] epochs`` is ``cfg.distill.epochs``, and
    each key's flag name (``--epochs``) reaches that same field (``SETTINGS``)."""
    from compress.config import SETTINGS

    target_options = set(recipe.target_option_keys())
    seen = set()
    for section, keys in recipe.schema().items():
        if section == "search":  # compress search's own section: a SearchSpace, not a run setting
            continue
        for name, key in keys.items():
            if name in target_options or key.field == "targets":  # one table (export.options); one target per run
                continue
            assert SETTINGS[key.field] == (section, name), (section, name, key.field)
            seen.add(key.field)
    assert set(SETTINGS) - seen == {"target", "target_options", "recipe_path"}  # the CLI's --target, the table


def test_settings_resolve_into_a_new_configuration_and_back():
    from compress.config import RunConfig

    base = RunConfig()
    cfg = base.with_settings(epochs=7, teachers=["cnn"], target="tflite", target_options={"min_runtime": "2.14"})
    assert (cfg.distill.epochs, cfg.teachers.members, cfg.export.target, cfg.export.options) == \
           (7, ["cnn"], "tflite", {"min_runtime": "2.14"})
    assert base == RunConfig() and base.distill.epochs is None, "with_settings gives a new value"
    assert RunConfig.from_settings(**cfg.settings()) == cfg
    with pytest.raises(TypeError, match="epoch"):
        base.with_settings(epoch=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.distill.epochs = 1
