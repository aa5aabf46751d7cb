"""The portal in headless Chromium, served by gunicorn as in production."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PASSWORD
from tests.tools import require_tool

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def portal_url(app, environ, settings):
    """Start gunicorn on a free loopback port with the test database."""
    command = [str(Path(sys.executable).parent / "gunicorn"), "--bind",
               f"127.0.0.1:{settings.portal_port}", "--workers", "1", "wsgi:app"]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **environ},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{settings.portal_port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"gunicorn did not start:\n{server.stdout.read().decode()}")
            time.sleep(0.1)
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def page(tmp_path):
    chromium = require_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(10000)
        yield page
        context.close()
        browser.close()


def test_admin_creates_and_disables_identity(page, portal_url):
    page.goto(f"{portal_url}/login")
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    assert page.url == f"{portal_url}/settings/devices/dicom"

    page.click("text=Create DICOM Identity")
    page.fill("#name", "Room1 EPIQ7")
    page.fill("#ae_title", "ROOM1_EPIQ7_TOO_LONG")
    page.click("button:has-text('Create')")
    assert page.locator("#ae_title-error").inner_text().startswith("an AE title has at most 16 characters")
    assert page.input_value("#name") == "Room1 EPIQ7"

    page.fill("#ae_title", "Room1_EPIQ7")
    page.click("button:has-text('Create')")
    page.wait_for_selector("text=Connect this device")
    assert page.input_value("input[aria-label='Calling AE title']") == "Room1_EPIQ7"

    page.click("text=DICOM identities")
    row = page.locator("tr[data-ae-title='Room1_EPIQ7']")
    assert row.locator(".badge").inner_text() == "never connected"

    # A marker on the window survives an htmx swap but not a page load.
    page.evaluate("window.notReloaded = true")
    row.locator("button:has-text('Disable')").click()
    page.wait_for_selector("tr[data-ae-title='Room1_EPIQ7'] .badge.status-disabled")
    assert row.locator("button").inner_text().strip() == "Enable"
    assert page.evaluate("window.notReloaded") is True


def sign_in(page, portal_url, username, password=PASSWORD):
    page.goto(f"{portal_url}/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")


def test_admin_manages_users_and_roles(page, portal_url):
    console_errors = []
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    sign_in(page, portal_url, "admin")

    page.click("nav >> text=Users")
    page.click("text=Create user")
    page.fill("#username", "tech.lee")
    page.select_option("#role", "Clinician")
    page.fill("#password", "tech-lee-password")
    page.fill("#confirm", "tech-lee-password")
    page.click("button:has-text('Create')")
    page.wait_for_selector("h1:has-text('tech.lee')")

    page.select_option("#role", "Support")
    page.click("button:has-text('Save role')")
    assert page.locator(".flash-success").inner_text() == "Saved the changes to tech.lee."

    page.click("nav >> text=Roles")
    page.evaluate("window.notReloaded = true")
    page.click("button[aria-label='Grant integrations.manage to Support']")
    page.wait_for_selector("button[aria-label='Revoke integrations.manage from Support']")
    assert page.evaluate("window.notReloaded") is True

    page.click("button[aria-label='Revoke users.manage from Administrator']")
    page.wait_for_selector("tr[data-role='Administrator'] .error")
    assert "no enabled user would be left" in page.locator("tr[data-role='Administrator'] .error").inner_text()

    page.click("nav >> text=Audit trail")
    assert page.locator("#audit").get_by_text("role.permissions").count() == 1
    assert console_errors == []


def test_support_sees_usage_without_change_controls(page, portal_url, runner):
    runner.invoke(args=["identity", "create", "--name", "Echo Room 1", "--ae-title", "ECHO1"])
    sign_in(page, portal_url, "support")
    assert page.url == f"{portal_url}/usage"
    assert page.locator("nav").get_by_text("DICOM identities").count() == 0

    page.click("text=Echo Room 1")
    assert page.locator("h1").inner_text().startswith("Usage of Echo Room 1")
    assert page.locator("main button").count() == 0
    assert page.locator("main form").count() == 0


def test_clinician_gets_explanatory_page(page, portal_url):
    sign_in(page, portal_url, "clinician")
    assert page.locator("nav").get_by_text("DICOM identities").count() == 0
    assert page.locator("nav").get_by_text("Device usage").count() == 0

    response = page.goto(f"{portal_url}/settings/devices/dicom")
    assert response.status == 403
    text = page.locator("main").inner_text()
    assert "needs the integrations.manage permission" in text
    assert "can grant it: admin" in text
