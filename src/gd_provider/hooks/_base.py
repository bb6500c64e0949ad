"""Shared connection lookup: a missing *default* connection means "use the embedded default"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException


def strip_credentials(url: str | None) -> str | None:
    """``url`` without its user info (``http://user:pw@host:5000/x`` → ``http://host:5000/x``), for what is
    recorded or shown: extra links, tags, reports. Anything that is not such a URL is returned unchanged."""
    if not url or "://" not in url or "@" not in url:
        return url
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:  # IPv6
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # unparsable: keep only what follows the last '@' of the authority
        scheme, rest = url.split("://", 1)
        authority, sep, path = rest.partition("/")
        return f"{scheme}://{authority.rsplit('@', 1)[-1]}{sep}{path}"
    return urlunsplit(parts._replace(netloc=host + port))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def mask_connection_secrets(conn: Connection) -> None:
    """Mask what Airflow does not: Airflow masks a connection's password and its extra as one whole JSON
    string, so a secret *inside* the extra (``{"token": ...}``, a password in ``tracking_uri``) would be
    logged in clear. Masks the password itself, the values of sensitive extra keys (token, password,
    secret, ...) and the secrets of every URL in the host, the schema or the extra (``url_secrets``)."""
    from airflow.sdk.log import mask_secret

    if conn.password:
        mask_secret(conn.password)
    extra = conn.extra_dejson
    if extra:
        mask_secret(extra)  # values whose key name is sensitive, recursively
    for value in [conn.host or "", conn.schema or "", *_strings(extra)]:
        for secret in url_secrets(value):
            mask_secret(secret)


_SENSITIVE_QUERY_KEYS = ("password", "passwd", "secret", "token", "key", "signature", "credential", "auth")


def url_secrets(value: str) -> list[str]:
    """The secrets of each URL inside ``value``: the password of its user info (as written and
    percent-decoded), a user info without a password (``https://TOKEN@host``), and the values of query
    parameters with a sensitive name (``?token=...``, ``X-Amz-Signature=...``)."""
    from urllib.parse import parse_qsl, unquote

    found: list[str] = []
    if "://" not in value:
        return found
    for url in re.findall(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+", value):
        try:
            parts = urlsplit(url)
            user, password = parts.username, parts.password
        except ValueError:
            continue
        if password:
            found += [password, unquote(password)]
        elif user and "@" in parts.netloc:
            found += [user, unquote(user)]
        for key, val in parse_qsl(parts.query, keep_blank_values=False):
            if val and any(word in key.lower() for word in _SENSITIVE_QUERY_KEYS):
                found.append(val)
    return list(dict.fromkeys(found))


class ConnectionConfigError(ValueError):
    """A connection's settings cannot be right (e.g. an unknown extra field: most often a misspelled one)."""


def check_extra_fields(conn_id: str, service: str, extra: dict[str, Any], known: frozenset[str]) -> None:
    """Refuse extra fields this service does not read: a misspelled ``tracking-uri`` would otherwise be
    ignored and the connection silently fall back to a default."""
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ConnectionConfigError(
            f"{service} connection {conn_id!r}: unknown extra field(s) {unknown}; the known ones are "
            f"{sorted(known)}"
        )


class GdBaseHook(BaseHook):
    """Base for our hooks.

    The embedded default needs no connection at all: when the hook's *default* connection id
    (``<svc>_default``) is not defined, the hook uses the embedded default under the project home.
    A non-default connection id that does not exist is an error, never a silent fallback.
    """

    default_conn_name: str = ""
    hook_name: str = ""
    extra_fields: frozenset[str] = frozenset()  # the extra keys this hook reads; others are refused

    def __init__(self, conn_id: str | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name
        self._conn: Connection | None = None
        self._looked_up = False

    def connection(self) -> Connection | None:
        if not self._looked_up:
            try:
                self._conn = self.get_connection(self.conn_id)
                mask_connection_secrets(self._conn)
            except AirflowNotFoundException:
                if self.conn_id != self.default_conn_name:
                    raise
                self.log.info("Connection %r is not defined: using the embedded default", self.conn_id)
                self._conn = None
            self._looked_up = True
        return self._conn

    def extra(self) -> dict[str, Any]:
        conn = self.connection()
        if conn is None:
            return {}
        extra = dict(conn.extra_dejson)
        if self.extra_fields:
            check_extra_fields(self.conn_id, self.hook_name or type(self).__name__, extra, self.extra_fields)
        return extra
