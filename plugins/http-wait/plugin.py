"""http-wait: waits until a URL answers with an expected status (and optionally a body that
contains a text), polling every `interval_s`, and gives up at `timeout_s`. Redirects are not
followed: a 302 is what is checked. Rollback is a no-op.

NullOps plugin contract (docs/plugins.md): one JSON document on stdin, one JSON object on
stdout, the log on stderr, exit 0 on success. Exit 2: invalid parameters; exit 1: the URL did
not answer as expected before the deadline (the message says what it answered last).
"""
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

NAME = "http-wait"
MAX_BODY_BYTES = 1024 * 1024      # read for body_contains; the rest is not looked at
REQUEST_TIMEOUT_S = 10


class Failure(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def say(message):
    print(f"{NAME}: {message}", file=sys.stderr, flush=True)


def _number(params, key, default, low, high):
    value = params.get(key, default)
    if isinstance(value, str):
        try:
            value = float(value)  # a `${...}` reference arrives as a string
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise Failure(f"params.{key} must be a number from {low} to {high}", 2)
    return value


def parse(params):
    if not isinstance(params, dict):
        raise Failure("params must be a JSON object", 2)
    url = params.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise Failure("params.url must be an http:// or https:// URL", 2)
    status = params.get("status", 200)
    statuses = status if isinstance(status, list) else [status]
    if not statuses or not all(isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599
                               for s in statuses):
        raise Failure("params.status must be an HTTP status (100-599) or a list of them", 2)
    body = params.get("body_contains")
    if body is not None and (not isinstance(body, str) or not body):
        raise Failure("params.body_contains must be a non-empty string", 2)
    verify = params.get("verify_tls", True)
    if not isinstance(verify, bool):
        raise Failure("params.verify_tls must be true or false", 2)
    return {"url": url, "statuses": statuses, "body_contains": body, "verify_tls": verify,
            "timeout_s": _number(params, "timeout_s", 60, 0, 24 * 3600),
            "interval_s": _number(params, "interval_s", 1, 0.05, 600)}


def shown(url):
    """scheme://host:port/path: no credentials or query (tokens) in the log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path or '/'}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the 3xx itself is the answer


def probe(p, opener, budget_s):
    """One attempt: (satisfied, status or None, what was seen)."""
    request = urllib.request.Request(p["url"], headers={"User-Agent": f"nullops-{NAME}"})
    timeout = max(0.1, min(REQUEST_TIMEOUT_S, budget_s))
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        response = exc  # 4xx and 5xx (and unfollowed 3xx) are answers too
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return False, None, f"no answer ({reason})"
    with response:
        status = response.status if hasattr(response, "status") else response.code
        body = response.read(MAX_BODY_BYTES) if p["body_contains"] else b""
    if status not in p["statuses"]:
        return False, status, f"status {status}"
    if p["body_contains"] and p["body_contains"].encode() not in body:
        return False, status, f"status {status} but the body does not contain {p['body_contains']!r}"
    return True, status, f"status {status}"


def wait(p):
    context = ssl.create_default_context()
    if not p["verify_tls"]:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect)
    expected = " or ".join(map(str, p["statuses"])) + (
        f" with {p['body_contains']!r} in the body" if p["body_contains"] else "")
    say(f"waiting up to {p['timeout_s']:g} s for {shown(p['url'])} to answer {expected}")
    started = time.monotonic()
    deadline = started + p["timeout_s"]
    attempts, last = 0, None
    while True:
        attempts += 1
        ok, status, seen = probe(p, opener, deadline - time.monotonic())
        waited = time.monotonic() - started
        if ok:
            say(f"{shown(p['url'])} answered {seen} after {waited:.1f} s ({attempts} attempt(s))")
            return {"status": status, "attempts": attempts, "waited_s": round(waited, 3)}
        if seen != last:  # log changes, not every attempt
            say(f"attempt {attempts}: {seen}")
            last = seen
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Failure(f"{shown(p['url'])} did not answer {expected} within {p['timeout_s']:g} s "
                          f"({attempts} attempt(s); last: {seen})")
        time.sleep(min(p["interval_s"], remaining))  # the last attempt is at the deadline


def main():
    try:
        data = json.load(sys.stdin)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise Failure(f"stdin must be one JSON object: {exc}", 2) from None
    action = data.get("action")
    if action == "rollback":
        return {}
    if action != "run":
        raise Failure(f"unknown action {action!r} (run or rollback)", 2)
    return wait(parse(data.get("params") or {}))


if __name__ == "__main__":
    try:
        output = main()
    except Failure as exc:
        say(str(exc))
        sys.exit(exc.code)
    json.dump(output, sys.stdout)
