"""The base of every job spec: unknown fields are rejected, so a typo is a 422 naming it.

A spec may take a library config dataclass (``llm.train.config.TrainConfig``, say) as one of its
fields and still offer that dataclass's fields at the top level of the JSON, as users write
them: name the field in ``flat_sections``. The JSON stays flat both ways (validation gathers the
keys into the dataclass, dumping spreads them out again), and a validation error inside the
dataclass names the top-level field the user wrote.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails


class _NamesStorage:
    """Marks a spec field whose value names a file or folder a job reads: a path, file:// or
    s3:// URI."""


class _WritesStorage(_NamesStorage):
    """Marks a spec field naming a folder the job writes (its output)."""


class _NamesStorageIfPath(_NamesStorage):
    """Marks a spec field that holds a name (a built-in task) or a file the job reads."""


# A file or folder a job reads. Declaring it here is what makes the control plane check it
# (``uri_fields``, ``uri_paths``), so a new field cannot skip the check.
Uri = Annotated[str, _NamesStorage()]
# A folder a job writes: it must lie under one of the team's write roots.
OutputUri = Annotated[str, _WritesStorage()]
# A built-in name, or a file the job reads when it looks like a path (``looks_like_path``).
UriOrName = Annotated[str, _NamesStorageIfPath()]


def read_uri(annotation: Any) -> Any:
    """``annotation`` (``str``, ``str | None``…) declared as naming a file the job reads."""
    return Annotated[annotation, _NamesStorage()]


# In a parameter dataclass of ``llm/`` (which cannot import this module), a field whose
# metadata has this key set names a file the job reads, like ``Uri``.
READS_FILE = "reads_file"

# One step of a path into a dumped spec: a field name, or ``*`` for every item of a list.
ANY_ITEM = "*"
UriPath = tuple[str, ...]


def _names_storage(annotation: Any) -> bool:
    if any(isinstance(meta, _NamesStorage) for meta in getattr(annotation, "__metadata__", ())):
        return True
    return any(_names_storage(arg) for arg in typing.get_args(annotation))


def uri_fields(spec_type: type[BaseModel]) -> tuple[str, ...]:
    """The names of the spec's top-level fields declared as ``Uri`` or ``OutputUri`` (alone or
    optional); ``uri_paths`` also finds nested ones."""
    return tuple(
        name
        for name, field in spec_type.model_fields.items()
        if _names_storage(field.annotation)
        or any(isinstance(m, _NamesStorage) for m in field.metadata)
    )


def _inside(
    annotation: Any, metadata: Any = ()
) -> typing.Iterator[tuple[UriPath, type | _NamesStorage]]:
    """The storage markers, models and dataclasses inside a field's type, with the path steps
    that reach them (``*`` through a list, tuple or dict value); a write marker wins."""
    own = getattr(annotation, "__metadata__", ())
    marks = [m for m in (*metadata, *own) if isinstance(m, _NamesStorage)]
    if marks:
        yield (), next((m for m in marks if isinstance(m, _WritesStorage)), marks[0])
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
    ):
        yield (), annotation
    elif origin is Annotated:
        yield from _inside(args[0])
    elif origin in (list, tuple, set, frozenset, dict):
        items = args[1:] if origin is dict else args
        for arg in items:
            if arg is not Ellipsis:
                for path, found in _inside(arg):
                    yield (ANY_ITEM, *path), found
    else:  # unions, Literal choices (whose args are values, not types, and yield nothing)
        for arg in args:
            yield from _inside(arg)


def _mode(marker: _NamesStorage) -> str:
    if isinstance(marker, _WritesStorage):
        return "write"
    return "named" if isinstance(marker, _NamesStorageIfPath) else "read"


def _walk(
    model: type, prefix: UriPath, seen: frozenset[type]
) -> typing.Iterator[tuple[UriPath, str]]:
    """(path, mode) of every storage field under ``model``, however deep."""
    if model in seen:
        return
    seen = seen | {model}
    fields: list[tuple[str, Any, Any, typing.Mapping[Any, Any]]]
    if issubclass(model, BaseModel):
        fields = [(n, f.annotation, f.metadata, {}) for n, f in model.model_fields.items()]
    else:
        hints = typing.get_type_hints(model, include_extras=True)
        fields = [
            (f.name, hints[f.name], (), f.metadata)
            for f in dataclasses.fields(model)  # type: ignore[arg-type]
        ]
    for name, annotation, metadata, extra in fields:
        if extra.get(READS_FILE):
            yield (*prefix, name), "read"
            continue
        for path, found in _inside(annotation, metadata):
            if isinstance(found, _NamesStorage):
                yield (*prefix, name, *path), _mode(found)
            else:
                yield from _walk(found, (*prefix, name, *path), seen)


@dataclasses.dataclass(frozen=True)
class UriPaths:
    """Where a spec names storage: paths into the dumped spec of what the job reads and of
    what it writes (``("steps", "*", "model_path")``: that field of every step)."""

    read: tuple[UriPath, ...]
    write: tuple[UriPath, ...]
    # names, or files the job reads when they look like paths (``looks_like_path``)
    named: tuple[UriPath, ...] = ()


def uri_paths(spec_type: type[BaseModel]) -> UriPaths:
    """Every field of the spec (nested models, lists and dataclasses included) declared
    ``Uri`` (read) or ``OutputUri`` (written)."""
    found = list(_walk(spec_type, (), frozenset()))
    return UriPaths(
        read=tuple(sorted({p for p, mode in found if mode == "read"})),
        write=tuple(sorted({p for p, mode in found if mode == "write"})),
        named=tuple(sorted({p for p, mode in found if mode == "named"})),
    )


def looks_like_path(value: str) -> bool:
    """Whether a ``UriOrName`` value names a file rather than a built-in thing."""
    return "/" in value or ":" in value or value.endswith((".yaml", ".yml", ".json", ".jsonl"))


def values_at(
    value: Any, path: UriPath, loc: tuple[str | int, ...] = ()
) -> typing.Iterator[tuple[tuple[str | int, ...], Any]]:
    """(location, value) of every value at ``path`` in a dumped spec; absent keys are skipped."""
    if not path:
        yield loc, value
        return
    head, rest = path[0], path[1:]
    if head == ANY_ITEM:
        if isinstance(value, list | tuple):
            for i, item in enumerate(value):
                yield from values_at(item, rest, (*loc, i))
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from values_at(item, rest, (*loc, key))
    elif isinstance(value, dict) and head in value:
        yield from values_at(value[head], rest, (*loc, head))


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flat_sections: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="wrap")
    @classmethod
    def _gather_sections(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not cls.flat_sections or not isinstance(data, dict):
            return handler(data)
        data = dict(data)
        for name in cls.flat_sections:
            if name in data:
                raise ValueError(f"{name}: give its fields at the top level, not as {name!r}")
            section_type = cls.model_fields[name].annotation
            assert dataclasses.is_dataclass(section_type)
            keys = {f.name for f in dataclasses.fields(section_type)} & data.keys()
            data[name] = {key: data.pop(key) for key in sorted(keys)}
        try:
            return handler(data)
        except ValidationError as e:
            details = [_unnested(error, cls.flat_sections) for error in e.errors()]
            raise ValidationError.from_exception_data(e.title, details) from None

    @classmethod
    def indirect_reads(cls, spec: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        """(location, URI) of what a job of this kind reads because a file its spec names
        says so, not the spec itself (an evaluate task file's data). Checked against the
        team's read roots with the spec's own fields; none by default."""
        return []

    @classmethod
    def input_errors(cls, spec: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        """(location, message) of what the inputs a valid spec names show to be wrong with it
        (a train mixture naming a source its data lacks), read from storage before the job
        runs; none by default."""
        return []

    @model_serializer(mode="wrap")
    def _spread_sections(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        for name in self.flat_sections:
            if name in dumped:
                dumped.update(dumped.pop(name))
        return dumped


def _unnested(error: Any, sections: tuple[str, ...]) -> InitErrorDetails:
    """The error as if the section's fields were the spec's own: ("train", "lr") -> ("lr",)."""
    loc = tuple(error["loc"])
    if loc and loc[0] in sections:
        loc = loc[1:]
    details = InitErrorDetails(type=error["type"], loc=loc, input=error["input"])
    if "ctx" in error:
        details["ctx"] = error["ctx"]
    return details


def spec_field_names(spec: type[Spec]) -> set[str]:
    """The names a spec's JSON has at its top level: its fields, with each flat section's
    fields in the section's place."""
    names = set(spec.model_fields) - set(spec.flat_sections)
    for section in spec.flat_sections:
        section_type = spec.model_fields[section].annotation
        assert dataclasses.is_dataclass(section_type)
        names |= {f.name for f in dataclasses.fields(section_type)}
    return names
