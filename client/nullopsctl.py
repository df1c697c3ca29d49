#!/usr/bin/env python3
"""nullopsctl: create a NullOps deployment from CI, wait until it is ready, print its URLs,
delete it. Standard library only, so a CI job can fetch this one file and run it.

    export NULLOPS_URL=https://nullops.example.com NULLOPS_TOKEN=...   # an API token
    nullopsctl deploy --project shop --environment staging --name pr-42 \\
        --tag web=features-login --wait            # prints {"id":..,"status":"ready","urls":{..}}
    nullopsctl urls --environment staging --name pr-42
    nullopsctl delete --environment staging --name pr-42 --wait

The token comes from NULLOPS_TOKEN or --token-file, never from an argument (arguments show
in process lists and CI logs). Exit codes: 0 done; 1 the deployment failed (or its cleanup
did); 2 bad usage or refused by the API; 3 timed out waiting; 4 NullOps unreachable.
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

EXIT_FAILED, EXIT_REFUSED, EXIT_TIMEOUT, EXIT_UNREACHABLE = 1, 2, 3, 4
SETTLED = {"ready", "failed", "deleted", "cleanup_failed"}
POLL_S = 2.0


class Failure(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def _origin(url):
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class _KeepTokenAtHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but sends the token only to the origin it was given for: urllib copies
    every header onto the redirected request, so a redirect elsewhere (or to plain http) would
    hand the bearer token to another server (issue 17 item 6)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


class Api:
    def __init__(self, base_url, token, timeout=30):
        self.base = base_url.rstrip("/") + "/api/v1"
        self.token = token
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_KeepTokenAtHome)

    def call(self, method, path, body=None, query=None):
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise Failure(_api_error(exc), EXIT_REFUSED) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Failure(f"cannot reach NullOps at {self.base}: {reason}", EXIT_UNREACHABLE) from None
        return json.loads(raw) if raw else {}

    def all(self, path, query=None):
        """Every item of a paginated list."""
        page = 1
        while True:
            result = self.call("GET", path, query={**(query or {}), "page": page, "per_page": 100})
            yield from result["items"]
            if page * result["per_page"] >= result["total"]:
                return
            page += 1


def _api_error(exc):
    try:
        error = json.loads(exc.read())["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {exc.code} from NullOps"
    fields = "; ".join(f"{name}: {hint}" for name, hint in (error.get("fields") or {}).items())
    return f"{error.get('message')} (HTTP {exc.code}{', ' + fields if fields else ''})"


def _by_name(api, path, name, what):
    for item in api.all(path):
        if item["name"] == name:
            return item
    raise Failure(f"no {what} named {name!r} is visible to this token", EXIT_REFUSED)


def find_deployment(api, environment, name):
    env = _by_name(api, "/environments", environment, "environment")
    for item in api.all("/deployments", {"environment_id": env["id"]}):
        if item["name"] == name:
            return api.call("GET", f"/deployments/{item['id']}")
    raise Failure(f"no live deployment {name!r} in environment {environment!r}", EXIT_REFUSED)


def wait(api, deployment_id, until, timeout):
    """Poll until the deployment reaches a settled status; print progress to stderr."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        deployment = api.call("GET", f"/deployments/{deployment_id}")
        status = deployment["status"]
        seen = (status, json.dumps(deployment.get("progress") or {}, sort_keys=True))
        if seen != last:
            steps = ", ".join(f"{k}={v}" for k, v in sorted((deployment.get("progress") or {}).items()))
            print(f"[nullopsctl] {deployment['name']}: {status}" + (f" ({steps})" if steps else ""),
                  file=sys.stderr)
            last = seen
        if status in until or status in SETTLED:
            return deployment
        if time.monotonic() > deadline:
            raise Failure(f"deployment {deployment['name']} still {status} after {timeout:.0f} s",
                          EXIT_TIMEOUT)
        time.sleep(POLL_S)


def summary(deployment):
    return {"id": deployment["id"], "name": deployment["name"], "status": deployment["status"],
            "message": deployment.get("status_message") or "", "urls": deployment.get("urls") or {}}


def cmd_deploy(api, args):
    project = _by_name(api, "/projects", args.project, "project")
    environment = _by_name(api, "/environments", args.environment, "environment")
    tags = dict(_tag(item) for item in args.tag)
    deployment = api.call("POST", "/deployments", {
        "project_id": project["id"], "environment_id": environment["id"], "name": args.name,
        "tags": tags})
    if args.wait:
        deployment = wait(api, deployment["id"], {"ready"}, args.timeout)
    print(json.dumps(summary(deployment)))
    if deployment["status"] in ("failed", "cleanup_failed"):
        raise Failure(f"deployment {deployment['name']} failed: {deployment.get('status_message')}",
                      EXIT_FAILED)


def cmd_status(api, args):
    print(json.dumps(summary(find_deployment(api, args.environment, args.name))))


def cmd_urls(api, args):
    print(json.dumps(find_deployment(api, args.environment, args.name).get("urls") or {}))


def cmd_delete(api, args):
    deployment = find_deployment(api, args.environment, args.name)
    api.call("DELETE", f"/deployments/{deployment['id']}")
    if args.wait:
        deployment = wait(api, deployment["id"], {"deleted"}, args.timeout)
        if deployment["status"] != "deleted":
            print(json.dumps(summary(deployment)))
            raise Failure(f"cleanup of {deployment['name']} did not finish: "
                          f"{deployment.get('status_message')}", EXIT_FAILED)
    else:
        deployment = api.call("GET", f"/deployments/{deployment['id']}")
    print(json.dumps(summary(deployment)))


def _tag(text):
    step, sep, tag = text.partition("=")
    if not sep or not step or not tag:
        raise Failure(f"--tag takes STEP=TAG, got {text!r}", EXIT_REFUSED)
    return step, tag


def parser():
    top = argparse.ArgumentParser(prog="nullopsctl", description=__doc__.split("\n\n")[0])
    top.add_argument("--url", default=os.environ.get("NULLOPS_URL"),
                     help="NullOps base URL (default: $NULLOPS_URL)")
    top.add_argument("--token-file", help="file holding the API token (default: $NULLOPS_TOKEN)")
    sub = top.add_subparsers(dest="command", required=True)

    def named(name, helptext):
        command = sub.add_parser(name, help=helptext)
        command.add_argument("--environment", required=True)
        command.add_argument("--name", required=True, help="the deployment's name")
        return command

    deploy = named("deploy", "create a deployment (and wait for it with --wait)")
    deploy.add_argument("--project", required=True)
    deploy.add_argument("--tag", action="append", default=[], metavar="STEP=TAG",
                        help="the image tag of a selectable service; repeat for each")
    for command in (deploy, named("delete", "delete a deployment")):
        command.add_argument("--wait", action="store_true", help="wait until it settles")
        command.add_argument("--timeout", type=float, default=1800, help="seconds (default 1800)")
    named("status", "print a deployment's status as JSON")
    named("urls", "print a deployment's service URLs as JSON")
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if not args.url:
            raise Failure("set NULLOPS_URL or pass --url", EXIT_REFUSED)
        if args.token_file:
            with open(args.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        else:
            token = os.environ.get("NULLOPS_TOKEN", "")
        if not token:
            raise Failure("set NULLOPS_TOKEN (an API token from your NullOps profile) or pass "
                          "--token-file", EXIT_REFUSED)
        {"deploy": cmd_deploy, "delete": cmd_delete, "status": cmd_status,
         "urls": cmd_urls}[args.command](Api(args.url, token), args)
    except Failure as exc:
        print(f"nullopsctl: {exc}", file=sys.stderr)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
