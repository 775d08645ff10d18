"""``llmforge`` subcommands for the registry, human ratings and team limits (REST clients).

llmforge datasets list [--kind token_shards]      llmforge models show ID
llmforge models lineage ID                        llmforge ratings add FILE
llmforge ratings leaderboard [--task T]           llmforge teams limit red 8
llmforge ratings export prefs.jsonl [--task T]    (DPO preference records, for a finetune spec)
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from services.cli.api import Api, ApiError
from services.cli.campaigns import add_campaign_commands
from services.cli.client import api_client, load_file, print_error, print_result
from services.cli.download import add_registry_download
from services.cli.export_hf import add_export_hf


def cmd_list(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(
            lambda: Api(http).artifacts(args.category, kind=args.kind, limit=args.limit or None)
        )


def cmd_show(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).artifact(args.category, args.id))


def cmd_lineage(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).lineage(args.category, args.id))


def cmd_delete(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(
            lambda: Api(http).delete_artifact(args.category, args.id, args.delete_files)
        )


def cmd_ratings_add(args: argparse.Namespace) -> int:
    """One rating (a mapping) or many (a list) from a JSON/YAML file."""
    loaded = load_file(args.file)
    ratings = loaded if isinstance(loaded, list) else [loaded]
    status = 0
    with api_client() as http:
        api = Api(http)
        for rating in ratings:
            status |= print_result(partial(api.add_rating, rating))
    return status


def cmd_ratings_export(args: argparse.Namespace) -> int:
    """The team's ratings as DPO preference records, written by the server under its roots."""
    body = {"output": args.output, "task": args.task, "model": args.model}
    given = {k: v for k, v in body.items() if v is not None}
    with api_client(timeout=300) as http:
        return print_result(lambda: Api(http).export_preferences(given))


def cmd_leaderboard(args: argparse.Namespace) -> int:
    params = {
        "rounds": args.rounds,
        "seed": args.seed,
        **({"task": args.task} if args.task else {}),
    }
    with api_client(timeout=300) as http:
        try:
            board = Api(http).leaderboard(**params)
        except ApiError as e:
            return print_error(e)
    if args.json:
        return print_result(lambda: board)
    print(
        f"{'model':30} {'games':>6} {'win%':>6} {'Elo':>7} {'95% CI':>15} {'BT':>7} {'95% CI':>15}"
    )
    for m in board.models:
        elo_ci, bt_ci = m.elo_ci, m.bt_ci
        print(
            f"{m.model[:30]:30} {m.games:>6} {100 * m.win_rate:>5.1f}% "
            f"{m.elo:>7.0f} {elo_ci[0]:>7.0f}–{elo_ci[1]:<7.0f} "
            f"{m.bt:>7.0f} {bt_ci[0]:>7.0f}–{bt_ci[1]:<7.0f}"
        )
    return 0


def cmd_teams(args: argparse.Namespace) -> int:
    with api_client() as http:
        return print_result(lambda: Api(http).teams())


def cmd_team_limit(args: argparse.Namespace) -> int:
    with api_client() as http:
        api = Api(http)
        if args.max_running is None:
            return print_result(lambda: api.clear_team_limit(args.team))
        return print_result(lambda: api.set_team_limit(args.team, args.max_running))


def _add_registry(sub: Any, category: str, kinds: list[str]) -> None:
    parser = sub.add_parser(category, help=f"the {category} registry")
    actions = parser.add_subparsers(dest=f"{category}_command", required=True)
    listing = actions.add_parser("list", help=f"list {category}")
    listing.add_argument("--kind", choices=kinds)
    listing.add_argument("--limit", type=int)
    listing.set_defaults(fn=cmd_list, category=category)
    for name, fn, text in (
        ("show", cmd_show, "one record with its stats"),
        ("lineage", cmd_lineage, "the record and what it was made from"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument("id")
        p.set_defaults(fn=fn, category=category)
    delete = actions.add_parser("delete", help="delete the record (admin); files stay")
    delete.add_argument("id")
    delete.add_argument("--delete-files", action="store_true", help="also delete its files")
    delete.set_defaults(fn=cmd_delete, category=category)
    add_registry_download(actions, category)
    if category == "models":
        add_export_hf(actions)


def add_registry_commands(sub: Any) -> None:
    _add_registry(sub, "datasets", ["documents", "token_shards", "raw"])
    _add_registry(sub, "models", ["checkpoint", "finetuned", "adapter", "exported"])
    ratings = sub.add_parser("ratings", help="human pairwise ratings and the leaderboard")
    rsub = ratings.add_subparsers(dest="ratings_command", required=True)
    add = rsub.add_parser("add", help="send ratings from a JSON/YAML file (one or a list)")
    add.add_argument("file")
    add.set_defaults(fn=cmd_ratings_add)
    board = rsub.add_parser("leaderboard", help="win rates, Elo and Bradley–Terry with CIs")
    board.add_argument("--task")
    board.add_argument("--rounds", type=int, default=200, help="bootstrap resamples")
    board.add_argument("--seed", type=int, default=0)
    board.add_argument("--json", action="store_true", help="print the JSON answer")
    board.set_defaults(fn=cmd_leaderboard)
    export = rsub.add_parser(
        "export", help="write the ratings as DPO preference records (JSONL) for a finetune spec"
    )
    export.add_argument("output", help="a path or URI under the team's write roots")
    export.add_argument("--task")
    export.add_argument("--model", help="only ratings with this model on either side")
    export.set_defaults(fn=cmd_ratings_export)
    add_campaign_commands(rsub)
    teams = sub.add_parser("teams", help="team job limits (list; `limit TEAM [N]`)")
    tsub = teams.add_subparsers(dest="teams_command", required=True)
    tsub.add_parser("list", help="limits, running and queued jobs").set_defaults(fn=cmd_teams)
    limit = tsub.add_parser("limit", help="set a team's limit (admin); without N: the default")
    limit.add_argument("team")
    limit.add_argument("max_running", type=int, nargs="?")
    limit.set_defaults(fn=cmd_team_limit)
