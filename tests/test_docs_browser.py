"""/docs works offline: the page is opened in real Chromium with every request that leaves this machine
aborted (as on a laptop offline or behind a proxy that blocks CDNs), and it still lists the operations."""

from __future__ import annotations

import pytest
import requests

from tests.browser import block_network

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_docs_ui_lists_the_operations_with_the_network_blocked(settings, procs, browser_page, artifacts_dir):
    base = procs.api(settings)
    page = browser_page
    asked, blocked = block_network(page)
    page.goto(f"{base}/docs")
    page.wait_for_selector(".opblock", timeout=30000)
    operations = page.locator(".opblock-summary-path").all_inner_texts()
    paths = {text.replace("\u200b", "").strip() for text in operations}
    spec = requests.get(f"{base}/openapi.json", timeout=10).json()
    assert paths == set(spec["paths"]), paths ^ set(spec["paths"])
    assert "/v1/collections/{name}/search" in paths
    page.screenshot(path=str(artifacts_dir / "docs-offline.png"), full_page=False)
    assert any("/docs/assets/swagger-ui-bundle.js" in url for url in asked)
    assert not blocked, f"/docs asked the network for {blocked}"


def test_the_routing_would_catch_a_cdn(browser_page):
    # Proves the check above can fail: a page that loads a script from a CDN is caught and blocked.
    page = browser_page
    _, blocked = block_network(page)
    page.set_content('<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist/swagger-ui-bundle.js"></script>')
    assert blocked == ["https://cdn.jsdelivr.net/npm/swagger-ui-dist/swagger-ui-bundle.js"]
