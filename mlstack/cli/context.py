"""What every command does first: build the settings and the libraries' environment (in the command, never earlier).

Building them inside a command body, not at import or in a callback, keeps `--help` working when an
MLSTACK_* variable is wrong; the command then fails with one line naming the variable.
"""

from __future__ import annotations

import os
import typing
from datetime import UTC, datetime

import pydantic

from mlstack.errors import StackError
from mlstack.settings import Settings, get_settings, stack_environment


class SettingsError(StackError):
    """An MLSTACK_* variable (or .env entry) does not parse; the message names it."""


def settings(**overrides: object) -> Settings:
    """The settings, with command-line overrides applied (None means 'not given'), the environment prepared."""
    try:
        base = get_settings()
    except pydantic.ValidationError as exc:
        raise SettingsError(describe_invalid(exc)) from exc
    prepare_environment(base)
    given = {key: value for key, value in overrides.items() if value is not None}
    return base.model_copy(update=given) if given else base


def describe_invalid(exc: pydantic.ValidationError) -> str:
    """`invalid setting MLSTACK_X (expected float): why`, for each invalid variable.

    Values are not echoed: some settings are secrets.
    """
    problems = []
    for problem in exc.errors(include_url=False):
        field = str(problem["loc"][0]) if problem["loc"] else "?"
        info = Settings.model_fields.get(field)
        expected = f" (expected {expected_type(info.annotation)})" if info is not None else ""
        problems.append(f"MLSTACK_{field.upper()}{expected}: {problem['msg']}")
    return "invalid setting " + "; ".join(problems)


def expected_type(annotation: object) -> str:
    """A setting's type as a user reads it: `float`, `int or unset`, `one of 'arrow', 'feast'`."""
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(value) for value in arguments)
    if arguments and type(None) in arguments:  # `X | None`: the variable may be left out
        return (
            " or ".join(expected_type(argument) for argument in arguments if argument is not type(None)) + " or unset"
        )
    name = getattr(annotation, "__name__", str(annotation))
    return {"date": "date (YYYY-MM-DD)", "SecretStr": "str", "Path": "path"}.get(name, name)


def prepare_environment(settings: Settings) -> None:
    """Point Prefect, MLflow and BentoML at the state dir (telemetry off), and at a running local Prefect server."""
    from mlstack.stack.prefect import running_prefect_api_url

    os.environ.update(stack_environment(settings))
    if "PREFECT_API_URL" not in os.environ:
        # With `mlstack up` running, CLI flow runs report to its Prefect server (the UI shows them)
        # instead of a temporary server on the same database.
        local = running_prefect_api_url(settings)
        if local:
            os.environ["PREFECT_API_URL"] = local


def utc(moment: datetime | None) -> datetime | None:
    """A command-line time as UTC: naive times are taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment
