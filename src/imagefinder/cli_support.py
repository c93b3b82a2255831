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


class GlobalOptionsGroup(click.Group):
    """A group whose own options may also be given after the command, as most users type them:
    `imagefinder index PHOTOS --model X --home H` is read as `imagefinder --model X --home H index
    PHOTOS`. A command's own option of the same name (reindex --model) stays the command's."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self._globals_first(ctx, args))

    def _globals_first(self, ctx: click.Context, args: list[str]) -> list[str]:
        position = self._command_position(ctx, args)
        if position is None:
            return args
        command = self.get_command(ctx, args[position])
        assert command is not None
        own = {name for param in command.params for name in param.opts + param.secondary_opts}
        # The command's own options that take a value: the token after one is that value.
        own_values = {
            name
            for param in command.params
            if isinstance(param, click.Option) and not param.is_flag and not param.count
            for name in param.opts
        }
        takes_value = {
            name: not param.is_flag
            for param in self.params
            if isinstance(param, click.Option)
            for name in param.opts
            if name not in own
        }
        moved: list[str] = []
        rest: list[str] = []
        tail = iter(args[position + 1 :])
        for arg in tail:
            if arg == "--":  # everything after it is an argument, even if it looks like an option
                rest += [arg, *tail]
                break
            name = arg.split("=", 1)[0]
            if arg in own_values:
                value = next(tail, None)
                rest += [arg] if value is None else [arg, value]
                continue
            if name in takes_value and name.startswith("--"):
                moved.append(arg)
                if takes_value[name] and "=" not in arg:
                    value = next(tail, None)
                    if value is None:
                        if ctx.resilient_parsing:  # shell completion of the value: leave it be
                            moved.pop()
                            rest.append(arg)
                            break
                        raise click.UsageError(f"Option '{name}' requires an argument.", ctx)
                    moved.append(value)
            else:
                rest.append(arg)
        return [*args[:position], *moved, args[position], *rest]

    def _command_position(self, ctx: click.Context, args: list[str]) -> int | None:
        """Where the command's name is: the first argument that is not a group option or the
        value of one."""
        value_options = {
            name
            for param in self.params
            if isinstance(param, click.Option) and not param.is_flag
            for name in param.opts
        }
        skip = False
        for position, arg in enumerate(args):
            if skip:
                skip = False
            elif arg in value_options:
                skip = True
            elif not arg.startswith("-"):
                return position if self.get_command(ctx, arg) is not None else None
        return None


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
