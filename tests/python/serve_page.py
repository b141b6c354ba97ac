"""Drive the web page of `verger serve` in headless Chromium like a person
on a phone: open it, choose a photo, wait for the answer and read what the
page shows. Uses tests/python/browser.py (the system Chromium, never a
downloaded one).

    serve_page.py --url http://127.0.0.1:8080 --image banana.jpg
                  [--screenshot serve.png] [--width 390] [--height 844]

Prints one JSON document on stdout:

    {"label": "Banana", "confidence": "confidence 99.8 %",
     "top5": ["Banana 99.8 %", ...], "info": "Banana\\nBotanical name ...",
     "status": "", "console_errors": [...], "page_errors": [...],
     "failed_requests": [...], "screenshot": FILE | null}
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from browser import open_page  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--screenshot")
    # An iPhone 12-15 sized viewport: the page must work on a phone.
    parser.add_argument("--width", type=int, default=390)
    parser.add_argument("--height", type=int, default=844)
    args = parser.parse_args()

    with open_page(args.url.rstrip("/") + "/", args.width, args.height) as (page, problems):
        page.set_input_files("input[type=file]", args.image)
        # The answer, or an error message, appears.
        page.wait_for_function(
            "() => document.getElementById('result').style.display === 'block'"
            " || document.getElementById('status').classList.contains('error')",
            timeout=60_000,
        )
        page.wait_for_timeout(200)  # let the preview image paint
        result = {
            "label": page.inner_text("#label"),
            "confidence": page.inner_text("#confidence"),
            "top5": [t.replace("\n", " ") for t in page.locator("#top5 li").all_inner_texts()],
            "info": page.inner_text("#info"),
            "status": page.inner_text("#status"),
            "page_width": page.evaluate("document.documentElement.scrollWidth"),
            "screenshot": None,
        }
        if args.screenshot:
            page.screenshot(path=args.screenshot, full_page=True)
            result["screenshot"] = args.screenshot
        result.update(problems.as_dict())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
