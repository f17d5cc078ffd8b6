"""The Typer app and what every command shares: user errors as one line and exit 2, output, colour.

A command module (`cli/<name>.py`) imports `app` and these helpers, declares its command with
`@app.command()` + `@guard`, and is imported by `stabcheck/cli/__init__.py`, which registers it.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

from stabcheck._files import write_atomic_nofollow
from stabcheck.config import Config, ConfigError, UsageError, discover_config, from_mapping
from stabcheck.config import load_config as read_config

app = typer.Typer(
    name="stabcheck",
    help="Type-stability linter and diagnostics for JAX: find what breaks `jit` and `grad` before it does.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

FormatOpt = Annotated[str, typer.Option("--output-format", help="full | concise | json | sarif | github | markdown | junit")]


class Exit(Exception):
    """Raised by a command to end with this exit code (turned into `typer.Exit` by `guard`)."""

    def __init__(self, code: int) -> None:
        self.code = code


def fail(message: str) -> NoReturn:
    """A usage error: one line on stderr, exit 2."""
    sys.stderr.write(f"stabcheck: error: {message}\n")
    raise Exit(2)


def csv_values(values: list[str] | None) -> list[str]:
    """`--select A,B --select C` -> [A, B, C]."""
    out: list[str] = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def load_config(config_file: Path | None, paths: list[str], overrides: dict[str, Any]) -> Config:
    """The config of `--config FILE` or the one found above the first path, with the command line's overrides."""
    if config_file is not None and not config_file.is_file():
        fail(f"config file not found: {config_file}")
    # a file the user names is trusted; one found in the checked tree may not start code
    cfg = read_config(config_file) if config_file is not None else discover_config(Path(paths[0]) if paths else Path.cwd())
    if overrides:
        cfg = from_mapping(overrides, source="command line", base=cfg)
    return cfg


def emit(text: str, output_file: Path | None) -> None:
    if output_file is not None:
        write_atomic_nofollow(output_file, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def color() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return sys.stdout.isatty()


def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one line on stderr and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exit as e:
            raise typer.Exit(e.code) from None
        except (ConfigError, UsageError) as e:
            sys.stderr.write(f"stabcheck: error: {e}\n")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            sys.stderr.write("stabcheck: interrupted\n")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # an internal error: say so, exit 2
            if os.environ.get("STABCHECK_DEBUG"):
                raise
            sys.stderr.write(f"stabcheck: internal error: {type(e).__name__}: {e} (set STABCHECK_DEBUG=1 for a traceback)\n")
            raise typer.Exit(2) from None

    return wrapper
