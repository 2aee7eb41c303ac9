"""The base of every input schema (study spec, trial setup, space overrides) and the one
translation of pydantic's validation errors into the project's one-line :class:`InputError`.

A schema is a pydantic model whose nesting mirrors the YAML; its fields declare type,
default, bounds and help once. Pydantic checks them and produces the JSON Schema;
:func:`parse` turns the first problem into today's message: ``<file>: key 'a.b': ...``
with the allowed values, keys and a did-you-mean where there is a closed set.
"""

from __future__ import annotations

import os
import types
import typing
from typing import Any, ClassVar, Literal, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.fields import FieldInfo

from routed_study.trainables.errors import InputError, did_you_mean, format_choices

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """A mapping of the input: unknown keys are errors, no silent coercion (``"4"`` is no int,
    ``true`` no 1), no NaN or infinity; a key given as null takes its default."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              populate_by_name=True)

    #: What an unknown key at this level is called in errors ("section" at a file's top).
    unknown_key_word: ClassVar[str] = "key"

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, values: Any) -> Any:
        # YAML's `key:` with nothing after it is null: read as "the default", as if absent.
        # Python callers may pass Path objects where the file has text.
        if not isinstance(values, Mapping):
            return values
        # A YAML key such as `3:` is no str; name it as written in the unknown-key error.
        return {str(k): os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()
                if v is not None}


def parse(model: type[M], raw: Any, where: str = "", at: str = "") -> M:
    """``model`` validated from ``raw``; InputError ``"<where>: key '<at>.a.b': ..."`` on the first
    problem (``at``: the key path of ``raw`` inside a larger file)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        message = explain(exc, model, raw, at)
        raise InputError(f"{where}: {message}" if where else message) from None


def explain(exc: ValidationError, model: type[BaseModel], raw: Any, at: str = "") -> str:
    """The one line for the first error (an unknown key first, as a reader of the file would fix it)."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    error = errors[0]
    path, field = _walk(model, error["loc"])
    return _explain(error, path, field, model, raw, [at] if at else [])


def _explain(error: Mapping[str, Any], path: list[str], field: FieldInfo | None, model: type[BaseModel],
             raw: Any, prefix: list[str]) -> str:
    kind = error["type"]
    entry = _mapping_entry(error, path, field)
    key = ".".join([*prefix, *path, *entry])
    at = f"key '{key}': " if key else ""
    if kind == "extra_forbidden":
        leaf = str(error["loc"][len(path)])
        container = _model_of(field.annotation) if field is not None else model
        names = list(container.model_fields)
        return (f"key '{'.'.join([*prefix, *path, leaf])}': unknown {container.unknown_key_word}"
                f"{did_you_mean(leaf, names)}; allowed: {', '.join(names)}")
    if kind == "missing":
        key, _ = _first_required([*prefix, *path], field)
        return f"key '{key}': missing"
    value = _value_at(raw, [*path, *entry])
    if entry and kind.endswith("_type"):   # one value of a mapping such as train_sizes
        return f"{at}expected {_type_names(_element(field.annotation))}, got {value!r}"
    section = _model_of(field.annotation) if field is not None else model
    if section is not None and kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{at}expected a mapping with keys {', '.join(section.model_fields)}, got {value!r}"
    ctx = error.get("ctx") or {}
    choices = _literal_choices(field.annotation) if field is not None else None
    if kind == "literal_error" and choices is not None:
        return f"{at}got {value!r}{did_you_mean(value, choices)}; allowed values: {format_choices(choices)}"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        return f"{at}must be {bounds[kind]} {next(iter(ctx.values())):g}, got {value!r}"
    if kind == "too_short":
        return f"{at}expected a non-empty list, got {value!r}" if _is_list(field) else f"{at}must not be empty"
    if kind == "string_pattern_mismatch" and field is not None and field.description:
        return f"{at}{value!r} must be {field.description}"
    if kind == "value_error":
        return f"{at}{ctx.get('error', error['msg'])}"
    if kind == "finite_number":
        return f"{at}must be a finite number, got {value!r}"
    if kind.endswith("_type") and field is not None:
        if _is_list(field) and len(error["loc"]) > len(path):  # an element of a list
            return f"{at}expected a list of {_type_names(_element(field.annotation))}, got {value!r}"
        return f"{at}expected {_type_names(field.annotation)}, got {value!r}"
    return f"{at}{error['msg']}, got {value!r}"


# ------------------------------------------------------------------ helpers
def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], FieldInfo | None]:
    """The field path of ``loc`` (union member tags and list indices dropped) and its last field."""
    path: list[str] = []
    field, current = None, model
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            break
        field = current.model_fields[part]
        path.append(part)
        current = _model_of(field.annotation)
    return path, field


def _mapping_entry(error: Mapping[str, Any], path: list[str], field: FieldInfo | None) -> list[str]:
    """The key of the mapping entry an error is about (``train_sizes.bbc_topic``), or none."""
    loc = error["loc"]
    if field is None or len(loc) <= len(path) or error["type"] == "extra_forbidden":
        return []
    if not any(typing.get_origin(m) is dict for m in _members(field.annotation)):
        return []
    return [str(loc[len(path)])]


def _first_required(path: list[str], field: FieldInfo | None) -> tuple[str, FieldInfo | None]:
    """A missing section that has required keys is reported at its first required key."""
    section = _model_of(field.annotation) if field is not None else None
    while section is not None:
        required = [(n, f) for n, f in section.model_fields.items() if f.is_required()]
        if not required:
            break
        name, field = required[0]
        path = [*path, name]
        section = _model_of(field.annotation)
    return ".".join(path), field


def _value_at(raw: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(raw, Mapping):
            return None
        raw = raw.get(part)
    return raw


def _members(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _literal_choices(annotation: Any) -> tuple | None:
    for member in _members(annotation):
        if typing.get_origin(member) is Literal:
            return typing.get_args(member)
    return None


def _element(annotation: Any) -> Any:
    """The type of a list's elements or of a mapping's values."""
    for member in _members(annotation):
        if typing.get_origin(member) in (list, tuple):
            return typing.get_args(member)[0]
        if typing.get_origin(member) is dict:
            value = typing.get_args(member)[1]
            return typing.get_args(value)[0] if typing.get_origin(value) is typing.Annotated else value
    return Any


def _is_list(field: FieldInfo | None) -> bool:
    return field is not None and any(typing.get_origin(m) in (list, tuple) for m in _members(field.annotation))


_TYPE_NAMES = {str: "text", int: "int", float: "int or float", bool: "bool", dict: "mapping", list: "list",
               tuple: "list"}


def _type_names(annotation: Any) -> str:
    names = []
    for member in _members(annotation):
        if member is type(None):
            continue  # null always means "the default"
        origin = typing.get_origin(member) or member
        names.append(_TYPE_NAMES.get(origin, getattr(origin, "__name__", str(origin))))
    return " or ".join(dict.fromkeys(names))
