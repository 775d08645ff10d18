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
    """Marks a spec field whose value names a file or folder: a path, file:// or s3:// URI."""


# A file or folder a job reads or writes. Declaring it here is what makes the control plane
# check it (``uri_fields``), so a new field cannot skip the check.
Uri = Annotated[str, _NamesStorage()]


def _names_storage(annotation: Any) -> bool:
    if any(isinstance(meta, _NamesStorage) for meta in getattr(annotation, "__metadata__", ())):
        return True
    return any(_names_storage(arg) for arg in typing.get_args(annotation))


def uri_fields(spec_type: type[BaseModel]) -> tuple[str, ...]:
    """The names of the spec's top-level fields declared as ``Uri`` (alone or optional)."""
    return tuple(
        name
        for name, field in spec_type.model_fields.items()
        if _names_storage(field.annotation)
        or any(isinstance(m, _NamesStorage) for m in field.metadata)
    )


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
