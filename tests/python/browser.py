"""Open a page in headless Chromium (Debian's `chromium`) and report what a
person would see and what the console said.

Playwright drives the system browser: no browser is ever downloaded
(`executable_path`, default /usr/bin/chromium or $VERGER_CHROMIUM).

Command line (prints one JSON document on stdout):

    browser.py URL [--screenshot FILE] [--width 1280] [--height 900]
               [--full-page] [--wait-ms 0]

    {"url": ..., "title": ..., "status": 200 | null,
     "console_errors": [...], "page_errors": [...], "failed_requests": [...],
     "images": [{"src": ..., "complete": true, "natural_width": 760}, ...],
     "screenshot": FILE | null}

`console_errors` holds console messages of type "error" (a missing image
shows up there too, as a failed resource load), `page_errors` uncaught
exceptions, `failed_requests` requests that did not complete.

As a library, for tests that need to do more on a page (upload a file,
read a result):

    from browser import open_page
    with open_page("http://127.0.0.1:8080/") as (page, problems):
        page.set_input_files("input[type=file]", "apple.jpg")
        page.wait_for_selector("#label")
        print(page.inner_text("#label"), problems.as_dict())
"""

import argparse
import contextlib
import json
import os
import sys

from playwright.sync_api import sync_playwright

DEFAULT_CHROMIUM = "/usr/bin/chromium"


def chromium_path():
    path = os.environ.get("VERGER_CHROMIUM", DEFAULT_CHROMIUM)
    if not os.path.exists(path):
        sys.exit(
            f"browser.py: no Chromium at {path}; install Debian's package "
            "(apt-get install chromium) or set VERGER_CHROMIUM"
        )
    return path


class Problems:
    """Everything that went wrong on a page, collected while it is open."""

    def __init__(self, page):
        self.console_errors = []
        self.page_errors = []
        self.failed_requests = []
        self.status = None
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on(
            "requestfailed",
            lambda r: self.failed_requests.append(f"{r.url}: {r.failure}"),
        )

    def _console(self, message):
        if message.type == "error":
            location = message.location or {}
            where = location.get("url", "")
            self.console_errors.append(f"{message.text} ({where})".strip())

    def as_dict(self):
        return {
            "console_errors": self.console_errors,
            "page_errors": self.page_errors,
            "failed_requests": self.failed_requests,
        }


@contextlib.contextmanager
def open_page(url, width=1280, height=900, wait_ms=0):
    """Yields (page, problems) with `url` loaded (network idle)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            # Root in a container: no user namespaces for the sandbox; no GPU.
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            problems = Problems(page)
            response = page.goto(url, wait_until="networkidle", timeout=60_000)
            problems.status = response.status if response is not None else None
            if wait_ms:
                page.wait_for_timeout(wait_ms)
            yield page, problems
        finally:
            browser.close()


def images(page):
    """The page's <img> elements and whether each one decoded."""
    return page.eval_on_selector_all(
        "img",
        "els => els.map(e => ({src: e.getAttribute('src'), complete: e.complete,"
        " natural_width: e.naturalWidth, natural_height: e.naturalHeight}))",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--screenshot")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--full-page", action="store_true")
    parser.add_argument("--wait-ms", type=int, default=0)
    args = parser.parse_args()
    with open_page(args.url, args.width, args.height, args.wait_ms) as (page, problems):
        result = {
            "url": page.url,
            "title": page.title(),
            "status": problems.status,
            "images": images(page),
            "screenshot": None,
        }
        if args.screenshot:
            page.screenshot(path=args.screenshot, full_page=args.full_page)
            result["screenshot"] = args.screenshot
        result.update(problems.as_dict())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
