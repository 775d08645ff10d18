"""The web console end to end in headless Chromium, against a control plane with keys and real
jobs on local Ray (tests/console/conftest.py): sign in, the jobs list, a running train job's
chart gaining points, a curate job's funnel, a model's lineage, a streamed completion, a rating
that changes the leaderboard, cancelling a running job, a read-only key without the cancel
button (and a 403 when it tries anyway), axe-core's check, and a phone-width layout.

The tests share one module's world and run in file order. Screenshots go to the module's
``console-screenshots`` temporary folder (its path is printed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.console.conftest import World

pytestmark = [pytest.mark.ray]
AXE = Path(__file__).resolve().parents[2] / "services/console/node_modules/axe-core/axe.min.js"
PAGES_CHECKED = ["/console/", "/console/playground", "/console/rate", "/console/leaderboard",
                 "/console/registry", "/console/admin", "/console/ablations"]  # fmt: skip


def _expect() -> Any:
    return pytest.importorskip("playwright.sync_api").expect


def sign_in(browser: Any, world: World, role: str, **context: Any) -> Any:
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{world.url}/console/")
    page.wait_for_url("**/console/signin*")
    page.get_by_label("API key").fill(world.keys[role])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{world.url}/console/")
    return page


def shot(page: Any, world: World, name: str) -> None:
    page.screenshot(path=str(world.shots / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def member(browser: Any, world: World) -> Any:
    return sign_in(browser, world, "member")


def test_sign_in_keeps_the_key_in_the_tab_and_lists_the_jobs(member: Any, world: World) -> None:
    expect = _expect()
    print(f"screenshots: {world.shots}")
    expect(member.locator("#who")).to_contain_text("member · team default")
    stored = member.evaluate("() => [sessionStorage.getItem('llmforge.key'), localStorage.length]")
    assert stored == [world.keys["member"], 0]  # this tab's session only
    assert world.keys["member"] not in member.url
    for job in (world.curate, world.train):
        expect(member.locator(f'tr[data-job-id="{job["id"]}"]')).to_be_visible()
    member.get_by_label("Search").fill(world.train["id"])
    expect(member.locator("#jobs tbody tr")).to_have_count(1)
    shot(member, world, "jobs")
    member.get_by_label("Search").fill("")


def test_the_playground_streams_a_completion(member: Any, world: World) -> None:
    expect = _expect()
    member.goto(f"{world.url}/console/playground")
    member.get_by_label("Model").select_option(world.models[0])
    member.get_by_label("Prompt", exact=True).fill("Hello world, the")
    member.get_by_label("Max tokens").fill("12")
    member.get_by_label("Temperature").fill("0")
    member.get_by_role("button", name="Generate").click()
    expect(member.locator("#status")).to_contain_text("Done", timeout=60_000)
    out = member.locator("#completion")
    assert int(out.get_attribute("data-chunks") or 0) > 1  # it came in pieces
    # the same text the API gives without streaming (greedy)
    body = {"prompt": "Hello world, the", "max_tokens": 12, "temperature": 0}
    whole = world.http.post(f"/api/v1/models/{world.models[0]}/completions", json=body,
                            headers=world.as_("member")).json()  # fmt: skip
    expect(out).to_have_text(whole["choices"][0]["text"])
    shot(member, world, "playground")


def test_a_rating_changes_the_leaderboard(member: Any, world: World) -> None:
    expect = _expect()
    member.goto(f"{world.url}/console/leaderboard")
    expect(member.locator("#ratings-caption")).to_contain_text("0 ratings")
    member.goto(f"{world.url}/console/rate")
    member.get_by_label("Campaign").select_option(world.campaign)
    expect(member.locator("#pair")).to_be_visible(timeout=60_000)
    expect(member.locator("#left")).not_to_be_empty()
    member.get_by_role("button", name="Left is better").click()
    expect(member.locator("#done")).to_be_visible()
    member.goto(f"{world.url}/console/leaderboard")
    expect(member.locator("#ratings-caption")).to_contain_text("1 ratings")
    rows = member.locator("#ratings-board tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first.locator(".wins")).to_have_text("1")  # the winner ranks first
    shot(member, world, "leaderboard")


def test_the_curation_funnel_and_rejected_samples(member: Any, world: World) -> None:
    expect = _expect()
    world.wait_job(world.curate["id"], {"SUCCEEDED"}, timeout_s=300)
    member.goto(f"{world.url}/console/jobs/{world.curate['id']}")
    funnel = member.locator("#funnel-table")
    expect(funnel).to_be_visible()
    expect(funnel.locator('tr[data-step="length"]')).to_contain_text("66")
    expect(funnel.locator('tr[data-step="exact_dedup"]')).to_contain_text("exact_dedup")
    reasons = member.locator("details.reason")
    expect(reasons).not_to_have_count(0)
    reasons.first.locator("summary").click()
    expect(reasons.first.locator("li").first).to_be_visible()
    shot(member, world, "curate-funnel")


def test_a_models_lineage_graph(member: Any, world: World) -> None:
    expect = _expect()
    r = world.http.get(f"/api/v1/datasets?job_id={world.curate['id']}", headers=world.as_("member"))
    [dataset] = r.json()["data"]
    body = {"name": "tiny-from-curated", "kind": "checkpoint", "uri": dataset["uri"],
            "parent_id": dataset["id"]}  # fmt: skip
    model = world.http.post("/api/v1/models", json=body, headers=world.as_("member")).json()
    member.goto(f"{world.url}/console/registry")
    member.get_by_role("link", name=f"tiny-from-curated ({model['id']})").click()
    graph = member.locator("#lineage svg")
    expect(graph.locator(f'g.node[data-artifact-id="{dataset["id"]}"]')).to_be_visible()
    expect(graph.locator(f'g.node.current[data-artifact-id="{model["id"]}"]')).to_be_visible()
    expect(graph).to_contain_text(f"job {world.curate['id']}")
    shot(member, world, "model-lineage")
    graph.locator(f'a:has(g.node[data-artifact-id="{dataset["id"]}"])').click()  # by keyboard too
    member.wait_for_url(f"**/console/datasets/{dataset['id']}")


def test_a_running_train_jobs_chart_gains_points(member: Any, world: World) -> None:
    expect = _expect()
    member.goto(f"{world.url}/console/jobs/{world.train['id']}")
    chart = member.locator("#chart-loss")
    expect(chart).to_be_visible(timeout=240_000)  # Ray Train starts slowly on 2 cores
    expect(member.locator("#job-state")).to_have_text("RUNNING")
    first = int(chart.get_attribute("data-points") or 0)
    expect(chart).not_to_have_attribute("data-points", str(first), timeout=30_000)
    assert int(chart.get_attribute("data-points") or 0) > first
    for name in ("lr", "grad_norm", "tokens_per_s"):
        expect(member.locator(f"#chart-{name}")).to_be_visible()
    expect(member.locator("#chart-loss canvas")).to_be_visible()  # uPlot drew it
    link = member.get_by_role("link", name="Open in the Ray dashboard")
    assert link.get_attribute("href").endswith(f"/#/jobs/{world.train['ray_submission_id'] or ''}")
    expect(member.locator("#logs")).not_to_be_empty()
    shot(member, world, "train-job-running")


def test_a_read_only_key_sees_no_cancel_button_and_gets_403(browser: Any, world: World) -> None:
    expect = _expect()
    page = sign_in(browser, world, "read_only")
    world.wait_job(world.train["id"], {"RUNNING"})
    page.goto(f"{world.url}/console/jobs/{world.train['id']}")
    expect(page.locator("#job-state")).to_have_text("RUNNING")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    expect(page.locator("#cancel")).to_be_hidden()
    tried = page.evaluate(
        """async (id) => {
            const r = await fetch(`/api/v1/jobs/${id}/cancel`, {method: "POST",
                headers: {Authorization: `Bearer ${sessionStorage.getItem("llmforge.key")}`}});
            return [r.status, (await r.json()).detail];
        }""",
        world.train["id"],
    )
    assert tried[0] == 403 and "read_only" in tried[1], tried
    assert world.job(world.train["id"])["state"] == "RUNNING"
    page.goto(f"{world.url}/console/playground")
    expect(page.get_by_role("button", name="Generate")).to_have_count(0)
    shot(page, world, "read-only-job")
    page.context.close()


def test_cancel_a_running_job(member: Any, world: World) -> None:
    expect = _expect()
    member.goto(f"{world.url}/console/jobs/{world.train['id']}")
    member.get_by_role("button", name="Cancel job").click()
    expect(member.locator("#job-state")).to_have_text("STOPPED")
    assert world.wait_job(world.train["id"], {"STOPPED"})["message"] == "cancelled by user"
    expect(member.get_by_role("button", name="Cancel job")).to_have_count(0)  # nothing to cancel
    shot(member, world, "train-job-cancelled")


def test_axe_finds_no_serious_violations(browser: Any, world: World) -> None:
    if not AXE.is_file():
        pytest.skip(f"{AXE} absent: run `npm ci` in services/console (scripts/dev.sh does)")
    # axe is injected as an inline script, which the console's CSP forbids: bypass it here only
    page = sign_in(browser, world, "admin", bypass_csp=True)
    pages = [
        *PAGES_CHECKED,
        f"/console/jobs/{world.train['id']}",
        f"/console/jobs/{world.curate['id']}",
        f"/console/models/{world.models[0]}",
    ]
    found = {}
    for path in pages:
        page.goto(f"{world.url}{path}")
        page.wait_for_load_state("networkidle")
        page.add_script_tag(path=str(AXE))
        result = page.evaluate("async () => (await axe.run(document)).violations")
        serious = [v for v in result if v["impact"] in ("serious", "critical")]
        if serious:
            found[path] = [
                (v["id"], v["help"], [n["target"] for n in v["nodes"][:3]]) for v in serious
            ]
    assert not found, json.dumps(found, indent=1)
    page.context.close()


def test_usable_at_phone_width(browser: Any, world: World) -> None:
    expect = _expect()
    page = sign_in(browser, world, "member", viewport={"width": 390, "height": 844})
    page.goto(f"{world.url}/console/jobs/{world.curate['id']}")
    expect(page.locator("#funnel-table")).to_be_visible()
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways at phone width ({width} px)"
    shot(page, world, "phone-curate-job")
    page.context.close()


def test_an_admin_makes_a_key_and_sets_a_team_limit(browser: Any, world: World) -> None:
    expect = _expect()
    page = sign_in(browser, world, "admin")
    page.get_by_role("link", name="Admin").click()
    page.get_by_label("Key name").fill("carol")
    page.get_by_label("Key team").fill("blue")
    page.get_by_label("Key role").select_option("read_only")
    page.get_by_role("button", name="Create key").click()
    made = page.locator("#new-key-value")
    expect(made).to_have_text(re.compile(r"^lf_"))
    r = world.http.get(
        "/console/api/whoami", headers={"Authorization": f"Bearer {made.text_content()}"}
    )
    assert r.json()["role"] == "read_only" and r.json()["team"] == "blue"
    page.get_by_label("Team", exact=True).fill("blue")
    page.get_by_label("Max running jobs").fill("3")
    page.get_by_role("button", name="Set limit").click()
    expect(page.locator("#teams tbody tr", has_text="blue")).to_contain_text("3")
    shot(page, world, "admin")
    page.context.close()


def test_members_see_no_admin_page_and_the_keyboard_reaches_the_content(
    member: Any, world: World
) -> None:
    expect = _expect()
    member.goto(f"{world.url}/console/")
    expect(member.get_by_role("link", name="Admin")).to_have_count(0)
    member.keyboard.press("Tab")
    expect(member.get_by_role("link", name="Skip to content")).to_be_focused()
    member.keyboard.press("Enter")
    expect(member.locator("#main")).to_be_focused()


def test_a_pipelines_stages_and_queue_positions(browser: Any, world: World) -> None:
    """A team whose limit is 0 keeps its pipeline queued: no Ray work, a queue to look at."""
    expect = _expect()
    admin = world.as_("admin")
    r = world.http.post("/api/v1/keys", json={"name": "g", "team": "green"}, headers=admin)
    green = {"Authorization": f"Bearer {r.json()['key']}"}
    limit = world.http.put("/api/v1/teams/green/limit", json={"max_running": 0}, headers=admin)
    assert limit.status_code == 200, limit.text
    work = Path(world.curate["spec"]["output"]).parent / "green"
    body = {"name": "paused", "stages": [
        {"name": "curate", "kind": "curate",
         "spec": {"input": world.curate["spec"]["input"], "output": str(work / "curated")}},
        {"name": "tokenize", "kind": "tokenize", "after": ["curate"],
         "spec": {"input": "${curate.output}", "output": str(work / "tokens"), "vocab_size": 512}},
    ]}  # fmt: skip
    r = world.http.post("/api/v1/pipelines", json=body, headers=green)
    assert r.status_code == 201, r.text
    pipeline = r.json()
    page = sign_in(browser, world, "admin")
    page.locator(f'a[href="/console/?pipeline={pipeline["id"]}"]').first.click()
    expect(page.locator("#pipeline")).to_contain_text(f"Pipeline paused ({pipeline['id']})")
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="QUEUED")).to_contain_text("green")
    expect(rows.filter(has_text="WAITING")).to_have_count(1)
    shot(page, world, "pipeline")
    page.context.close()
