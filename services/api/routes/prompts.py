"""/api/v1/prompts: a team's named prompt templates (``llm.serve.prompts``), rendered here.

A template is a Jinja2 query, an optional system message and few-shot examples, with declared
variables. Rendering is sandboxed and strict: a missing variable, or one the template does not
have, is a 422 naming it. POST creates (a name taken in the team is a 409), PUT replaces one and
bumps its version, DELETE removes it. A template is addressed by its id or by its name in the
caller's team. ``POST /prompts/{id}/render`` returns the text prompt and the chat messages; the
completions routes take ``prompt_template`` and ``variables`` in place of a prompt (``rendered``
below), and so do rating campaigns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llm.serve.prompts import Example, PromptError, PromptTemplate, Rendered
from services.api.auditing import audit_event, refusals
from services.api.completion_schemas import ChatCompletionCreate, ChatMessage, Templated
from services.api.deps import SessionDep
from services.api.prompt_schemas import (
    PromptTemplateCreate,
    PromptTemplatePublic,
    PromptTemplatesPublic,
    RenderedPublic,
    RenderRequest,
)
from services.api.validation import request_error
from services.auth import Principal, PrincipalDep
from services.store import prompts as store
from services.store.crud import new_id
from services.store.models import PromptTemplate as Record
from services.store.models import Role, utcnow

router = APIRouter(prefix="/prompts", tags=["prompts"])
Loc = tuple[str | int, ...]


def template_of(record: Record) -> PromptTemplate:
    return PromptTemplate(
        template=record.template,
        system=record.system,
        examples=[
            Example(output=e["output"], input=e.get("input"), variables=e.get("variables"))
            for e in record.examples
        ],
        variables=record.variables if record.declared else None,
        defaults=record.defaults,
        fewshot_delimiter=record.fewshot_delimiter,
        target_delimiter=record.target_delimiter,
    )


def find(session: Session, who: Principal, ref: str) -> Record:
    """The caller's template by id or name; another team's is a 404 like a missing one."""
    record = store.find(session, ref=ref, team=who.team, any_team=who.allowed(Role.admin))
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"prompt template {ref} not found")
    return record


def render(record: Record, variables: Mapping[str, Any], loc: Loc) -> Rendered:
    """The template rendered, or a 422 at ``loc`` + the variable at fault."""
    try:
        return template_of(record).render(variables, ("variables",))
    except PromptError as e:  # a variable's fault names it; the template's own, the variables
        where = (*loc, *e.loc[1:]) if e.loc[:1] == ("variables",) else loc
        raise request_error(where, f"prompt template {record.name}: {e.message}") from e


def rendered(session: Session, who: Principal, ref: str, variables: Mapping[str, Any]) -> Rendered:
    """``prompt_template`` rendered with ``variables``, as a request body names them."""
    return render(find(session, who, ref), variables, ("body", "variables"))


Body = TypeVar("Body", bound=Templated)


async def templated(session: Session, who: Principal, body: Body) -> Body:
    """A completions body with its ``prompt_template`` rendered in place of the prompt (chat:
    of the messages); a body without one, as it is."""
    if body.prompt_template is None:
        return body
    ref, variables = body.prompt_template, body.variables or {}
    out = await run_in_threadpool(rendered, session, who, ref, variables)
    if isinstance(body, ChatCompletionCreate):
        messages = [ChatMessage(role=m["role"], content=m["content"]) for m in out.messages]  # type: ignore[arg-type]
        return body.model_copy(update={"messages": messages})
    return body.model_copy(update={"prompt": out.text})


def _checked(body: PromptTemplateCreate) -> list[str]:
    template = PromptTemplate(
        template=body.template,
        system=body.system,
        examples=[Example(e.output, e.input, e.variables) for e in body.examples],
        variables=body.variables,
        defaults=body.defaults,
        fewshot_delimiter=body.fewshot_delimiter,
        target_delimiter=body.target_delimiter,
    )
    try:
        return template.check()
    except PromptError as e:
        raise request_error(("body", *e.loc), e.message) from e


def _fill(record: Record, body: PromptTemplateCreate, variables: list[str]) -> None:
    record.name = body.name
    record.description = body.description
    record.template = body.template
    record.system = body.system
    record.examples = [e.model_dump(exclude_none=True) for e in body.examples]
    record.variables = variables
    record.declared = body.variables is not None
    record.defaults = dict(body.defaults)
    record.fewshot_delimiter = body.fewshot_delimiter
    record.target_delimiter = body.target_delimiter


def _public(record: Record) -> PromptTemplatePublic:
    return PromptTemplatePublic.model_validate(record, from_attributes=True)


def _taken(name: str) -> HTTPException:
    return HTTPException(
        status.HTTP_409_CONFLICT, f"the team already has a prompt template named {name}"
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[refusals("prompts.create", "prompt_template")],
)
def create_template(
    body: PromptTemplateCreate, session: SessionDep, who: PrincipalDep, request: Request
) -> PromptTemplatePublic:
    variables = _checked(body)
    if store.by_name(session, team=who.team, name=body.name) is not None:
        raise _taken(body.name)
    record = Record(id=new_id(), team=who.team, owner=who.key_id, version=1)
    _fill(record, body, variables)
    session.add(record)
    try:
        session.flush()
    except IntegrityError as e:  # the same name created at the same moment
        session.rollback()
        raise _taken(body.name) from e
    audit_event(session, request, who, "prompts.create", "prompt_template", record.id,
                status_code=201, name=body.name)  # fmt: skip
    session.commit()
    return _public(record)


@router.get("")
def list_templates(
    session: SessionDep,
    who: PrincipalDep,
    team: Annotated[str | None, Query(description="admins: one team's only")] = None,
) -> PromptTemplatesPublic:
    """The team's templates by name (admins: every team's, or one)."""
    scope = (team if who.allowed(Role.admin) else who.team) or None
    found = store.list_templates(session, team=scope)
    return PromptTemplatesPublic(data=[_public(r) for r in found], count=len(found))


@router.get("/{ref}")
def get_template(ref: str, session: SessionDep, who: PrincipalDep) -> PromptTemplatePublic:
    return _public(find(session, who, ref))


@router.put("/{ref}", dependencies=[refusals("prompts.update", "prompt_template", "ref")])
def replace_template(
    ref: str,
    body: PromptTemplateCreate,
    session: SessionDep,
    who: PrincipalDep,
    request: Request,
) -> PromptTemplatePublic:
    """Replace the template (a rename included) and bump its version; campaigns made with an
    earlier version keep the prompts it rendered."""
    record = find(session, who, ref)
    variables = _checked(body)
    other = store.by_name(session, team=record.team, name=body.name)
    if other is not None and other.id != record.id:
        raise _taken(body.name)
    _fill(record, body, variables)
    record.version += 1
    record.updated_at = utcnow()
    try:
        session.flush()
    except IntegrityError as e:
        session.rollback()
        raise _taken(body.name) from e
    audit_event(session, request, who, "prompts.update", "prompt_template", record.id,
                name=body.name, version=record.version)  # fmt: skip
    session.commit()
    return _public(record)


@router.delete(
    "/{ref}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[refusals("prompts.delete", "prompt_template", "ref")],
)
def delete_template(ref: str, session: SessionDep, who: PrincipalDep, request: Request) -> None:
    record = find(session, who, ref)
    audit_event(session, request, who, "prompts.delete", "prompt_template", record.id,
                status_code=204, name=record.name)  # fmt: skip
    session.delete(record)
    session.commit()


@router.post("/{ref}/render")
def render_template(
    ref: str, body: RenderRequest, session: SessionDep, who: PrincipalDep
) -> RenderedPublic:
    """The template with these variables: the text prompt and the same as chat messages."""
    record = find(session, who, ref)
    out = render(record, body.variables, ("body", "variables"))
    return RenderedPublic.model_validate(
        {
            "template": record.id,
            "name": record.name,
            "version": record.version,
            "text": out.text,
            "messages": out.messages,
        }
    )
