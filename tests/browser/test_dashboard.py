"""The web dashboard in a real browser: Debian's Chromium driven by Playwright, against a
real server (gRPC on port 0, the dashboard on ``--http-port 0``, a tokens file).

Clicks through what an operator does: sign in (a wrong token refused), see a job enqueued
over gRPC, see it fail, open it (payload as pretty JSON, headers, last error), retry it
from the page and see it complete; bulk retry of selected dead jobs; a read-only token
sees pages but its retry is refused; a POST without the page's CSRF token is refused and
changes nothing. A screenshot of each page goes to docs/screenshots/ (linked from the README).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.serverthread import ServerThread
from support.tokens import tokens_toml
from support.wait import until

from edgeq import Client, Fail, JobState, Worker

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ADMIN, READER = "admin-token-for-the-dashboard", "reader-token-for-the-dashboard"
#: What the machine needs for Chromium headless with no network (see the env notes).
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]

pytestmark = pytest.mark.slow


def _require_browser() -> None:
    missing = [] if os.access(CHROMIUM, os.X_OK) else [CHROMIUM]
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip)")
    if missing:
        message = f"browser tests need {', '.join(missing)} (bash scripts/test-tools installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail("CI: " + message)
        pytest.skip(message)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml(
        ("ops", ADMIN, ["enqueue", "consume", "read", "admin"], None),
        ("viewer", READER, ["read"], None),
    ))
    srv = ServerThread(str(tmp_path / "edgeq.db"), tokens_file=str(tokens), http_port=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def url(server: ServerThread, path: str) -> str:
    assert server.server is not None and server.server.dashboard is not None
    return f"http://127.0.0.1:{server.server.dashboard.port}{path}"


def sign_in(page: Any, server: ServerThread, token: str, path: str = "/queues") -> None:
    page.goto(url(server, path))
    assert "/login" in page.url
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(url(server, path))


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_enqueue_see_fail_retry_from_the_page_and_complete(server: ServerThread, browser: Any) -> None:
    attempts: dict[str, int] = {}
    done = threading.Event()

    def handle(job: Any) -> bytes:
        attempts[job.id] = attempts.get(job.id, 0) + 1
        if attempts[job.id] == 1:
            job.report_progress(30, "template rendered")
            with Client(server.target, token=ADMIN) as probe:  # it goes out with a heartbeat tick
                until(lambda: probe.get(job.id).progress == 30, what="the progress stored")
            raise Fail("smtp: 550 mailbox unavailable")
        done.set()
        return b'{"sent": true}'

    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    # Auth required: a wrong token is refused, the right one lands on the page asked for.
    page.goto(url(server, "/queues"))
    assert "/login" in page.url
    page.fill("input[name=token]", "not-a-token")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text() == "That token was not accepted."
    shot(page, "login")
    sign_in(page, server, ADMIN)

    with Client(server.target, token=ADMIN) as client:
        job_id = client.enqueue(
            "emails", b'{"to": "ada@example.com", "template": "welcome"}', idempotency_key="welcome-ada",
            headers={"tenant": "acme"},
        ).job_id
        page.goto(url(server, "/queues"))
        row = page.locator("#queues tr[data-queue=emails]")
        assert row.locator("td").nth(1).inner_text() == "1"  # ready
        with Worker(server.target, ["emails"], handle, concurrency=1, token=ADMIN, lease_duration=2):
            until(lambda: client.get(job_id).state == JobState.FAILED, what="the job failed")
            page.goto(url(server, "/queues"))
            page.goto(url(server, "/queues"))  # a second sample: the rates show
            shot(page, "queues")
            assert page.locator("#queues tr[data-queue=emails] td").nth(5).inner_text() == "1"  # failed

            # The dead-jobs page lists it; the job page shows it in full.
            page.goto(url(server, "/dead"))
            assert page.locator(f"#jobs tr[data-job='{job_id}']").count() == 1
            shot(page, "dead")
            page.click(f"#jobs tr[data-job='{job_id}'] a")
            page.wait_for_url(url(server, f"/jobs/{job_id}"))
            assert page.locator("#state").inner_text() == "failed"
            assert page.locator("#last-error").inner_text() == "smtp: 550 mailbox unavailable"
            assert '"to": "ada@example.com"' in page.locator("#payload").inner_text()  # pretty JSON
            assert page.locator("#headers").inner_text().split() == ["tenant", "acme"]
            assert page.locator("#progress").inner_text() == "30 · template rendered"
            shot(page, "job")

            # Retry from the page: the worker runs it again and it completes.
            page.click("#retry")
            assert "retry" in page.locator(".notice").inner_text()
            assert done.wait(20)
            until(lambda: client.get(job_id).state == JobState.COMPLETED, what="completed after the retry")
        page.reload()
        assert page.locator("#state").inner_text() == "completed"
        assert '"sent": true' in page.locator("#result").inner_text()

        # The jobs page finds it by the start of its key.
        page.goto(url(server, "/jobs?q=welcome-"))
        assert [r.get_attribute("data-job") for r in page.locator("#jobs tbody tr").all()] == [job_id]
        shot(page, "jobs")
        page.goto(url(server, "/cluster"))
        assert "standalone" in page.locator("main").inner_text()
        shot(page, "cluster")


def test_bulk_retry_of_selected_dead_jobs_and_what_a_reader_and_a_forged_post_can_do(
    server: ServerThread, browser: Any
) -> None:
    with Client(server.target, token=ADMIN) as client:
        ids = [client.enqueue("bulk", b"%d" % i, max_attempts=1).job_id for i in range(3)]

        def handle(job: Any) -> None:
            raise Fail("no")

        with Worker(server.target, ["bulk"], handle, concurrency=2, token=ADMIN):
            until(lambda: all(client.get(i).state == JobState.FAILED for i in ids), what="3 failed")

        # A reader sees the dead jobs, but its retry is refused (admin scope) and nothing changes.
        reader = browser.new_context().new_page()
        sign_in(reader, server, READER, "/dead?queue=bulk")
        assert reader.locator("#jobs tbody tr").count() == 3
        reader.locator("input[data-all]").check()
        reader.click("button[value=retry]")
        assert "PERMISSION_DENIED" in reader.locator(".error").inner_text()
        assert all(client.get(i).state == JobState.FAILED for i in ids)

        # A POST without the page's CSRF token (same cookie) is refused before anything runs.
        forged = reader.request.post(url(server, f"/jobs/{ids[0]}/retry"), form={"back": "/dead"})
        assert forged.status == 403
        admin = browser.new_context().new_page()
        sign_in(admin, server, ADMIN, "/dead?queue=bulk")
        forged = admin.request.post(url(server, f"/jobs/{ids[0]}/retry"), form={"csrf": "guess"})
        assert forged.status == 403
        assert client.get(ids[0]).state == JobState.FAILED

        # The admin selects two of the three and retries them in one go.
        admin.locator(f"#jobs input[value='{ids[0]}']").check()
        admin.locator(f"#jobs input[value='{ids[2]}']").check()
        admin.click("button[value=retry]")
        assert admin.locator(".notice").inner_text() == "retry: 2 job(s) done"
        states = [client.get(i).state for i in ids]
        assert states == [JobState.PENDING, JobState.FAILED, JobState.PENDING]
        assert [r.get_attribute("data-job") for r in admin.locator("#jobs tbody tr").all()] == [ids[1]]

        # Signing out ends the session: the next page asks for a token again.
        admin.click("header button")
        admin.goto(url(server, "/queues"))
        assert "/login" in admin.url


def test_pages_without_auth_still_need_the_csrf_token(tmp_path: Path, browser: Any) -> None:
    srv = ServerThread(str(tmp_path / "edgeq.db"), http_port=0)
    srv.start()
    try:
        with Client(srv.target) as client:
            client.enqueue("open", b"x")
            page = browser.new_page()
            page.goto(url(srv, "/queues"))
            assert page.locator("#queues tr[data-queue=open]").count() == 1
            assert page.locator("header form").count() == 0  # no sign-out without auth
            assert page.request.post(url(srv, "/queues/open/pause")).status == 403
            page.click("#queues tr[data-queue=open] button")
            assert page.locator(".notice").inner_text() == "queue open paused"
            assert client.stats("open")[0].paused
            client.set_rate_limit("open", 5, per=1)
            page.reload()
            assert page.locator("#queues tr[data-queue=open] td.rate").inner_text().startswith("5 / 1.0s")
            # Schedules: listed with their next tick; paused and deleted from the page.
            client.upsert_schedule("nightly", "open", "0 3 * * *", b"{}", time_zone="Europe/Paris")
            page.goto(url(srv, "/schedules"))
            row = page.locator("#schedules tr[data-schedule=nightly]")
            assert "0 3 * * *" in row.inner_text() and row.locator("td.next").inner_text().endswith("UTC")
            shot(page, "schedules")
            row.locator("button", has_text="Pause").click()
            assert page.locator(".notice").inner_text() == "schedule nightly: paused"
            assert client.schedules()[0].paused
            page.locator("#schedules tr[data-schedule=nightly] button.delete").click()
            assert client.schedules() == []
    finally:
        srv.close()


def test_fair_groups_and_their_weights_on_the_groups_page(server: ServerThread, browser: Any) -> None:
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    sign_in(page, server, ADMIN)
    with Client(server.target, token=ADMIN) as client:
        for tenant, n in (("acme", 5), ("globex", 2)):
            for _ in range(n):
                client.enqueue("reports", b"{}", group=tenant)
        client.set_rate_limit("reports", 3, per=1, key_header="customer")
        page.goto(url(server, "/queues"))
        row = page.locator("#queues tr[data-queue=reports]")
        assert "3 / 1.0s per customer" in row.locator("td.rate").inner_text()
        row.locator("a", has_text="2").click()  # two groups with pending jobs
        page.wait_for_url(url(server, "/groups?queue=reports"))
        acme = page.locator("#groups tr[data-group=acme]")
        assert acme.locator("td").nth(2).inner_text() == "5"  # ready
        acme.locator("input[name=weight]").fill("4")
        acme.locator("button").click()
        assert page.locator(".notice").inner_text() == "group acme of reports: weight 4"
        assert {g.group: g.weight for g in client.list_groups("reports")}["acme"] == 4
        shot(page, "groups")
        globex = page.locator("#groups tr[data-group=globex] input[name=weight]")
        globex.fill("1001")  # the browser holds it back (1..1000), and the API would refuse it
        assert globex.evaluate("e => e.validity.valid") is False
        assert {g.group: g.weight for g in client.list_groups("reports")}["globex"] == 1


def test_screenshots_dir_is_what_the_readme_links() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in ("queues", "jobs", "job", "dead", "cluster", "groups", "schedules", "login"):
        assert f"docs/screenshots/{name}.png" in readme


