"""Settings from the client, taken as ruff's server takes them, and the config of each file.

`initializationOptions` (and `workspace/didChangeConfiguration`'s `settings`) may hold the
settings directly, under `settings`, or under `stabcheck`:

    {"settings": {"lint": {"select": ["STB1"], "ignore": ["STB104"], "extendSelect": [],
                           "preview": false},
                  "types": false,
                  "configurationPreference": "editorFirst"}}

`select`, `ignore`, `extendSelect` (also spelled `extend-select`/`extend_select`) and `preview`
(show the static stage's guesses too, as `check --preview`) are accepted at the top level too. `configurationPreference`, as in ruff: `editorFirst` (the
default: the editor's settings override the project's file), `filesystemFirst` (the project's
file wins when there is one), `editorOnly` (the project's file is not read). `types` turns the
typed tier (mypy) on; it is off in the server unless this or the project's config says `true`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from stabcheck.config import Config, ConfigError, from_mapping

Preference = Literal["editorFirst", "filesystemFirst", "editorOnly"]
_PREFERENCES = ("editorFirst", "filesystemFirst", "editorOnly")
_LIST_KEYS = {"select": "select", "ignore": "ignore", "extendSelect": "extend-select", "extend-select": "extend-select", "extend_select": "extend-select"}


@dataclass(frozen=True, slots=True)
class Settings:
    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    extend_select: tuple[str, ...] = ()
    types: bool | None = None
    preview: bool | None = None
    preference: Preference = "editorFirst"
    problems: tuple[str, ...] = field(default=(), compare=False)  # what was not understood, for the log


def parse(raw: Any) -> Settings:
    """Client settings → `Settings`; what it cannot use is named in `problems`, never raised."""
    problems: list[str] = []
    if raw is None:
        return Settings()
    if not isinstance(raw, dict):
        return Settings(problems=(f"settings must be an object, got {type(raw).__name__}",))
    for wrapper in ("stabcheck", "settings"):
        if isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
    flat = dict(raw)
    lint = flat.pop("lint", None)
    if isinstance(lint, dict):
        flat.update(lint)
    values: dict[str, Any] = {}
    for key, value in flat.items():
        if key in _LIST_KEYS:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                problems.append(f"`{key}` must be a list of rule codes, prefixes or slugs; ignored")
                continue
            try:
                from_mapping({_LIST_KEYS[key]: items}, source="editor settings")
            except ConfigError as e:
                problems.append(f"{e}; `{key}` ignored")
                continue
            name = _LIST_KEYS[key].replace("-", "_")
            values[name] = tuple(items) if name == "select" else (*values.get(name, ()), *items)
        elif key == "types":
            if isinstance(value, bool) or value is None:
                values["types"] = value
            else:
                problems.append(f"`types` must be true or false, got {value!r}; ignored")
        elif key == "configurationPreference":
            if value in _PREFERENCES:
                values["preference"] = value
            else:
                problems.append(f"`configurationPreference` must be one of {', '.join(_PREFERENCES)}, got {value!r}; ignored")
        elif key == "preview":
            if isinstance(value, bool) or value is None:
                values["preview"] = value
            else:
                problems.append(f"`preview` must be true or false, got {value!r}; ignored")
        else:
            problems.append(f"unknown setting `{key}`; ignored (known: select, ignore, extendSelect, preview, types, configurationPreference)")
    return Settings(**values, problems=tuple(problems))


def effective(file_config: Config, has_file: bool, settings: Settings) -> Config:
    """The project's config with the editor's settings applied, per `configurationPreference`.
    The typed tier ends up on only where the deciding side says `types = true`."""
    if settings.preference == "filesystemFirst" and has_file:
        return replace(file_config, types=bool(file_config.types))
    base = replace(Config(), root=file_config.root) if settings.preference == "editorOnly" else file_config
    changes: dict[str, Any] = {"types": bool(settings.types if settings.types is not None else base.types)}
    if settings.preview is not None:
        changes["preview"] = settings.preview  # guesses of the static stage shown too (docs/precision.md)
    if settings.select is not None:
        changes["select"] = settings.select
    if settings.extend_select:
        changes["extend_select"] = (*base.extend_select, *settings.extend_select)
    if settings.ignore:
        changes["ignore"] = (*base.ignore, *settings.ignore)
    return replace(base, **changes)


__all__ = ["Settings", "effective", "parse"]
