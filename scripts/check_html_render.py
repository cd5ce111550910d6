#!/usr/bin/env python3
"""Open an HTML report in headless Chromium: fail on console errors, on page errors and on any
attempt to reach the network; save a PNG screenshot for a person to look at.

Usage: check_html_render.py REPORT.html [--screenshot OUT.png] [--width 1300] [--height 3000]
       [--chromium PATH]
Exit 0 when clean, 1 on problems, 2 when the report or Chromium is missing. Prints one line.
The network check is twofold: no http(s) or protocol-relative URL in src/href/url()/@import
of the file, and, at run time, no request made on behalf of the page (Chromium's NetLog:
requests whose network isolation key is the file:// page); host resolution is blocked as well,
so nothing leaves the machine even if the page tried. Chromium's own background requests
(component updates, which the flags mostly turn off) are not the page's and are not counted.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
]
EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|srcset|action|poster|data|xlink:href)\s*=\s*["']?\s*(?:https?:)?//"""
    r"""|url\(\s*["']?\s*(?:https?:)?//|@import)""",
    re.IGNORECASE,
)
CONSOLE = re.compile(r":(?:INFO|WARNING|ERROR):CONSOLE\(\d+\)\]|:CONSOLE:|Uncaught ", re.I)
NETWORK = re.compile(r"net::ERR_|ERR_NAME_NOT_RESOLVED|Failed to load resource", re.I)


def find_chromium(explicit: str | None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def static_problems(html: str) -> list[str]:
    return [f"external reference: {m.group(0)!r}" for m in EXTERNAL.finditer(html)]


def page_requests(netlog: Path) -> list[str]:
    """URLs of network requests the page itself made, from a Chromium NetLog file."""
    if not netlog.is_file():
        return ["no NetLog was written"]
    urls = set()
    for event in json.loads(netlog.read_text(encoding="utf-8")).get("events", []):
        params = event.get("params") or {}
        url, key = str(params.get("url", "")), str(params.get("network_isolation_key", ""))
        if "file://" in key and not url.startswith(("file:", "data:", "about:")):
            urls.add(url)
    return [f"network: page requested {u}" for u in sorted(urls)]


def run_browser(chromium: str, page: Path, png: Path, width: int, height: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        netlog = Path(profile) / "netlog.json"
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--log-net-log={netlog}", f"--screenshot={png}", page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        requests = page_requests(netlog)
    log = proc.stderr.splitlines() + proc.stdout.splitlines()
    problems = [f"console: {line.strip()}" for line in log if CONSOLE.search(line)]
    problems += [f"network: {line.strip()}" for line in log if NETWORK.search(line)]
    problems += requests
    if proc.returncode != 0:
        problems.append(f"chromium exited with {proc.returncode}: {' | '.join(log[-3:])}")
    if not png.is_file() or png.stat().st_size == 0:
        problems.append("no screenshot was written")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--width", type=int, default=1300)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--chromium", default=None)
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"FAIL {args.report}: no such file")
        return 2
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("FAIL: no Chromium found (apt-get install -y chromium)")
        return 2
    png = args.screenshot or args.report.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    problems = static_problems(args.report.read_text(encoding="utf-8"))
    problems += run_browser(chromium, args.report, png, args.width, args.height)
    if problems:
        print(f"FAIL {args.report}: {len(problems)} problem(s): " + " ; ".join(problems[:5]))
        return 1
    print(f"OK {args.report}: no console errors, no network, screenshot {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
