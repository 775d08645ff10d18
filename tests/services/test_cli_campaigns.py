"""``llmforge prompts …``, ``llmforge prompt --template`` and ``llmforge ratings campaign …``
against a running control plane (uvicorn in a thread, keys on, no Ray) serving two tiny
models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from services.cli.main import main
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings
from tests.services.tiny_models import seeded_checkpoint


@pytest.fixture()
def served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[BackgroundServer, list[str]]]:
    server = BackgroundServer(
        Settings(
            home=tmp_path / "home",
            api_port=free_port(),
            ray_address=f"http://127.0.0.1:{free_port()}",
            poll_interval_s=60,
            rate_limit_per_min=0,
            shared_roots=str(tmp_path / "models"),  # every team reads it
        )
    )
    server.start()
    try:
        models = []
        for seed in (0, 4):
            ckpt = seeded_checkpoint(tmp_path / "models" / f"ckpt{seed}", seed)
            body = {"name": f"tiny{seed}", "kind": "checkpoint", "uri": str(ckpt)}
            r = httpx.post(f"{server.url}/api/v1/models", json=body, headers=server.headers)
            models.append(r.json()["id"])
        monkeypatch.setenv("LLMFORGE_API_URL", server.url)
        monkeypatch.setenv("LLMFORGE_HOME", str(server.settings.home))
        yield server, models
    finally:
        server.stop()


def test_templates_and_a_campaign_from_the_cli(
    served: tuple[BackgroundServer, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, models = served
    spec = tmp_path / "story.yaml"
    spec.write_text(yaml.safe_dump({"name": "story", "template": "The {{ who }} said"}))
    assert main(["prompts", "create", str(spec)]) == 0
    assert json.loads(capsys.readouterr().out)["variables"] == ["who"]
    assert main(["prompts", "render", "story", "--var", "who=king"]) == 0
    assert capsys.readouterr().out == "The king said\n"
    assert main(["prompts", "render", "story"]) == 1
    assert "missing variable 'who'" in capsys.readouterr().out

    # llmforge prompt --template streams what the rendered text gives
    sampling = ["--max-tokens", "6", "--temperature", "0"]
    assert main(["prompt", models[0], "--template", "story", "--var", "who=king", *sampling]) == 0
    templated = capsys.readouterr().out
    assert main(["prompt", models[0], "The king said", *sampling]) == 0
    assert capsys.readouterr().out == templated
    assert main(["prompt", models[0], "x", "--template", "story"]) == 2

    variables = tmp_path / "who.yaml"
    variables.write_text(yaml.safe_dump([{"who": "queen"}, {"who": "man"}]))
    create = ["ratings", "campaign", "create", "--model", models[0], "--model", models[1],
              "--prompt", "Hello world, the", "--template", "story", "--vars", str(variables),
              "--max-tokens", "8", "--temperature", "0", "--wait"]  # fmt: skip
    assert main(create) == 0
    campaign = json.loads(capsys.readouterr().out)
    assert campaign["state"] == "open" and campaign["progress"]["pairs"] == 3
    for left in (3, 2, 1):
        assert main(["ratings", "campaign", "next", campaign["id"]]) == 0
        shown = capsys.readouterr().out
        assert models[0] not in shown and models[1] not in shown
        assert f"({left} left for you)" in shown
        pair = shown.split("pair ")[-1].split()[0]
        assert main(["ratings", "campaign", "rate", campaign["id"], pair, "left"]) == 0
        assert f"rated: left ({left - 1} left for you)" in capsys.readouterr().out
    assert main(["ratings", "campaign", "next", campaign["id"]]) == 0
    assert "nothing left for you to rate" in capsys.readouterr().out
    assert main(["ratings", "campaign", "show", campaign["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["progress"]["ratings"] == 3
    assert main(["ratings", "campaign", "list"]) == 0
    assert "3 ratings of 3 pairs" in capsys.readouterr().out
    assert main(["ratings", "leaderboard", "--rounds", "0", "--task", campaign["task"]]) == 0
    board = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in board[1:]) == sorted(models)
    assert main(["ratings", "campaign", "create", "--model", models[0], "--prompt", "x"]) == 1
