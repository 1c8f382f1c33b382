"""The demo page (GET /ui) and the offline API docs (/docs) in a real headless Chromium.

Debian's `chromium` (installed by .ci/run, like Redis) driven by Playwright's Python client against that system
browser (`executable_path`; Playwright's own browser downloads are never used). The model is trained on
MovieLens-100k converted from its raw files (../shared/data/ml-100k) when present, else on the project's own
synthetic catalogue; both carry item titles. The page must show titles and explanation bars, show similar items
on a click, and send a click event that the service records (in Redis) and that changes the list. Every request
the browser makes must go to the service itself (no CDN). The screenshots are kept under test-artifacts/
(gitignored) for a person to look at.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mrdib.artifact.store import LoadedArtifact, load_artifact
from service.api import create_app
from service.settings import Settings
from tests._service_helpers import ServerThread, redis_available, wait_for
from tests.conftest import REPO, shared_data_dir

CHROMIUM = os.environ.get("MRDIB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS_DIR = REPO / "test-artifacts"  # screenshots (gitignored)
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Small and short: the page needs a real MRdIB model with its components, not a good one.
TRAIN = {"device": "cpu", "threads": 1, "epochs": 3, "patience": 50, "batch_size": 2048, "lr": 0.01, "topk": [20],
         "backbone.name": "bpr", "backbone.embedding_dim": 32, "mrdib.enabled": True, "mrdib.hidden_dim": 32,
         "mrdib.shared_dim": 16, "mrdib.unique_dim": 16, "mrdib.synergy_dim": 16, "mrdib.latent_dim": 32,
         "mrdib.club_hidden_dim": 16}


def _need(what: str, ok: bool) -> None:
    """CI must run this test (it installs chromium): a missing part fails there, and skips elsewhere."""
    if not ok:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{what} is not available")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, LoadedArtifact]:
    """MovieLens (raw files -> `mrdib data convert-grouplens`, titles from u.item) or the synthetic catalogue
    (generated titles) -> train -> export."""
    torch = pytest.importorskip("torch")
    from typer.testing import CliRunner

    from mrdib.cli import app
    from training.config import load_config
    from training.data.synth import SynthConfig, generate_synthetic
    from training.experiment import resolve_dataset
    from training.export import ExportOptions, run_export
    from training.trainer import train

    work = tmp_path_factory.mktemp("ui-model")
    shared = shared_data_dir()
    raw = shared / "ml-100k" if shared is not None else None
    data = work / "data"
    if raw is not None and (raw / "u.data").is_file():
        r = CliRunner().invoke(app, ["data", "convert-grouplens", str(raw), "--out", str(data)])
        assert r.exit_code == 0, r.output
    else:
        generate_synthetic(SynthConfig.preset("small"), data)
    threads = torch.get_num_threads()
    try:
        cfg = load_config(None, {**TRAIN, "data": str(data), "seed": 3})
        train(cfg, resolve_dataset(str(data)), work / "ckpt", progress=False, curves=False)
        res = run_export(ExportOptions(checkpoint=work / "ckpt", out=work / "artifacts", tower_epochs=5,
                                       max_history=30))
    finally:
        torch.set_num_threads(threads)
    art = load_artifact(res.path)
    assert art.item_meta is not None and "title" in (art.manifest.item_meta_fields or [])
    return work / "artifacts", art


@pytest.fixture()
def server(model, tmp_path) -> Iterator[tuple[str, str | None]]:
    """The service over the model; with Redis when one answers (as deployed), else embedded. (url, prefix)."""
    root, _ = model
    prefix = f"mrdib-ui-{uuid.uuid4().hex[:8]}:" if redis_available(REDIS_URL) else None
    settings = Settings(artifacts=root, redis_url=REDIS_URL if prefix else None, redis_key_prefix=prefix or "",
                        stream=(prefix or "") + "events", wal_path=tmp_path / "events.jsonl", poll_interval_s=0,
                        cpu_threads=2)
    try:
        with ServerThread(create_app(settings)) as srv:
            yield srv.url, prefix
    finally:
        if prefix:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)


@contextlib.contextmanager
def browser(tmp_path: Path):
    """A fresh headless Chromium profile; yields (page, log) where log collects requests and console errors."""
    _need(f"Debian's chromium ({CHROMIUM})", Path(CHROMIUM).is_file())
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the Playwright Python client (dev extra)", False)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000})
        try:
            page = ctx.new_page()
            page.set_default_timeout(20_000)
            log: dict[str, list[str]] = {"requests": [], "errors": []}
            page.on("request", lambda r: log["requests"].append(r.url))
            page.on("console", lambda m: log["errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: log["errors"].append(str(e)))
            yield page, log
        finally:
            ctx.close()


def _screenshot(page, name: str) -> Path:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    path = ARTIFACTS_DIR / name
    page.screenshot(path=str(path), full_page=True)
    return path


def _titles(art: LoadedArtifact) -> dict[str, str]:
    return {i: str(m.get("title", i)) for i, m in zip(art.item_ids, art.item_meta or [], strict=True)}


def _page_items(page, list_id: str) -> list[tuple[str, str]]:
    """(item id, shown title) of each entry of a list on the page."""
    return [(li.get_attribute("data-item-id"), li.locator(".title").inner_text())
            for li in page.locator(f"#{list_id} > li.item").all()]


def test_page_shows_titles_explanations_similar_items_and_records_clicks(model, server, tmp_path):
    _, art = model
    url, prefix = server
    titles = _titles(art)
    user = art.user_ids[0]
    api = httpx.Client(base_url=url, timeout=30)
    with browser(tmp_path) as (page, log):
        page.goto(f"{url}/ui?user={user}")
        page.wait_for_selector("body[data-ready=true]")
        # The top 20 for this user, as the API answers them, each shown by its title.
        want = api.post("/recommend", json={"user_id": user, "k": 20}).json()["items"]
        shown = _page_items(page, "recs")
        assert [i for i, _ in shown] == [w["item_id"] for w in want]
        assert [t for _, t in shown] == [titles[i] for i, _ in shown]
        assert all(t != i for i, t in shown)  # every item has a title (MovieLens' or a generated one)
        # An explanation bar per item, one segment per MRdIB component, and "because" lines naming history titles.
        assert page.locator("#recs .item .bar").count() == 20
        segs = page.locator("#recs .item").first.locator(".bar span")
        assert sorted(s.get_attribute("data-component") for s in segs.all()) == sorted(art.manifest.components)
        because = page.locator("#recs .item .because").all_inner_texts()
        seen = {titles[art.item_ids[r]] for r in art.seen_items(0).tolist()}
        assert because and all(t.startswith("Because of: ") for t in because)
        assert any(any(s in t for s in seen) for t in because)
        assert page.locator("#legend li").count() == len(art.manifest.components)
        _screenshot(page, "ui-recommendations.png")

        # Click an item: its similar items, as the API answers them, with titles.
        first_id, first_title = shown[0]
        page.locator("#recs > li.item").first.locator(".title").click()
        page.wait_for_function("document.querySelectorAll('#similar > li.item').length === 10")
        sim = api.get(f"/items/{first_id}/similar", params={"k": 10}).json()["items"]
        got = _page_items(page, "similar")
        assert [i for i, _ in got] == [s["item_id"] for s in sim] and first_id not in dict(got)
        assert [t for _, t in got] == [titles[i] for i, _ in got]
        assert page.locator("#similar-title").inner_text() == f"Similar to {first_title}"
        _screenshot(page, "ui-similar.png")

        # "I clicked this": the event is recorded (202), and the refreshed list no longer offers that item.
        page.locator("#recs > li.item").first.locator(".click-btn").click()
        page.wait_for_function("document.getElementById('status').dataset.eventId !== undefined")
        status = page.locator("#status").inner_text()
        assert status.startswith(f"Recorded a click on “{first_title}”"), status
        event_id = page.locator("#status").get_attribute("data-event-id")
        page.wait_for_function(f"!document.querySelector('#recs > li.item[data-item-id=\"{first_id}\"]')")
        if prefix:  # the event is in the Redis stream the nightly retraining reads
            import redis

            from mrdib.redis_keys import KeyLayout

            entries = [e for key in KeyLayout(prefix, prefix + "events").streams()
                       for e in redis.Redis.from_url(REDIS_URL).xrange(key)]
            fields = [{k.decode(): v.decode() for k, v in e[1].items()} for e in entries]
            assert [(f["event_id"], f["user_id"], f["item_id"]) for f in fields] == [(event_id, user, first_id)]
            assert "stored in redis" in status
        after = api.post("/recommend", json={"user_id": user, "k": 20}).json()["items"]
        wait_for(lambda: [i for i, _ in _page_items(page, "recs")] == [a["item_id"] for a in after],
                 what="the page to show the refreshed list")
        _screenshot(page, "ui-after-click.png")
    assert not log["errors"], log["errors"]
    assert log["requests"] and all(r.startswith(url) for r in log["requests"]), log["requests"]


def test_anonymous_visitor_builds_a_history_by_clicking(model, server, tmp_path):
    _, art = model
    url, _ = server
    titles = _titles(art)
    with browser(tmp_path) as (page, log):
        page.goto(f"{url}/ui")
        page.wait_for_selector("body[data-ready=true]")
        assert page.locator("#recs").get_attribute("data-source") == "popular"
        assert [t.strip() for t in page.locator("#legend li").all_inner_texts()] == ["popularity"]
        assert "Popular with everyone" in page.locator("#recs .item .because").first.inner_text()
        clicked = []
        for n in (1, 2):  # click the top item twice: each click joins the history and the list is recomputed
            item_id, title = _page_items(page, "recs")[0]
            clicked.insert(0, (item_id, title))
            page.locator("#recs > li.item .click-btn").first.click()
            page.wait_for_function(f"document.querySelectorAll('#history li').length === {n}")
            page.wait_for_function(
                f"document.getElementById('recs').dataset.source === 'history' && "
                f"!document.querySelector('#recs > li.item[data-item-id=\"{item_id}\"]')")
        assert page.locator("#history li").all_inner_texts() == [t for _, t in clicked]
        shown = _page_items(page, "recs")
        assert len(shown) == 20 and all(t == titles[i] for i, t in shown)
        assert not {i for i, _ in clicked} & {i for i, _ in shown}
        assert page.locator("#recs .item .because").count() > 0  # explained by the clicked items
        _screenshot(page, "ui-anonymous.png")
    assert not log["errors"], log["errors"]
    assert all(r.startswith(url) for r in log["requests"]), log["requests"]


def test_api_docs_render_offline(server, tmp_path):
    url, _ = server
    with browser(tmp_path) as (page, log):
        page.goto(f"{url}/docs")
        page.wait_for_selector(".swagger-ui .information-container .title")
        assert "MRdIB recommender" in page.locator(".swagger-ui .information-container .title").inner_text()
        page.wait_for_selector("#operations-default-recommend_recommend_post")
        _screenshot(page, "docs.png")
    assert all(r.startswith(url) for r in log["requests"]), log["requests"]  # no CDN
    assert any("/docs/static/swagger-ui-bundle.js" in r for r in log["requests"])


def test_click_asks_for_the_events_token_when_the_service_requires_one(model, tmp_path):
    """With MRDIB_EVENTS_TOKEN set, POST /events answers 401 without it: the page asks once, then sends it."""
    root, art = model
    settings = Settings(artifacts=root, redis_url=None, wal_path=tmp_path / "events.jsonl", poll_interval_s=0,
                        cpu_threads=2, events_token="ui-events-secret")
    asked: list[str] = []
    with ServerThread(create_app(settings)) as srv, browser(tmp_path) as (page, log):
        page.on("dialog", lambda d: (asked.append(d.message), d.accept("ui-events-secret")))
        page.goto(f"{srv.url}/ui?user={art.user_ids[1]}")
        page.wait_for_selector("body[data-ready=true]")
        item_id, title = _page_items(page, "recs")[0]
        page.locator("#recs > li.item .click-btn").first.click()
        page.wait_for_function("document.getElementById('status').dataset.eventId !== undefined")
        assert len(asked) == 1 and "MRDIB_EVENTS_TOKEN" in asked[0]
        assert page.locator("#status").inner_text().startswith(f"Recorded a click on “{title}”")
        lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1 and item_id in lines[0]
        page.locator("#recs > li.item .click-btn").first.click()  # the token is kept: no second question
        wait_for(lambda: len((tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()) == 2,
                 what="the second event")
        assert len(asked) == 1
    # The 401 of the first try is the one error the browser logs.
    assert all("401" in e for e in log["errors"]), log["errors"]
