"""The curate spec's steps: one pydantic model per block in ``llm.data.registry``, generated from
the block's parameter dataclass, so a new block needs no code here.

Each model has the dataclass's fields with their constraints, defaults and descriptions, a
``kind`` literal that the step union is discriminated by, and rejects unknown fields; nested
parameter dataclasses (a decontamination step's eval sets) become models the same way. Checks
across fields live in the dataclass's ``__post_init__``, which runs when a step is validated, so
their ValueError is a validation error (a 422) like any other.
"""

from __future__ import annotations

import dataclasses
import types
from functools import cache
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    ClassVar,
    Literal,
    Self,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from pydantic import Field, StringConstraints, create_model, model_validator
from pydantic.fields import FieldInfo

from contracts.spec_base import Spec, read_uri
from llm.data.block import DESCRIPTION, READS_FILE, Block, DocumentBlock, Pattern
from llm.data.registry import BLOCKS, document_block


class ParamsModel(Spec):
    """A model generated from a parameter dataclass; ``params()`` gives the dataclass back."""

    dataclass_type: ClassVar[type[Any]]

    def params(self) -> Any:
        """The validated values as the block's own parameter dataclass."""
        fields = dataclasses.fields(self.dataclass_type)
        return self.dataclass_type(**{f.name: _plain(getattr(self, f.name)) for f in fields})

    @model_validator(mode="after")
    def _fields_agree(self) -> Self:
        self.params()  # runs the dataclass's checks across fields
        return self


class Step(ParamsModel):
    """One step of a curate pipeline: a block of ``llm.data.registry`` and its parameters."""

    kind: str
    block: ClassVar[type[Block]]

    def on_corpus(self) -> bool:
        """Whether the step needs the whole corpus at once (dedup, a top-fraction cut)."""
        return self.block.on_corpus(self.params())

    def document_block(self) -> DocumentBlock:
        """The llm.data block that runs this per-document step."""
        return document_block(self.kind, self.params())


def corpus_label(block: type[Block]) -> str:
    """How messages name a block as a corpus step ("quality_classifier with top_fraction")."""
    return f"{block.kind} with {block.corpus_when}" if block.corpus_when else block.kind


def _plain(value: Any) -> Any:
    if isinstance(value, ParamsModel):
        return value.params()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _constraint(metadata: Any) -> Any:
    return StringConstraints(pattern=metadata.regex) if isinstance(metadata, Pattern) else metadata


def _annotation(hint: Any) -> Any:
    """``hint`` with nested parameter dataclasses as models and ``Pattern`` as pydantic's."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return params_model(hint)
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        inner, *metadata = args
        return Annotated[(_annotation(inner), *(_constraint(m) for m in metadata))]
    if origin in (list, tuple, dict):
        return origin[tuple(_annotation(arg) for arg in args)]
    if origin in (Union, types.UnionType):
        return Union[tuple(_annotation(arg) for arg in args)]  # noqa: UP007 (built from a tuple)
    return hint  # plain types and Literal choices


def _field(field: dataclasses.Field[Any]) -> FieldInfo:
    options: dict[str, Any] = {}
    if field.default is not dataclasses.MISSING:
        options["default"] = field.default
    if field.default_factory is not dataclasses.MISSING:
        options["default_factory"] = field.default_factory
    if DESCRIPTION in field.metadata:
        options["description"] = field.metadata[DESCRIPTION]
    info: FieldInfo = Field(**options)
    return info


def _fields(params: type[Any]) -> dict[str, Any]:
    hints = get_type_hints(params, include_extras=True)
    return {
        f.name: (_storage(_annotation(hints[f.name]), f), _field(f))
        for f in dataclasses.fields(params)
    }


def _storage(annotation: Any, field: dataclasses.Field[Any]) -> Any:
    """A field that names a file the step reads is a ``Uri``, checked like the spec's own."""
    return read_uri(annotation) if field.metadata.get(READS_FILE) else annotation


def _published(model: type[ParamsModel], params: type[Any]) -> type[ParamsModel]:
    """``model`` tied to its dataclass and importable from this module by name, so a spec holding
    it pickles by reference (Ray sends the spec to every task)."""
    model.dataclass_type = params
    if globals().setdefault(model.__name__, model) is not model:
        raise ValueError(f"two parameter dataclasses are named {model.__name__}")
    return model


@cache
def params_model(params: type[Any]) -> type[ParamsModel]:
    """The strict model of a nested parameter dataclass (``EvalSet``)."""
    model = create_model(
        params.__name__,
        __base__=ParamsModel,
        __module__=__name__,
        __doc__=params.__doc__,
        **_fields(params),
    )
    return _published(model, params)


def _step_model(block: type[Block]) -> type[Step]:
    name = block.Params.__name__.removesuffix("Params") + "Step"
    model = create_model(
        name,
        __base__=Step,
        __module__=__name__,
        __doc__=block.Params.__doc__,
        kind=(Literal[block.kind], block.kind),  # type: ignore[arg-type]
        **_fields(block.Params),
    )
    model.block = block
    _published(model, block.Params)
    return model


STEP_MODELS: dict[str, type[Step]] = {kind: _step_model(block) for kind, block in BLOCKS.items()}

if TYPE_CHECKING:
    CurateStep = Step
else:
    _any_step = Union[tuple(STEP_MODELS.values())]  # noqa: UP007 (built from a tuple)
    CurateStep = Annotated[_any_step, Field(discriminator="kind")]
