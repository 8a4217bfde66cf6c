"""The dashboard and /docs in a real browser (Debian's headless chromium) against running processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from playwright.async_api import BrowserContext, ConsoleMessage, Page, Route, async_playwright

from tests.harness.pipeline import COUNTERS, settled, start_pipeline, stats
from tests.harness.processes import Deployment, Processes, api_get
from tests.harness.waiting import eventually

CHROMIUM = "/usr/bin/chromium"
TOPICS = ("dash.orders", "dash.auth", "dash.billing")
ENVELOPE = 20


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no {CHROMIUM} for the browser tests (make test installs it, as root)")
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as playwright:
        # Debian's chromium, never a browser build of Playwright's own; a fresh profile per test.
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            await context.close()


class Console:
    """Every console error and uncaught exception of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} at {message.location}")


def event(n: int, topic: str, **payload: Any) -> dict[str, Any]:
    return {
        "topic": topic,
        "event_id": f"dash-{n}",
        "timestamp": "2026-05-01T08:00:00Z",
        "source": "dashboard-test",
        "payload": payload or {"n": n},
    }


async def steady_load(amqp: AbstractRobustConnection, deployment: Deployment, stop: asyncio.Event) -> int:
    """Envelopes of 20 events, one topic each, about 20 a second; every fourth one is re-sent (duplicates),
    one event comes back with another payload (a conflict). Returns the number of events published."""
    channel = await amqp.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(deployment.exchange)
    published = 0
    envelope = 0
    try:
        while not stop.is_set():
            topic = TOPICS[envelope % len(TOPICS)]
            events = [event(n, topic) for n in range(envelope * ENVELOPE, (envelope + 1) * ENVELOPE)]
            bodies = [events, events] if envelope % 4 == 3 else [events]
            if envelope == 5:
                bodies.append([event(envelope * ENVELOPE, topic, changed=True)])
            for body in bodies:
                await exchange.publish(
                    aio_pika.Message(json.dumps(body).encode(), delivery_mode=2), routing_key=topic
                )
                published += len(body)
            envelope += 1
            # The load's pace, not a wait for a condition.
            with_timeout = asyncio.wait_for(stop.wait(), 0.05)
            try:
                await with_timeout
            except TimeoutError:
                pass
        await exchange.publish(aio_pika.Message(b"{not json", delivery_mode=2), routing_key=TOPICS[0])
        return published + 1
    finally:
        await channel.close()


def figure(text: str) -> int | None:
    digits = text.replace(",", "").strip()
    return int(digits) if digits.isdigit() else None


# One render of the page, read in one go: the totals, the topic table, the chart and the stats it showed.
READ_PAGE = """() => {
  const byId = id => document.getElementById(id).textContent;
  const rows = [...document.querySelectorAll('#topics tbody tr')]
    .map(r => [...r.cells].map(c => c.textContent));
  return {
    uptime: document.body.dataset.statsUptime || null,
    renders: Number(document.body.dataset.renders),
    totals: Object.fromEntries(COUNTERS.map(name => [name, byId(name)])),
    queue: byId('queue-messages'), consumers: byId('queue-consumers'), dead: byId('dead-letters'),
    consumer: byId('consumer-status'), durability: byId('durability'), store: byId('store'),
    deadKept: byId('dead-letters-kept'), deadByReason: byId('dead-letters-by-reason'),
    rate: byId('rate-received'), points: document.getElementById('line-received').getAttribute('points'),
    topics: rows,
  };
}""".replace("COUNTERS", json.dumps(list(COUNTERS)))


def shown_totals(shown: dict[str, Any]) -> dict[str, int | None]:
    return {name: figure(value) for name, value in shown["totals"].items()}


def shown_topics(shown: dict[str, Any]) -> dict[str, tuple[int | None, ...]]:
    return {row[0]: tuple(figure(cell) for cell in row[1:]) for row in shown["topics"]}


def stats_topics(answer: dict[str, Any]) -> dict[str, tuple[int | None, ...]]:
    return {
        topic: (count, answer["topic_duplicates"][topic], answer["topic_conflicts"][topic])
        for topic, count in answer["topic_counts"].items()
    }


async def test_dashboard_shows_what_stats_says_and_its_chart_moves_under_load(
    procs: Processes, amqp: AbstractRobustConnection, browser: BrowserContext, tmp_path: Path
) -> None:
    deployment = procs.deployment
    await start_pipeline(procs, amqp)
    stop = asyncio.Event()
    load = asyncio.create_task(steady_load(amqp, deployment, stop))
    page = await browser.new_page()
    console = Console(page)
    answers: dict[str, dict[str, Any]] = {}

    async def record_stats(route: Route) -> None:
        # Each /stats answer the page receives, keyed by the api's uptime it carries, to compare with.
        response = await route.fetch()
        body = await response.json()
        answers[str(body["uptime_seconds"])] = body
        await route.fulfill(response=response)

    await page.route("**/stats", record_stats)
    try:
        await page.goto(f"{deployment.api_url}/dashboard")

        async def read() -> dict[str, Any]:
            value: dict[str, Any] = await page.evaluate(READ_PAGE)
            return value

        async def moving() -> dict[str, Any] | None:
            shown = await read()
            return shown if (figure(shown["rate"]) or 0) > 0 and shown["points"].count(",") >= 2 else None

        before = await eventually(moving, 60, 0.2, message="the chart shows events flowing")
        after = await eventually(
            lambda: read_if_later(page, before["renders"] + 2), 30, 0.2, message="two more renders"
        )
        assert after["points"] != before["points"]
        assert (figure(after["rate"]) or 0) > 0
        # Under load, each render shows exactly the /stats answer it was drawn from.
        for shown in (before, after):
            answer = answers[shown["uptime"]]
            assert shown_totals(shown) == {name: answer[name] for name in COUNTERS}
            assert shown_topics(shown) == stats_topics(answer)
    finally:
        stop.set()
        published = await load
    # Frozen: the load stopped and the queue drained; the page and a /stats of our own agree exactly.
    final = await settled(deployment, amqp, published)
    assert final["invalid"] == 1 and final["conflicts"] == 1 and final["duplicate_dropped"] > 0
    await eventually(lambda: stats(deployment)["dead_letter_queue"]["messages"] == 1, 30, message="depth")
    now = stats(deployment)

    async def caught_up() -> dict[str, Any] | None:
        shown = await read_if_later(page, 0)
        return shown if shown and shown_totals(shown) == final and figure(shown["dead"]) == 1 else None

    shown = await eventually(caught_up, 30, 0.2, message="the page caught up with the frozen store")
    assert shown_totals(shown) == {name: now[name] for name in COUNTERS}
    assert shown_topics(shown) == stats_topics(now) and set(now["topic_counts"]) == set(TOPICS)
    assert sum(now["topic_duplicates"].values()) == now["duplicate_dropped"]
    assert sum(now["topic_conflicts"].values()) == now["conflicts"] == 1
    assert figure(shown["queue"]) == now["queue"]["messages"] == 0
    assert figure(shown["consumers"]) == now["queue"]["consumers"] == 1
    assert shown["consumer"] == now["consumer"]["status"]
    assert shown["durability"] == "sqlite, durable (journal_mode=wal, synchronous=FULL)"
    assert now["dead_letters"] == {"by_reason": {"not_json": 1}, "kept": 1, "dropped": 0}
    assert (shown["deadKept"], shown["deadByReason"]) == ("1", "not_json 1")
    assert shown["store"] == "ok"
    screenshot = tmp_path / "dashboard.png"
    await page.screenshot(path=str(screenshot), full_page=True)
    print(f"dashboard screenshot: {screenshot}")
    assert console.errors == []


async def read_if_later(page: Page, renders: int) -> dict[str, Any] | None:
    shown: dict[str, Any] = await page.evaluate(READ_PAGE)
    return shown if shown["renders"] > renders else None


async def test_docs_work_offline_from_packaged_assets(procs: Processes, browser: BrowserContext) -> None:
    deployment = procs.deployment
    procs.api()
    await eventually(lambda: api_get(deployment, "/health").status_code == 200, 30, message="api up")
    pages = {"/docs": ("swagger-ui-bundle.js", "swagger-ui.css"), "/redoc": ("redoc.standalone.js",)}
    with httpx.Client(base_url=deployment.api_url, timeout=10) as client:
        for path, assets in pages.items():
            html = client.get(path).text
            assert re.findall(r'(?:src|href)="(https?:[^"]*)"', html) == [], path
            for asset in assets:
                assert f'"/docs-assets/{asset}"' in html
                assert client.get(f"/docs-assets/{asset}").status_code == 200
    page = await browser.new_page()
    console = Console(page)
    elsewhere: list[str] = []

    async def local_only(route: Route) -> None:
        # As on a machine without internet access: anything not served by the api fails.
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    await page.route("**/*", local_only)
    await page.goto(f"{deployment.api_url}/docs")
    title = page.locator(".swagger-ui .info .title")
    await title.wait_for(timeout=30_000)
    assert "Event aggregator" in await title.inner_text()
    await page.locator(".opblock-summary-path", has_text="/dashboard").first.wait_for(timeout=30_000)
    assert elsewhere == []
    assert console.errors == []


async def publish_events(
    amqp: AbstractRobustConnection, deployment: Deployment, events: list[dict[str, Any]]
) -> None:
    channel = await amqp.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(deployment.exchange)
        for item in events:
            body = json.dumps(item).encode()
            await exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key=item["topic"])
    finally:
        await channel.close()


READ_TAIL = """() => ({
  state: document.body.dataset.tail || null,
  count: Number(document.body.dataset.tailCount || 0),
  rows: [...document.querySelectorAll('#tail tbody tr')].map(r => [...r.cells].map(c => c.textContent)),
})"""


async def test_dashboard_live_tail_shows_each_new_event_once_across_an_api_restart_and_filters_by_topic(
    procs: Processes, amqp: AbstractRobustConnection, browser: BrowserContext
) -> None:
    deployment = procs.deployment
    _, api = await start_pipeline(procs, amqp)
    page = await browser.new_page()
    console = Console(page)
    await page.goto(f"{deployment.api_url}/dashboard")

    async def tail_shown(count: int, state: str = "live") -> dict[str, Any] | None:
        shown: dict[str, Any] = await page.evaluate(READ_TAIL)
        return shown if shown["count"] >= count and shown["state"] == state else None

    await eventually(lambda: tail_shown(0), 30, 0.1, message="the tail is live")
    await publish_events(amqp, deployment, [event(n, TOPICS[n % 2]) for n in range(60)])
    shown = await eventually(lambda: tail_shown(60), 30, 0.1, message="60 events in the tail")
    assert shown["count"] == 60
    assert [row[3] for row in shown["rows"]] == [f"dash-{n}" for n in range(59, 9, -1)]  # the newest 50
    # The api goes away and comes back; what was stored meanwhile arrives once, in order.
    assert api.terminate() == 0
    await publish_events(amqp, deployment, [event(n, TOPICS[n % 2]) for n in range(60, 90)])
    procs.api()
    await eventually(lambda: api_get(deployment, "/health").status_code == 200, 30, message="api back")
    shown = await eventually(lambda: tail_shown(90), 30, 0.1, message="the tail resumed")
    assert shown["count"] == 90
    assert [row[3] for row in shown["rows"]] == [f"dash-{n}" for n in range(89, 39, -1)]
    positions = [int(row[0]) for row in shown["rows"]]
    assert positions == sorted(positions, reverse=True) and len(set(positions)) == 50
    # A topic typed in: a new tail of that topic only.
    await page.fill("#tail-topic", TOPICS[2])
    await page.dispatch_event("#tail-topic", "change")
    await eventually(lambda: tail_shown(0), 30, 0.1, message="the filtered tail is live")
    await publish_events(amqp, deployment, [event(n, TOPICS[n % 3]) for n in range(90, 120)])
    shown = await eventually(lambda: tail_shown(100), 30, 0.1, message="the filtered tail shows them")
    assert [row[3] for row in shown["rows"]] == [f"dash-{n}" for n in range(119, 89, -1) if n % 3 == 2]
    assert {row[2] for row in shown["rows"]} == {TOPICS[2]}
    # While the api was down the page's reconnects failed, which the browser logs; nothing else.
    refused = "net::ERR_CONNECTION_REFUSED"
    assert [error for error in console.errors if refused not in error] == []
