"""Container registries: create, change, delete, and tag listing through the Registry HTTP
API v2 (basic auth, the bearer-token challenge flow, `Link` pagination).

Credentials are write-only: the password is stored encrypted (context "registry.password"),
and neither it nor the username appears in a response, an audit entry, a log line or an error
message. Tag lists are cached briefly in process memory; a registry that is down or refuses the
credentials fails within seconds (connect timeout 3 s, read timeout 10 s).
"""
import fnmatch
import hashlib
import logging
import re
import threading
import time
from urllib.parse import urljoin, urlsplit

import requests
from sqlalchemy import select

from app.extensions import db
from app.models import Plugin, Registry, Service
from app.models.registries import DOCKER_HUB_URL
from app.services import audit
from app.services.catalog import keyring
from app.services.errors import Conflict, ServiceError, ValidationFailed
from app.services.names import check

log = logging.getLogger(__name__)

PASSWORD_CONTEXT = Registry.__encrypted__["password_ciphertext"]
NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$"
NAME_HINT = "1-64 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit"
URL_MAX = 255
URL_HINT = ("the base URL of a Registry HTTP API v2: http:// or https://, a host and an optional "
            "port, nothing else (e.g. https://registry.example.com or http://127.0.0.1:5000)")
USERNAME_MAX = 255
PASSWORD_MAX = 4096
# Repository names as the distribution spec has them: lowercase path components joined by '/'.
REPOSITORY_PATTERN = r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
REPOSITORY_MAX = 255
REPOSITORY_HINT = "a repository path such as nginx, library/nginx or team/app: lowercase, parts joined by '/'"
PATTERN_MAX = 128
PATTERN_CHARS = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]+$")
PATTERN_HINT = ("a glob over tags such as features-*, v* or 1.2.*; a tag cannot contain '/', so "
                "branch builds are tagged like features-login and matched by features-*")

CONNECT_TIMEOUT = 3
READ_TIMEOUT = 10
TOTAL_DEADLINE = 30   # a whole listing (all pages), in seconds
PAGE_SIZE = 1000
MAX_PAGES = 200
CACHE_SECONDS = 60
CACHE_MAX_ENTRIES = 1000
UNCHANGED = object()


# --- errors -------------------------------------------------------------------------------------
class RegistryError(ServiceError):
    """The registry answered, but not with a tag list."""

    status = 502
    code = "registry_error"


class RegistryUnreachable(RegistryError):
    status = 503
    code = "registry_unreachable"


class RegistryDenied(RegistryError):
    code = "registry_denied"


class RepositoryNotFound(RegistryError):
    code = "repository_not_found"


# --- checks -------------------------------------------------------------------------------------
def _refuse(field, why):
    raise ValidationFailed(f"{field} is invalid: {why}", {field: why})


def _check_name(name, registry_id=None):
    check("name", name, NAME_PATTERN, NAME_HINT)
    existing = db.session.scalar(select(Registry).where(Registry.name == name))
    if existing is not None and existing.id != registry_id:
        raise Conflict(f"a registry named {name!r} exists; choose another name",
                       {"name": "already taken"})
    return name


def normalize_url(url):
    """The registry's base URL, without a trailing slash; refused with a hint if it is more."""
    if not isinstance(url, str) or not url or len(url) > URL_MAX:
        _refuse("url", f"give 1-{URL_MAX} characters: {URL_HINT}")
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # e.g. "http://[": an unclosed IPv6 bracket
        _refuse("url", f"the host or port is not valid; {URL_HINT}")
    if parts.scheme not in ("http", "https"):
        given = f"{parts.scheme}://" if parts.scheme else "no scheme"
        _refuse("url", f"use http:// or https://, not {given}; {URL_HINT}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        _refuse("url", "leave credentials out of the URL; set username and password instead")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if (not host or not re.fullmatch(r"[A-Za-z0-9.:\[\]_-]+", parts.netloc)
            or (port is not None and not 1 <= port <= 65535)):
        _refuse("url", f"the host or port is not valid; {URL_HINT}")
    if parts.path.rstrip("/") or parts.query or parts.fragment:
        hint = " (leave out /v2: NullOps adds it)" if parts.path.rstrip("/").endswith("/v2") else ""
        _refuse("url", f"give the base URL only, without path, query or fragment{hint}; {URL_HINT}")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _check_credentials(username, password):
    if (username is None) != (password is None):
        _refuse("password" if password is None else "username",
                "give both username and password, or neither for anonymous access")
    if username is not None and (not isinstance(username, str) or not username
                                 or len(username) > USERNAME_MAX or ":" in username
                                 or any(ord(c) < 32 for c in username)):
        _refuse("username", f"give 1-{USERNAME_MAX} characters without ':' or control characters")
    if password is not None and (not isinstance(password, str) or not password
                                 or len(password) > PASSWORD_MAX):
        _refuse("password", f"give 1-{PASSWORD_MAX} characters")


def check_repository(repository):
    if not isinstance(repository, str) or len(repository) > REPOSITORY_MAX \
            or not re.fullmatch(REPOSITORY_PATTERN, repository):
        _refuse("repository", f"use {REPOSITORY_HINT}")
    return repository


def check_pattern(pattern):
    """A glob over tags, or None for all tags."""
    if pattern is None or pattern == "":
        return None
    if not isinstance(pattern, str) or len(pattern) > PATTERN_MAX:
        _refuse("pattern", f"give at most {PATTERN_MAX} characters: {PATTERN_HINT}")
    if "/" in pattern:
        _refuse("pattern", "a tag cannot contain '/': branch builds are tagged like "
                           "features-login, so use features-* rather than features/*")
    if not PATTERN_CHARS.fullmatch(pattern):
        _refuse("pattern", "use letters, digits, '.', '_', '-' and the glob characters * ? [ ]: "
                           + PATTERN_HINT)
    return pattern


# --- create, change, delete ---------------------------------------------------------------------
def _encrypt(password):
    return keyring().encrypt(password, PASSWORD_CONTEXT)


def reveal_password(registry):
    """For talking to the registry only; never for a response, a log line or an audit entry."""
    if registry.password_ciphertext is None:
        return None
    return keyring().decrypt(registry.password_ciphertext, PASSWORD_CONTEXT)


def create(actor, name, url, username=None, password=None):
    name = _check_name(name)
    url = normalize_url(url)
    _check_credentials(username, password)
    registry = Registry(name=name, url=url, username=username, is_default=False,
                        password_ciphertext=_encrypt(password) if password is not None else None)
    db.session.add(registry)
    db.session.flush()
    audit.record(actor, "registry.create", "registry", registry,
                 {"url": url, "credentials": "set" if password is not None else "none"})
    db.session.commit()
    return registry


def update(actor, registry, name=None, url=None, username=UNCHANGED, password=UNCHANGED):
    """None leaves name and url as they are. Credentials: UNCHANGED keeps them; a username of
    None clears both (anonymous); a new password alone keeps the username."""
    changes = {}
    if name is not None and name != registry.name:
        if registry.is_default:
            raise Conflict("the Docker Hub registry keeps its name", {"name": "cannot be changed"})
        _check_name(name, registry.id)
        changes["name"] = [registry.name, name]
        registry.name = name
    if url is not None:
        url = normalize_url(url)
        if url != registry.url:
            if registry.is_default:
                raise Conflict("the Docker Hub registry keeps its URL", {"url": "cannot be changed"})
            changes["url"] = [registry.url, url]
            registry.url = url
    if username is not UNCHANGED or password is not UNCHANGED:
        had = registry.has_credentials
        if username is None:  # back to anonymous
            if password not in (UNCHANGED, None):
                _refuse("username", "give a username with the password, or null both for anonymous access")
            registry.username = registry.password_ciphertext = None
            if had:
                changes["credentials"] = "cleared"
        else:
            if password is None:
                _refuse("password", "set username to null as well to remove the credentials")
            if password is UNCHANGED and not had:
                _refuse("password", "give a password with the username")
            new_username = registry.username if username is UNCHANGED else username
            _check_credentials(new_username, "kept" if password is UNCHANGED else password)
            registry.username = new_username
            if password is not UNCHANGED:
                registry.password_ciphertext = _encrypt(password)
            changes["credentials"] = "changed" if had else "set"  # what happened, never values
    if changes:
        audit.record(actor, "registry.update", "registry", registry, changes)
    db.session.commit()
    _forget(registry.id)
    return registry


def _refuse_if_used(registry):
    """Services and plugins keep their registry (the foreign keys RESTRICT): name them first."""
    users = []
    for model, kind in ((Service, "services"), (Plugin, "plugins")):
        names = db.session.scalars(select(model.name).where(model.registry_id == registry.id)
                                   .order_by(model.name)).all()
        if names:
            users.append(f"{kind} {', '.join(names)}")
    if users:
        used_by = "; ".join(users)
        raise Conflict(f"registry {registry.name} is used by {used_by}; move them to another "
                       "registry or delete them first", {"registry": f"used by {used_by}"})


def delete(actor, registry):
    if registry.is_default:
        raise Conflict("Docker Hub is the default registry and cannot be deleted; "
                       "it stays available for public images", {"registry": "the default registry"})
    _refuse_if_used(registry)
    audit.record(actor, "registry.delete", "registry", registry, {"url": registry.url})
    db.session.delete(registry)
    db.session.commit()
    _forget(registry.id)


# --- tags ---------------------------------------------------------------------------------------
_cache = {}
_cache_lock = threading.Lock()


def _credentials_version(registry):
    """Changes whenever the URL or the credentials do (each encryption has a fresh nonce)."""
    material = "\0".join([registry.url, registry.username or "", registry.password_ciphertext or ""])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _forget(registry_id):
    with _cache_lock:
        for key in [k for k in _cache if k[0] == registry_id]:
            del _cache[key]


def clear_cache():
    with _cache_lock:
        _cache.clear()


def _cached(key):
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
    return None


def _remember(key, tags):
    now = time.monotonic()
    with _cache_lock:
        for stale in [k for k, (at, _) in _cache.items() if now - at >= CACHE_SECONDS]:
            del _cache[stale]
        if len(_cache) >= CACHE_MAX_ENTRIES:
            del _cache[min(_cache, key=lambda k: _cache[k][0])]
        _cache[key] = (now, tags)


def registry_repository(registry, repository):
    """The repository as the registry names it: Docker Hub's official images live under library/."""
    if urlsplit(registry.url).hostname == urlsplit(DOCKER_HUB_URL).hostname and "/" not in repository:
        return f"library/{repository}"
    return repository


_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(.*)$")


def _sort_key(tag):
    """Version-looking tags first, newest first (v1.10.0 before v1.9.2; a release before its
    pre-releases); then every other tag in natural order (build-9 before build-10)."""
    match = _VERSION.match(tag)
    if match:
        numbers = tuple(int(n) for n in match.group(1).split("."))
        rest = match.group(2)
        return (0, tuple(-n for n in numbers) + (0,) * (8 - len(numbers)), rest != "", rest, tag)
    natural = tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                    for part in re.findall(r"\d+|\D+", tag))
    return (1, natural, False, "", tag)


def sort_tags(tags):
    return sorted(set(tags), key=_sort_key)


def list_tags(registry, repository, pattern=None):
    """The repository's tags matching the glob `pattern` (all if None), sorted by sort_tags.
    Raises ValidationFailed for bad input and a RegistryError when the registry fails."""
    repository = check_repository(repository)
    pattern = check_pattern(pattern)
    remote = registry_repository(registry, repository)
    key = (registry.id, remote, _credentials_version(registry))
    tags = _cached(key)
    if tags is None:
        tags = sort_tags(_Client(registry, remote).tags())
        _remember(key, tags)
        log.info("registry %s: %d tags in %s", registry.name, len(tags), remote)
    if pattern is None:
        return list(tags)
    return [tag for tag in tags if fnmatch.fnmatchcase(tag, pattern)]


def _reason(exc):
    """A short, credential-free reason for a failed connection."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        inner = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = seen.__cause__ or seen.__context__ or inner
        if seen in chain:
            break
    text = " ".join(str(e) for e in chain)
    if isinstance(exc, requests.ConnectTimeout):
        return f"no connection within {CONNECT_TIMEOUT} s"
    if isinstance(exc, requests.ReadTimeout):
        return f"no answer within {READ_TIMEOUT} s"
    if isinstance(exc, requests.exceptions.SSLError):
        return "the TLS handshake failed (certificate not trusted, or not an https server)"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text \
            or "Temporary failure in name resolution" in text:
        return "the host name does not resolve"
    if "Connection reset" in text or "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the connection was closed before an answer"
    return "the connection failed"


class _Client:
    """One tag listing: follows auth challenges and `Link` pagination."""

    def __init__(self, registry, repository):
        self.registry = registry
        self.name = registry.name
        self.repository = repository
        self.origin = urlsplit(registry.url)
        self.session = requests.Session()
        self.auth_header = None
        self.deadline = time.monotonic() + TOTAL_DEADLINE

    def _credentials(self):
        if not self.registry.has_credentials:
            return None
        return (self.registry.username, reveal_password(self.registry))

    def _get(self, url, headers=None, auth=None, params=None):
        if time.monotonic() > self.deadline:
            raise RegistryUnreachable(
                f"registry {self.name} is too slow: listing {self.repository} took more than "
                f"{TOTAL_DEADLINE} s")
        try:
            return self.session.get(url, headers=headers, auth=auth, params=params,
                                    timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), allow_redirects=True)
        except requests.RequestException as exc:
            raise RegistryUnreachable(f"registry {self.name} is unreachable: {_reason(exc)}") from None

    def _headers(self):
        headers = {"Accept": "application/json"}
        if self.auth_header:
            headers["Authorization"] = self.auth_header
        return headers

    def _same_origin(self, url):
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc.lower()) == (self.origin.scheme, self.origin.netloc.lower())

    def tags(self):
        url = f"{self.registry.url}/v2/{self.repository}/tags/list?n={PAGE_SIZE}"
        tags, pages, authenticated = [], 0, False
        while url:
            response = self._get(url, headers=self._headers())
            if response.status_code == 401 and not authenticated:
                authenticated = True
                self._authenticate(response)
                response = self._get(url, headers=self._headers())
            self._check(response)
            try:
                body = response.json()
                page = body.get("tags") or []  # an empty repository answers "tags": null
                if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                    raise ValueError("tags is not a list of strings")
            except (ValueError, AttributeError):
                raise RegistryError(f"registry {self.name} answered {self.repository}'s tag list "
                                    "with something that is not a Registry API v2 tag list") from None
            tags.extend(page)
            pages += 1
            url = self._next(response)
            if url and pages >= MAX_PAGES:
                raise RegistryError(f"registry {self.name} lists more than {MAX_PAGES} pages of tags "
                                    f"for {self.repository}; NullOps stops there")
        return tags

    def _next(self, response):
        link = response.links.get("next", {}).get("url")
        if not link:
            return None
        url = urljoin(response.url, link)
        if not self._same_origin(url):
            raise RegistryError(f"registry {self.name} pointed the next page of tags to another host; "
                                "NullOps does not follow it")
        return url

    def _check(self, response):
        status = response.status_code
        if status == 200:
            return
        if status == 401:
            if self._credentials() is None:
                raise RegistryDenied(f"registry {self.name} requires credentials (401) to list "
                                     f"{self.repository}: set a username and password")
            raise RegistryDenied(f"registry {self.name} refused the credentials (401)")
        if status == 403:
            raise RegistryDenied(f"registry {self.name} denied access to {self.repository} (403)")
        if status == 404:
            raise RepositoryNotFound(f"repository {self.repository} not found in registry {self.name}")
        if status == 429:
            raise RegistryError(f"registry {self.name} is rate limiting requests (429); try again later")
        raise RegistryError(f"registry {self.name} answered HTTP {status} to a tag list request")

    def _authenticate(self, response):
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme, _, rest = challenge.strip().partition(" ")
        params = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', rest))
        credentials = self._credentials()
        if scheme.lower() == "basic":
            if credentials is not None:
                self.auth_header = requests.auth._basic_auth_str(*credentials)
            return
        if scheme.lower() == "bearer" and params.get("realm"):
            self.auth_header = f"Bearer {self._token(params, credentials)}"
            return
        raise RegistryError(f"registry {self.name} asked for an authentication NullOps does not "
                            f"speak ({scheme or 'none given'}); Basic and Bearer are supported")

    def _token(self, params, credentials):
        realm = params["realm"]
        if urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"registry {self.name} gave a token service address that is not http(s)")
        query = {"scope": f"repository:{self.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        response = self._get(realm, params=query, auth=credentials,
                             headers={"Accept": "application/json"})
        if response.status_code == 401:
            raise RegistryDenied(f"registry {self.name} refused the credentials (401)")
        if response.status_code != 200:
            raise RegistryError(f"registry {self.name}'s token service answered HTTP {response.status_code}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"registry {self.name}'s token service answered without a token")
        return token
