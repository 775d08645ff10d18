"""``llmforge prompts …`` (stored prompt templates) and ``llmforge ratings campaign …`` (rating
campaigns), on the typed client (``services.cli.api``) of ``/api/v1/prompts`` and
``/api/v1/ratings/campaigns``.

llmforge prompts create qa.yaml                  llmforge prompts render qa --var question=Why?
llmforge prompts list | show REF | delete REF    llmforge prompts update REF qa.yaml
llmforge ratings campaign create --model A --model B --prompt "Tell a story" --template qa \\
    --vars questions.yaml --max-tokens 64 --wait
llmforge ratings campaign show ID | list         llmforge ratings campaign next ID
llmforge ratings campaign rate ID PAIR left|right|tie
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from services.cli.api import Api, ApiError
from services.cli.client import api_client, console, load_file, print_error, print_result


def parse_vars(pairs: list[str] | None) -> dict[str, str]:
    """``--var k=v`` values (repeatable) as a dict of strings."""
    found: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"--var {pair!r}: write it as NAME=VALUE")
        found[name] = value
    return found


def _vars_or_exit(args: argparse.Namespace, command: str) -> dict[str, str] | None:
    try:
        return parse_vars(args.var)
    except argparse.ArgumentTypeError as e:
        print(f"llmforge {command}: {e}", file=sys.stderr)
        return None


# --- prompts ------------------------------------------------------------------------------------


def cmd_prompts_list(args: argparse.Namespace) -> int:
    with api_client() as http:
        try:
            templates = Api(http).templates()
        except ApiError as e:
            return print_error(e)
    if args.json:
        return print_result(lambda: templates)
    for t in templates.data:
        print(f"{t.id}  {t.name:<24} v{t.version:<3} {', '.join(t.variables)}")
    return 0


def cmd_prompts_show(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).template(args.ref))


def cmd_prompts_create(args: argparse.Namespace) -> int:
    body = load_file(args.file)
    with api_client() as http:
        api = Api(http)
        if args.ref:
            return print_result(lambda: api.replace_template(args.ref, body))
        return print_result(lambda: api.create_template(body))


def cmd_prompts_delete(args: argparse.Namespace) -> int:
    with api_client() as http:
        try:
            Api(http).delete_template(args.ref)
        except ApiError as e:
            return print_error(e)
    print(f"deleted {args.ref}")
    return 0


def cmd_prompts_render(args: argparse.Namespace) -> int:
    variables = _vars_or_exit(args, "prompts render")
    if variables is None:
        return 2
    with api_client() as http:
        try:
            rendered = Api(http).render_template(args.ref, variables)
        except ApiError as e:
            return print_error(e)
    if args.json:
        return print_result(lambda: rendered)
    print(rendered.text)
    return 0


def add_prompts_commands(sub: Any) -> None:
    parser = sub.add_parser("prompts", help="stored prompt templates (Jinja2, few-shot)")
    psub = parser.add_subparsers(dest="prompts_command", required=True)
    listing = psub.add_parser("list", help="the team's templates")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(fn=cmd_prompts_list)
    show = psub.add_parser("show", help="one template (id or name)")
    show.add_argument("ref")
    show.set_defaults(fn=cmd_prompts_show)
    create = psub.add_parser("create", help="store a template from a JSON/YAML file")
    create.add_argument("file")
    create.set_defaults(fn=cmd_prompts_create, ref=None)
    update = psub.add_parser("update", help="replace a template (its version goes up)")
    update.add_argument("ref")
    update.add_argument("file")
    update.set_defaults(fn=cmd_prompts_create)
    delete = psub.add_parser("delete", help="delete a template")
    delete.add_argument("ref")
    delete.set_defaults(fn=cmd_prompts_delete)
    render = psub.add_parser("render", help="the prompt a template makes with these variables")
    render.add_argument("ref")
    render.add_argument("--var", action="append", metavar="NAME=VALUE", help="repeatable")
    render.add_argument("--json", action="store_true", help="also the chat messages")
    render.set_defaults(fn=cmd_prompts_render)


# --- rating campaigns ---------------------------------------------------------------------------


def _prompts_file(path: str) -> list[str]:
    """A JSON/YAML list of prompts, or a text file of one prompt a line."""
    if Path(path).suffix in (".json", ".yaml", ".yml"):
        loaded = load_file(path)
        if not isinstance(loaded, list):
            raise ValueError(f"{path}: a list of prompts expected")
        return [str(p) for p in loaded]
    return [line for line in Path(path).read_text().splitlines() if line.strip()]


def _campaign_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"models": args.model, "prompts": list(args.prompt or [])}
    if args.prompts_file:
        body["prompts"] += _prompts_file(args.prompts_file)
    if args.template:
        body["prompt_template"] = args.template
    if args.vars:
        sets = load_file(args.vars)
        body["variables"] = sets if isinstance(sets, list) else [sets]
    sampling = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
    }
    body["sampling"] = {k: v for k, v in sampling.items() if v is not None}
    optional = {
        "name": args.name,
        "seed": args.seed,
        "task": args.task,
        "ratings_per_pair": args.ratings_per_pair,
    }
    body |= {k: v for k, v in optional.items() if v is not None}
    if args.chat:
        body["chat"] = True
    return body


def cmd_campaign_create(args: argparse.Namespace) -> int:
    try:
        body = _campaign_body(args)
    except (OSError, ValueError) as e:
        print(f"llmforge ratings campaign create: {e}", file=sys.stderr)
        return 1
    with api_client() as http:
        api = Api(http)
        try:
            campaign = api.create_campaign(body)
            if args.wait:
                with console.status("generating the completions…"):
                    while campaign.state == "generating":
                        time.sleep(1)
                        campaign = api.campaign(campaign.id)
        except ApiError as e:
            return print_error(e)
    print_result(lambda: campaign)
    return 0 if not args.wait or campaign.state == "open" else 1


def cmd_campaign_show(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).campaign(args.id))


def cmd_campaign_list(args: argparse.Namespace) -> int:
    with api_client() as http:
        try:
            campaigns = Api(http).campaigns()
        except ApiError as e:
            return print_error(e)
    if args.json:
        return print_result(lambda: campaigns)
    for c in campaigns.data:
        p = c.progress
        print(
            f"{c.id}  {c.state:<10} {len(c.models)} models  {c.prompts} prompts  "
            f"{p.ratings} ratings of {p.pairs} pairs  {c.name or ''}"
        )
    return 0


def cmd_campaign_next(args: argparse.Namespace) -> int:
    with api_client() as http:
        try:
            got = Api(http).next_pair(args.id)
        except ApiError as e:
            return print_error(e)
    if args.json:
        return print_result(lambda: got)
    pair = got.pair
    if pair is None:
        print(f"nothing left for you to rate in campaign {args.id} ({got.state})")
        return 0
    for title, text in (("prompt", pair.prompt), ("left", pair.left), ("right", pair.right)):
        print(f"──── {title} " + "─" * 40)
        print(text)
    print("─" * 48)
    print(f"pair {pair.id} ({got.progress.left_for_you} left for you); rate it with:")
    print(f"  llmforge ratings campaign rate {args.id} {pair.id} left|right|tie")
    return 0


def cmd_campaign_rate(args: argparse.Namespace) -> int:
    body = {"pair_id": args.pair, "verdict": args.verdict}
    with api_client() as http:
        try:
            rated = Api(http).rate_pair(args.id, body)
        except ApiError as e:
            return print_error(e)
    if args.json:
        return print_result(lambda: rated)
    print(f"rated: {args.verdict} ({rated.progress.left_for_you} left for you)")
    return 0


def add_campaign_commands(ratings: Any) -> None:
    """``llmforge ratings campaign …`` under the ratings command's subparsers."""
    parser = ratings.add_parser("campaign", help="rating campaigns: models, prompts, blind pairs")
    csub = parser.add_subparsers(dest="campaign_command", required=True)
    create = csub.add_parser("create", help="two or more models complete a prompt set")
    create.add_argument("--model", action="append", required=True, help="a model id (2 or more)")
    create.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    create.add_argument("--prompts-file", help="prompts: a JSON/YAML list, or one a line")
    create.add_argument("--template", help="a stored prompt template (id or name)")
    create.add_argument("--vars", help="the template's variable sets: a JSON/YAML list")
    create.add_argument("--max-tokens", type=int)
    create.add_argument("--temperature", type=float)
    create.add_argument("--top-p", type=float)
    create.add_argument("--top-k", type=int)
    create.add_argument("--seed", type=int)
    create.add_argument("--name")
    create.add_argument("--task", help="the ratings' task (default campaign-<id>)")
    create.add_argument("--ratings-per-pair", type=int)
    create.add_argument("--chat", action="store_true", help="through the models' chat template")
    create.add_argument("--wait", action="store_true", help="until the completions are made")
    create.set_defaults(fn=cmd_campaign_create)
    listing = csub.add_parser("list", help="the team's campaigns")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(fn=cmd_campaign_list)
    show = csub.add_parser("show", help="a campaign with its progress and errors")
    show.add_argument("id")
    show.set_defaults(fn=cmd_campaign_show)
    nxt = csub.add_parser("next", help="a pair for you to judge (models not named)")
    nxt.add_argument("id")
    nxt.add_argument("--json", action="store_true")
    nxt.set_defaults(fn=cmd_campaign_next)
    rate = csub.add_parser("rate", help="your verdict on a pair")
    rate.add_argument("id")
    rate.add_argument("pair")
    rate.add_argument("verdict", choices=["left", "right", "tie"])
    rate.add_argument("--json", action="store_true")
    rate.set_defaults(fn=cmd_campaign_rate)
