"""Command-line flags made from declarations, so that no command retypes an option.

A target's own options are ``TargetOption`` records in ``export/<target>/``; ``with_target_options`` gives a
typer command one flag per option that the registered targets declare, generated when typer reads the
command (so a target registered later, a plugin or a test, has its flags too), and hands the values the
user typed to the command as one ``target_options`` table. The ``--quantize`` help is generated from every
target's ``schemes`` the same way. The run settings every command shares take their flag's help from their
recipe key (``run_option``). ``typed_flags`` turns a command's parameters into run-configuration
fields, for every command that builds a ``RunConfig``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

import typer

from compress.export.registry import declared_options, describe_option, describe_schemes
from compress.core.errors import InputError
from compress.recipe import key_for, list_fields

TARGET_OPTIONS = "target_options"  # the parameter of a wrapped command that receives the typed options
SETTING_FLAGS = "setting_flags"  # the parameter of a ``with_settings`` command that receives them
RENAMED = {"teacher": "teachers", "device": "profile", "train_device": "device", "strict": "strict_teachers"}  # flag -> RunConfig field
NOT_SETTINGS = {"recipe", "json_output", "quiet"}  # parameters of a command that are not run settings
LIST_FIELDS = list_fields()  # settings whose recipe value is a list: field -> item type (str or float)


def typed_flags(params: dict) -> dict:
    """The run-configuration fields the user typed (typer leaves the others None): flags renamed to their
    ``RunConfig`` field, target options flat (``compress.recipe.resolve`` gathers them again)."""
    params = dict(params)
    options = params.pop(TARGET_OPTIONS, None) or {}
    params.update(params.pop(SETTING_FLAGS, None) or {})
    flags = {RENAMED.get(k, k): v for k, v in params.items() if k not in NOT_SETTINGS and v is not None}
    flags.update(options)
    if "teachers" in flags:
        flags["teachers"] = list(flags["teachers"]) or None
    return {k: comma_list(k, v) for k, v in flags.items() if v is not None}


def comma_list(field: str, value):
    """A list-valued setting typed on the command line as one comma list (``--keywords yes,no``,
    ``--test-snr 10,20``): split, numbers parsed, as the recipe's list would hold them."""
    if not isinstance(value, str) or field not in LIST_FIELDS:
        return value
    items = [v.strip() for v in value.split(",") if v.strip()]
    if LIST_FIELDS[field] is str:
        return items
    try:
        return [float(v) for v in items]
    except ValueError:
        raise InputError(f"{key_for(field).flag} {value!r}: expected a comma list of numbers (e.g. 10,20)") from None


def run_option(param: str, *aliases: str, help: str | None = None):
    """The typer option of command parameter ``param`` for a run setting: flag ``--param`` (plus ``aliases``),
    help from the setting's one declaration (its recipe key, ``compress.recipe.key_for``), so every command
    that takes the setting says the same thing; ``help`` only where a command reads it differently."""
    key = key_for(RENAMED.get(param, param))
    return typer.Option(None, "--" + param.replace("_", "-"), *aliases, help=help or key.help)


def quantize_help() -> str:
    """What ``--quantize`` accepts, per registered target (from each ``Backend.schemes``)."""
    return f"Quantization scheme (default none). {describe_schemes()} (what each means: README)."


def _option_parameters(checks_only: bool) -> list[inspect.Parameter]:
    params = []
    for name, declared in declared_options().items():
        if checks_only and not any(option.checks_artifact for _, option in declared):
            continue
        option = declared[0][1]
        flag = f"{option.flag}/--no-{option.flag[2:]}" if option.type is bool else option.flag
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[option.type],
                                        default=typer.Option(None, flag, help=describe_option(name))))
    return params


class with_target_options:  # noqa: N801 -- used as a decorator
    """A command whose signature, as typer reads it, has one flag per registered target option (after
    ``--quantize`` where the command has it; only the options that check a written file with
    ``checks_only``), and whose ``--quantize`` help lists every target's schemes. The command itself takes
    ``target_options: dict`` (the options typed; the others absent)."""

    def __init__(self, command: Callable, *, checks_only: bool = False):
        self.command, self.checks_only = command, checks_only
        self.__name__ = command.__name__
        self.__qualname__ = command.__qualname__
        self.__module__ = command.__module__
        self.__doc__ = command.__doc__

    @property
    def __signature__(self) -> inspect.Signature:
        own = [p for p in inspect.signature(self.command, eval_str=True).parameters.values() if p.name != TARGET_OPTIONS]
        if "quantize" in {p.name for p in own}:
            own = [p.replace(default=typer.Option(None, help=quantize_help())) if p.name == "quantize" else p for p in own]
        at = next((i + 1 for i, p in enumerate(own) if p.name == "quantize"), len(own))
        generated = _option_parameters(self.checks_only)
        return inspect.Signature([*own[:at], *generated, *own[at:]])

    @property
    def __annotations__(self) -> dict:
        return {p.name: p.annotation for p in self.__signature__.parameters.values()}

    def __call__(self, **kwargs):
        names = set(declared_options())
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        return self.command(**kwargs, target_options={k: v for k, v in given.items() if v is not None})




def _flag_type(types: tuple[type, ...]) -> type:
    """The flag's type for a recipe key's TOML types: a list is typed as one comma list, a size as text."""
    if list in types or str in types:
        return str
    return float if float in types else types[0]


class with_settings:  # noqa: N801 -- used as a decorator
    """A command with one flag per run setting in ``fields`` (their recipe keys: flag, type and help from the
    one declaration, ``compress.recipe.key_for``), added after its own parameters as typer reads it; the
    command takes ``setting_flags: dict`` (the flags typed; the others absent). For a whole recipe section of
    settings (``[streaming]``) that would otherwise be retyped parameter by parameter."""

    def __init__(self, fields: list[str]):
        self.fields = list(fields)

    def __call__(self, command: Callable):
        fields = self.fields

        def wrapped(**kwargs):
            given = {f: kwargs.pop(f) for f in fields if f in kwargs}
            return command(**kwargs, **{SETTING_FLAGS: {k: v for k, v in given.items() if v is not None}})

        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != SETTING_FLAGS]
        added = []
        for name in fields:
            key = key_for(name)
            kind = _flag_type(key.types)
            added.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[kind],
                                           default=typer.Option(None, key.flag, help=key.help)))
        wrapped.__signature__ = inspect.Signature([*own, *added])
        wrapped.__name__, wrapped.__doc__, wrapped.__module__ = command.__name__, command.__doc__, command.__module__
        wrapped.__qualname__ = command.__qualname__
        return wrapped


def with_check_options(command: Callable) -> with_target_options:
    """``with_target_options`` for a command that checks a written file (``compress validate``): only the
    options that are checks (``TargetOption.checks_artifact``) become its flags."""
    return with_target_options(command, checks_only=True)
