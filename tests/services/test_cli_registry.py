"""``llmforge ratings|datasets|models|teams`` against a running control plane (no Ray needed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli import main
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BackgroundServer]:
    settings = Settings(
        home=tmp_path / "home",
        api_port=free_port(),
        ray_address=f"http://127.0.0.1:{free_port()}",
        poll_interval_s=3600,
    )
    running = BackgroundServer(settings)
    running.start()
    monkeypatch.setenv("LLMFORGE_API_URL", running.url)
    monkeypatch.setenv("LLMFORGE_HOME", str(settings.home))  # the CLI reads the admin key there
    yield running
    running.stop()


def test_ratings_registry_and_team_limits_from_the_cli(
    server: BackgroundServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ratings = [
        {"prompt": "p", "model_a": "big", "model_b": "small", "completion_a": "x",
         "completion_b": "y", "winner": winner}
        for winner in ("a", "a", "a", "b", "tie")
    ]  # fmt: skip
    path = tmp_path / "ratings.json"
    path.write_text(json.dumps(ratings))
    assert main(["ratings", "add", str(path)]) == 0
    capsys.readouterr()
    assert main(["ratings", "leaderboard", "--rounds", "20"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["model", "games", "win%", "Elo"]
    assert [line.split()[0] for line in table[1:]] == ["big", "small"]
    assert table[1].split()[1:3] == ["5", "70.0%"]
    assert main(["ratings", "export", "prefs.jsonl"]) == 0  # DPO records, in the team's area
    exported = json.loads(capsys.readouterr().out)
    assert exported["count"] == 4 and exported["dropped"] == {"tie": 1}
    assert len(Path(exported["output"]).read_text().splitlines()) == 4

    assert main(["datasets", "list"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 0
    assert main(["models", "show", "nope"]) == 1
    assert "not found" in capsys.readouterr().out

    assert main(["teams", "limit", "red", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["max_running"] == 3
    assert main(["teams", "limit", "red"]) == 0
    assert json.loads(capsys.readouterr().out)["limit_source"] == "default"
