"""Spec and pipeline files as the CLI reads them: ``${NAME}`` variables (``--var``, then the
environment, then ``${NAME:-default}``), and the repository's own pipeline files accepted by a
live control plane."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from services.cli import main
from services.cli.client import MissingVariableError, expand_variables, load_file
from services.ray_head import free_port
from services.server import BackgroundServer
from services.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_variables_come_from_var_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORPUS", "/env/corpus")
    monkeypatch.delenv("OUT", raising=False)
    spec = {
        "input": "${CORPUS}/books",
        "output": "${OUT:-runs/x}",
        "steps": [{"kind": "length", "note": "${DATA}"}],
        "data": "${tokenize.output}",  # a pipeline placeholder: left for the server
        "n": 3,
    }
    assert expand_variables(spec, {"DATA": "d"}) == {
        "input": "/env/corpus/books",
        "output": "runs/x",
        "steps": [{"kind": "length", "note": "d"}],
        "data": "${tokenize.output}",
        "n": 3,
    }
    assert expand_variables(spec, {"DATA": "d", "CORPUS": "/given"})["input"] == "/given/books"


def test_a_missing_variable_names_the_option_that_gives_it(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("input: ${NOWHERE_SET_1234}/x\n")
    with pytest.raises(MissingVariableError, match=r"--var NOWHERE_SET_1234=VALUE"):
        load_file(str(path))
    with pytest.raises(MissingVariableError, match="NAME=VALUE"):
        load_file(str(path), ["no-equals-sign"])
    with pytest.raises(SystemExit, match="NOWHERE_SET_1234"):
        main(["pipelines", "run", str(path)])


def test_a_value_cannot_change_the_files_structure(tmp_path: Path) -> None:
    """Variables are expanded in the parsed strings, so YAML in a value stays text."""
    path = tmp_path / "p.yaml"
    path.write_text("input: ${X}\noutput: o\n")
    assert load_file(str(path), ["X=a\noutput: evil"]) == {
        "input": "a\noutput: evil",
        "output": "o",
    }


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[BackgroundServer]:
    # no Ray behind it (nothing is polled): the pipeline is validated and stored, not run
    background = BackgroundServer(
        Settings(
            home=tmp_path / "home",
            api_port=free_port(),
            ray_address=f"http://127.0.0.1:{free_port()}",
            poll_interval_s=3600,
        )
    )
    background.start()
    yield background
    background.stop()


def test_the_reference_pipeline_is_accepted_as_the_readme_runs_it(
    server: BackgroundServer,
    shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LLMFORGE_API_URL", server.url)
    monkeypatch.setenv("LLMFORGE_API_KEY", server.headers["Authorization"].split()[-1])
    file = REPO / "pipelines" / "reference.yaml"
    assert main(["pipelines", "run", str(file), "--var", f"DATA={shared_data}"]) == 0
    pipeline = json.loads(capsys.readouterr().out)
    stages = {job["stage"]: job for job in pipeline["jobs"]}
    assert list(stages) == ["curate", "tokenize", "train", "evaluate"]
    assert stages["curate"]["spec"]["input"] == f"{shared_data}/text/gutenberg_books"
    # the model the file names is the one the planner gives for its compute budget
    raw = yaml.safe_load(file.read_text())
    train = next(s for s in raw["stages"] if s["name"] == "train")["spec"]
    with httpx.Client(base_url=server.url, headers=server.headers) as http:
        plan = http.post(
            "/api/v1/plan",
            json={"flops": train["flops"], "vocab_size": 4096, "block_size": 256, "style": "gpt2"},
        )
    assert plan.status_code == 200, plan.text
    config = plan.json()["config"]
    shape = ("n_layer", "n_head", "n_embd", "bias")
    assert {k: config[k] for k in shape} == {k: train["model"][k] for k in shape}
