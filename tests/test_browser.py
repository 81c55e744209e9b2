"""The whole funding path in a real browser: Debian's Chromium, headless, driven by Playwright.

An owner registers, writes and submits a project, and a coordinator publishes it. A donor
finds it with the filters and pledges. The coordinator confirms the pledge, so the progress
bar moves and the dashboard shows the new totals. The server is the app on 127.0.0.1 with
CSRF on, as in production. Each page is saved as a PNG under test-artifacts/browser/, at
desktop and phone width, so that a person can look at them.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

from live_server import live_server

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
PASSWORD = "correct horse battery"
OWNER_PASSWORD = "Nairobi fibre rings 2027"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="browser tests need Chromium: apt-get install -y chromium (.ci/run does), or set CHROMIUM_PATH",
)


@pytest.fixture
def server(app, db):
    """Serve the test app itself with CSRF on: an in-memory SQLite database lives in this app's engine only."""
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        with live_server(app) as running:
            yield running
    finally:
        app.config["WTF_CSRF_ENABLED"] = False


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


class Screens:
    """Save the current page at desktop width, then at phone width, under a running number."""

    def __init__(self, browser):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.browser = browser
        self.count = 0

    def save(self, page, name: str) -> None:
        self.count += 1
        stem = ARTIFACTS / f"{self.count:02d}-{name}"
        page.screenshot(path=f"{stem}-desktop.png", full_page=True)
        phone = self.browser.new_page(viewport={"width": 390, "height": 844})
        phone.context.add_cookies(page.context.cookies())
        phone.goto(page.url)
        phone.screenshot(path=f"{stem}-phone.png", full_page=True)
        phone.close()


def log_in(page, base: str, email: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    assert "/login" not in page.url, page.content()[:2000]


def log_out(page) -> None:
    page.get_by_role("button", name="Log out").click()
    page.wait_for_load_state()


def test_owner_to_confirmed_pledge(server, browser, db, make_user):
    base = server.url
    make_user("coordinator", organisation=None, email="coordinator@example.org")
    make_user("donor", organisation="Digital Access Foundation", email="donor@example.org")
    # End this thread's transaction: with in-memory SQLite the server shares its one connection.
    db.session.close()
    screens = Screens(browser)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    # The owner registers.
    page.goto(f"{base}/register")
    screens.save(page, "register")
    page.get_by_label("Email").fill("owner@ict.go.ke")
    page.get_by_label("Your name").fill("Wanjiru Kamau")
    page.get_by_label("Password", exact=True).fill(OWNER_PASSWORD)
    page.get_by_label("Repeat the password").fill(OWNER_PASSWORD)
    page.get_by_label(re.compile("^Project owner")).check()
    page.get_by_label("Organisation").fill("Ministry of ICT, Kenya")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_load_state()
    assert page.get_by_role("button", name="Log out").count() == 1

    # The owner writes the project and submits it.
    page.goto(f"{base}/projects/new")
    page.get_by_label("Title", exact=True).fill("Fibre rings for Nairobi schools")
    page.get_by_label("Summary").fill("Connect 120 public schools to a metropolitan fibre ring.")
    page.get_by_label("Description").fill("**Phase one** covers 40 schools.\n\n- fibre\n- training")
    page.get_by_label("Recipient countries").select_option("KE")
    page.get_by_role("checkbox", name=re.compile("^Broadband")).first.check()
    page.get_by_label("Need title").first.fill("Fibre and equipment")
    page.get_by_label("Goal").first.fill("200000.00")
    page.get_by_label("Currency").first.select_option("EUR")
    screens.save(page, "project-form")
    page.get_by_role("button", name="Save draft").click()
    page.wait_for_load_state()
    page.get_by_role("button", name="Submit for review").click()
    page.wait_for_load_state()
    project_url = page.url
    screens.save(page, "project-submitted")
    log_out(page)

    # The coordinator publishes it from the review queues.
    log_in(page, base, "coordinator@example.org", PASSWORD)
    page.goto(f"{base}/review")
    screens.save(page, "review-queues")
    page.get_by_role("button", name=re.compile("^Publish Fibre rings for Nairobi schools")).click()
    page.wait_for_load_state()
    log_out(page)

    # The donor finds it with the filters and pledges.
    log_in(page, base, "donor@example.org", PASSWORD)
    page.goto(f"{base}/projects")
    page.get_by_label("Country", exact=True).select_option("KE")
    page.get_by_label("Theme", exact=True).select_option("broadband")
    page.get_by_role("button", name=re.compile("^(Filter|Apply|Search)")).first.click()
    page.wait_for_load_state()
    screens.save(page, "browse-filtered")
    page.get_by_role("link", name="Fibre rings for Nairobi schools").click()
    page.wait_for_load_state()
    assert page.get_by_role("progressbar").first.get_attribute("aria-valuenow") == "0"
    page.get_by_role("link", name=re.compile("^Pledge")).first.click()
    page.wait_for_load_state()
    page.get_by_label("Amount").fill("50000.00")
    screens.save(page, "pledge-form")
    page.get_by_role("button", name="Pledge", exact=True).click()
    page.wait_for_load_state()
    screens.save(page, "pledge-made")
    log_out(page)

    # The coordinator confirms; the progress bar moves and the dashboard counts it.
    log_in(page, base, "coordinator@example.org", PASSWORD)
    page.goto(f"{base}/review?tab=pledges")
    screens.save(page, "review-pledges")
    page.locator('input[form="bulk-pledges"]').first.check()
    page.get_by_role("button", name="Confirm selected").click()
    page.wait_for_load_state()
    page.goto(project_url)
    screens.save(page, "project-funded-share")
    assert page.get_by_role("progressbar").first.get_attribute("aria-valuenow") == "25"
    assert "25%" in page.locator(".progress-text").first.inner_text()

    page.goto(f"{base}/dashboard")
    screens.save(page, "dashboard")
    text = page.locator("main").inner_text()
    assert "50,000" in text
    assert "200,000" in text
    context.close()
