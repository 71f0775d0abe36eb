"""The admin page in real Chromium (tests/browser.py says which) driven by Playwright: a rebuild
started from the page shows its progress advancing and its badge turning to succeeded."""

from __future__ import annotations

import re

import pytest
import requests

from tests.support import create_collection, wait_for, wait_job

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_admin_page_follows_a_rebuild_started_from_its_button(settings, procs, browser_page, artifacts_dir):
    slow = settings.with_(build_step=10, build_step_delay=0.08, progress_every=10)
    base = procs.api(slow)
    procs.worker(slow)
    create_collection(base, "keps")
    docs = [{"id": f"kep-{i}.md", "text": f"# KEP {i}\nEnhancement {i} changes component{i % 11}."} for i in range(400)]
    job = requests.post(f"{base}/v1/collections/keps/documents", json={"documents": docs, "rebuild": False}).json()
    assert wait_job(base, job["id"])["state"] == "succeeded"

    page = browser_page
    page.goto(f"{base}/admin")
    badge = page.get_by_test_id("badge-keps")
    progress = page.get_by_test_id("progress-keps")
    assert badge.inner_text() == "idle"
    page.wait_for_function("document.getElementById('status').textContent.includes('connected')", timeout=15000)

    button = page.locator('button[data-action="rebuild"][data-collection="keps"]')
    button.click()
    page.wait_for_function(
        "document.querySelector('[data-testid=badge-keps]').textContent === 'rebuilding'", timeout=15000)
    assert page.locator('button[data-action="rebuild"][data-collection="keps"]').is_disabled()

    # Progress advances: read "N of 400 chunks" a few times and see N grow.
    seen = []

    def progress_grew():
        match = re.search(r"build: (\d+) of 400 chunks", progress.inner_text())
        if match:
            done = int(match.group(1))
            if not seen or done != seen[-1]:
                seen.append(done)
        return len(seen) >= 3

    wait_for(progress_grew, timeout=30, interval=0.05, message="build progress to advance on the page")
    assert seen == sorted(seen) and seen[-1] > seen[0]
    assert "ETA" in progress.inner_text() or seen[-1] >= 390
    page.screenshot(path=str(artifacts_dir / "admin-rebuilding.png"), full_page=True)

    page.wait_for_function(
        "document.querySelector('[data-testid=badge-keps]').textContent === 'succeeded'", timeout=30000)
    page.wait_for_selector("tr.current", timeout=15000)
    assert "v1 (current)" in page.locator("table.versions").inner_text()
    assert not page.locator('button[data-action="rebuild"][data-collection="keps"]').is_disabled()
    page.screenshot(path=str(artifacts_dir / "admin-succeeded.png"), full_page=True)
    status = requests.get(f"{base}/v1/collections/keps").json()
    assert status["index"]["vectors"] == 400
