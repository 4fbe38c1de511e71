"""A small async Kubernetes client for the few calls the handlers make themselves
(create/patch children, read a Secret's key names, list a Job's pods, touch an owner).

Kopf and this client share one `ClusterConnection` (the login handler hands the same
server and credentials to Kopf). Every call here is listed in `rbac.RULES`; the test of
that list records the calls.
"""

from __future__ import annotations

import json

import asyncio
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

LIST_PAGE_SIZE = 500
"""Objects per page of a paginated LIST (`limit`): the API server answers in chunks."""
MAX_LIST_PAGES = 1000
"""Most pages one paginated LIST reads; a server that keeps answering `continue` fails it."""


class KubeError(Exception):
    """An unexpected API answer (not 404/409, which callers handle)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"HTTP {status}: {message[:300]}")


class Conflict(KubeError):
    """409: the object exists already."""


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/api/{self.version}" if self.group == "" else f"/apis/{self.group}/{self.version}"
        parts = [base]
        if namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


CPTRUNS = Resource("cpt.dev", "v1alpha1", "cptruns")
CORPORA = Resource("cpt.dev", "v1alpha1", "corpora")
CHECKPOINT_POLICIES = Resource("cpt.dev", "v1alpha1", "checkpointpolicies")
PYTORCHJOBS = Resource("kubeflow.org", "v1", "pytorchjobs")
JOBS = Resource("batch", "v1", "jobs")
CONFIGMAPS = Resource("", "v1", "configmaps")
SECRETS = Resource("", "v1", "secrets")
PODS = Resource("", "v1", "pods")


@dataclass
class ClusterConnection:
    """Where the API server is and how to authenticate; in-cluster, kubeconfig or explicit."""

    server: str
    token: str | None = None
    token_file: str | None = None
    ca_path: str | None = None
    insecure: bool = False
    cert_path: str | None = None
    key_path: str | None = None
    _token_read_at: float = 0.0

    @classmethod
    def in_cluster(cls) -> "ClusterConnection":
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return cls(server=f"https://{host}:{port}", token_file=f"{SA_DIR}/token", ca_path=f"{SA_DIR}/ca.crt")

    @classmethod
    def from_kubeconfig(cls, context: str | None = None) -> "ClusterConnection":
        from kubernetes import client, config  # only for parsing kubeconfig files

        cfg = client.Configuration()
        config.load_kube_config(context=context, client_configuration=cfg)
        token = (cfg.api_key or {}).get("authorization", "").removeprefix("Bearer ").strip() or None
        return cls(
            server=cfg.host, token=token, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
            cert_path=cfg.cert_file, key_path=cfg.key_file,
        )  # fmt: skip

    @classmethod
    def detect(cls) -> "ClusterConnection":
        return cls.in_cluster() if "KUBERNETES_SERVICE_HOST" in os.environ else cls.from_kubeconfig()

    def current_token(self) -> str | None:
        """The bearer token; a projected token file is re-read every minute (it rotates)."""
        if self.token_file and (self.token is None or time.monotonic() - self._token_read_at > 60):
            with open(self.token_file, encoding="utf-8") as f:
                self.token = f.read().strip()
            self._token_read_at = time.monotonic()
        return self.token

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.insecure:
            return False
        if not self.server.startswith("https"):
            return True
        ctx = ssl.create_default_context(cafile=self.ca_path) if self.ca_path else ssl.create_default_context()
        if self.cert_path and self.key_path:
            ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


class KubeClient:
    """JSON over HTTP to the API server; one aiohttp session per event loop."""

    def __init__(self, connection: ClusterConnection, timeout: float = 30.0, user_agent: str = "cpt-operator"):
        self.connection = connection
        self.user_agent = user_agent
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._sessions: dict[int, aiohttp.ClientSession] = {}
        self.calls: list[tuple[str, str]] | None = None  # (verb, path); set to a list to record

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(id(loop))
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(ssl=self.connection.ssl_context(), limit=64)
            session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
            self._sessions[id(loop)] = session
        return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def _request(self, method: str, path: str, verb: str, body: Any = None, params: dict[str, str] | None = None,
                       content_type: str = "application/json") -> tuple[int, Any]:  # fmt: skip
        if self.calls is not None:
            self.calls.append((verb, path))
        headers = {"Accept": "application/json", "Content-Type": content_type, "User-Agent": self.user_agent}
        token = self.connection.current_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = self.connection.server.rstrip("/") + path
        async with self._session().request(method, url, json=body, params=params, headers=headers) as resp:
            text = await resp.text()
            if not text:
                return resp.status, None
            try:
                return resp.status, json.loads(text)
            except ValueError:
                # Not every answer is JSON: a real server says "404 page not found" in plain text
                # for a path it does not serve (an API group whose CRDs are not installed).
                return resp.status, {"message": text.strip()[:1024]}

    @staticmethod
    def _check(status: int, data: Any) -> None:
        if status == 409:
            raise Conflict(status, str((data or {}).get("message", "")))
        if status >= 400:
            raise KubeError(status, str((data or {}).get("message", data)))

    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        status, data = await self._request("GET", res.path(namespace, name), "get")
        if status == 404:
            return None
        self._check(status, data)
        return data

    async def api_group(self, group: str) -> dict[str, Any] | None:
        """The discovery document of an API group (its versions, the preferred one); None when
        the server does not serve the group."""
        status, data = await self._request("GET", f"/apis/{quote(group, safe='')}", "get")
        if status == 404:
            return None
        self._check(status, data)
        return data

    async def list(self, res: Resource, namespace: str, label_selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Objects of one namespace matching the labels (also filtered here, in case the server does not)."""
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in label_selector.items())} if label_selector else None
        status, data = await self._request("GET", res.path(namespace), "list", params=params)
        self._check(status, data)
        items = (data or {}).get("items") or []
        if label_selector:
            items = [i for i in items if all(((i.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in label_selector.items())]
        return items

    async def list_paginated(self, res: Resource, namespace: str, label_selector: dict[str, str] | None = None,
                             limit: int = LIST_PAGE_SIZE, max_pages: int = MAX_LIST_PAGES) -> list[dict[str, Any]]:  # fmt: skip
        """`list`, read in pages of `limit` objects (`limit` + `continue`), so the API server never
        builds one answer of every object; raises KubeError on an expired token (410) or a server
        that repeats one, or after `max_pages` pages."""
        selector = ",".join(f"{k}={v}" for k, v in label_selector.items()) if label_selector else None

        async def page(token: str | None) -> tuple[list[dict[str, Any]], str | None]:
            params = {"limit": str(limit)}
            if selector:
                params["labelSelector"] = selector
            if token:
                params["continue"] = token
            status, data = await self._request("GET", res.path(namespace), "list", params=params)
            self._check(status, data)
            return (data or {}).get("items") or [], ((data or {}).get("metadata") or {}).get("continue") or None

        items = await paginate(page, max_pages)
        if label_selector:
            items = [i for i in items if all(((i.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in label_selector.items())]
        return items

    async def create(self, res: Resource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create; raises Conflict when it exists."""
        status, data = await self._request("POST", res.path(namespace), "create", body=body)
        self._check(status, data)
        return data

    async def patch(self, res: Resource, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """JSON merge patch; None when the object does not exist."""
        status, data = await self._request(
            "PATCH", res.path(namespace, name), "patch", body=body, content_type="application/merge-patch+json"
        )
        if status == 404:
            return None
        self._check(status, data)
        return data

    async def patch_status(self, res: Resource, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """JSON merge patch of the status subresource; None when the object does not exist."""
        status, data = await self._request(
            "PATCH", res.path(namespace, name, "status"), "patch", body=body, content_type="application/merge-patch+json"
        )
        if status == 404:
            return None
        self._check(status, data)
        return data

    async def delete(self, res: Resource, namespace: str, name: str, propagation: str = "Background") -> bool:
        """Delete (Background or Foreground propagation); False when it did not exist."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        status, data = await self._request("DELETE", res.path(namespace, name), "delete", body=body)
        if status == 404:
            return False
        self._check(status, data)
        return True


async def paginate(
    page: Callable[[str | None], Awaitable[tuple[list[dict[str, Any]], str | None]]], max_pages: int = MAX_LIST_PAGES
) -> list[dict[str, Any]]:
    """Every item of a paginated LIST: `page(token)` answers one page and the next `continue`
    token (None on the last page), as the API server does."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    seen: set[str] = set()
    for _ in range(max_pages):
        batch, token = await page(token)
        items += batch
        if not token:
            return items
        if token in seen:
            raise KubeError(500, f"the API server repeated its continue token after {len(items)} objects")
        seen.add(token)
    raise KubeError(500, f"the LIST passed {max_pages} pages ({len(items)} objects) without an end")
