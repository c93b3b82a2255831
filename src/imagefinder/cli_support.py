"""What every command of the CLI shares: the settings built by the group, and the turning of
ImageFinder's errors into a one-line message and exit code 1."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from imagefinder.config import Settings
from imagefinder.errors import ImageFinderError

F = TypeVar("F", bound=Callable[..., Any])


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _user_errors(function: F) -> F:
    """Turn ImageFinder's errors into a one-line message and exit code 1, without a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ImageFinderError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]
