"""Showing the studio in a notebook cell when the browser may not be on the kernel's machine.

`http://localhost:PORT` in a cell only works when the browser and the kernel share a machine.
`embed()` picks the URL the *browser* can load, by this rule (first match wins; docs/notebooks.md):

1. `url=...` given: that URL (a tunnel, a proxy of your own).
2. Colab (`google.colab` importable): the URL Colab's own kernel-side helper makes for the port
   (`google.colab.kernel.proxyPort(port)` through `google.colab.output.eval_js`).
3. Jupyter Server with jupyter-server-proxy (JupyterLab, Notebook 7, JupyterHub): a running
   Jupyter Server of this user (listed in the Jupyter runtime folder) answers the
   app's `/health` through `{base_url}proxy/{port}/` → the frame loads that origin-relative path.
   On JupyterHub, when no server can be asked, `$JUPYTERHUB_SERVICE_PREFIX` + `proxy/{port}/`
   with `jupyter_server_proxy` importable.
4. A remote kernel (`SSH_CONNECTION`/`SSH_CLIENT` set, or a VS Code remote: `VSCODE_*` with
   `REMOTE_CONTAINERS`/`CODESPACES`): no frame (it would be blank), but the URL to forward and
   the one-line `ssh -L` command; `via="local"` shows the frame once it is forwarded.
5. Otherwise `http://localhost:PORT`.

`via=` forces one of "colab", "jupyter", "remote", "local".
"""

from __future__ import annotations

import contextlib
import getpass
import html
import importlib
import importlib.util
import json
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

Via = Literal["auto", "colab", "jupyter", "remote", "local"]
ALLOW = "camera; microphone; autoplay; display-capture; clipboard-write"
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Embedding:
    """Where the browser loads the studio from, and how that was decided."""

    kind: Literal["url", "colab", "jupyter", "remote", "local"]
    src: str
    """The frame's URL: absolute, or origin-relative (`/user/me/proxy/8000/`) for Jupyter."""
    why: str
    forward: str | None = None
    """For a remote kernel: the command that forwards the port to the viewer's machine."""


def embed(port: int, local_url: str | None = None, *, url: str | None = None,
          via: Via = "auto", env: Mapping[str, str] | None = None,
          servers: Iterable[Mapping[str, Any]] | None = None) -> Embedding:
    """Decide the frame's URL for the app on this machine's `port` (the rule in the module
    doc); `local_url` is its URL here (default http://localhost:PORT/). `env` and `servers`
    default to this process's environment and this user's running Jupyter Servers."""
    env = os.environ if env is None else env
    local = (local_url or f"http://localhost:{port}").rstrip("/") + "/"
    if url:
        return Embedding("url", url, "url= was given")
    if via in ("auto", "colab") and (via == "colab" or _colab_importable()):
        return Embedding("colab", colab_url(port), "google.colab is importable: Colab's proxy")
    if via in ("auto", "jupyter"):
        found = jupyter_proxy_path(port, env, servers)
        if found is not None:
            return Embedding("jupyter", found[0], found[1])
        if via == "jupyter":
            raise RuntimeError("no Jupyter Server with jupyter-server-proxy answered for port "
                               f"{port} (pip install jupyter-server-proxy, restart Jupyter)")
    if via == "remote" or (via == "auto" and is_remote(env)):
        return Embedding("remote", local, "the kernel runs on another machine (SSH/VS Code)",
                         ssh_forward(port, env))
    return Embedding("local", local, "browser and kernel on one machine")


def _colab_importable() -> bool:
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no `google` package at all
        return False


def colab_url(port: int) -> str:
    """Colab's public URL for a kernel port (its proxy runs on *.googleusercontent.com)."""
    try:
        output = importlib.import_module("google.colab.output")
    except ImportError as exc:
        raise RuntimeError("via='colab' needs Colab: google.colab is not importable") from exc
    url = output.eval_js(f"google.colab.kernel.proxyPort({int(port)})")
    if not isinstance(url, str) or not url.startswith("https://"):
        raise RuntimeError(f"Colab gave no URL for port {port}: {url!r}")
    return url


def running_jupyter_servers() -> list[dict[str, Any]]:
    """This user's running Jupyter Servers (and classic Notebook servers): the `jpserver-*.json`
    / `nbserver-*.json` files of the Jupyter runtime folder whose process is alive. (What
    `jupyter_server.serverapp.list_running_servers()` reads, without importing the server.)"""
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:
        return []
    folder = Path(jupyter_runtime_dir())
    servers = []
    for path in sorted(folder.glob("jpserver-*.json")) + sorted(folder.glob("nbserver-*.json")):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(path.read_text())
            if isinstance(info, dict) and _alive(int(info.get("pid", 0))):
                servers.append(info)
    return servers


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def jupyter_proxy_path(port: int, env: Mapping[str, str],
                       servers: Iterable[Mapping[str, Any]] | None = None,
                       ) -> tuple[str, str] | None:
    """(`{base_url}proxy/{port}/`, why) when a Jupyter Server proxies `port` to this app."""
    for server in running_jupyter_servers() if servers is None else servers:
        base = "/" + str(server.get("base_url") or "/").strip("/") + "/"
        base = "/" if base == "//" else base
        root = str(server.get("url") or "").rstrip("/") + "/"
        if not root.startswith("http"):
            continue
        token = str(server.get("token") or "") or env.get("JUPYTERHUB_API_TOKEN", "")
        probe = f"{root}proxy/{port}/health"
        headers = {"Authorization": f"token {token}"} if token else {}
        with contextlib.suppress(httpx.HTTPError, ValueError):
            answer = httpx.get(probe, headers=headers, timeout=PROBE_TIMEOUT_S)
            if answer.status_code == 200 and "server_start_time" in answer.json():
                return (f"{base}proxy/{port}/",
                        f"the Jupyter Server at {root} proxies port {port} (jupyter-server-proxy)")
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "")
    if prefix.startswith("/") and importlib.util.find_spec("jupyter_server_proxy") is not None:
        return (prefix.rstrip("/") + f"/proxy/{port}/",
                "JUPYTERHUB_SERVICE_PREFIX is set and jupyter_server_proxy is installed")
    return None


def is_remote(env: Mapping[str, str]) -> bool:
    """The kernel was reached over SSH, or runs in a VS Code remote (container, Codespace)."""
    if env.get("SSH_CONNECTION") or env.get("SSH_CLIENT"):
        return True
    vscode = any(name.startswith("VSCODE_") for name in env)
    return vscode and bool(env.get("REMOTE_CONTAINERS") or env.get("CODESPACES"))


def ssh_forward(port: int, env: Mapping[str, str]) -> str:
    """`ssh -L PORT:localhost:PORT user@host`, the host and port from SSH_CONNECTION when known
    (client_ip client_port server_ip server_port)."""
    parts = (env.get("SSH_CONNECTION") or "").split()
    host = parts[2] if len(parts) == 4 else socket.getfqdn()
    ssh_port = f" -p {parts[3]}" if len(parts) == 4 and parts[3] != "22" else ""
    try:
        user = env.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        user = ""
    target = f"{user}@{host}" if user else host
    return f"ssh -N -L {port}:localhost:{port}{ssh_port} {target}"


class StudioFrame:
    """What a notebook cell shows: the frame, or for a remote kernel how to forward the port."""

    def __init__(self, embedding: Embedding, width: str | int = "100%",
                 height: int = 860, *, turn: bool = True) -> None:
        self.embedding = embedding
        self.width, self.height = width, height
        self.turn = turn
        """Whether the server hands out TURN (or other ICE) servers: without, a browser on
        another network may load the page but get no video."""

    def _turn_hint(self) -> str:
        kind = self.embedding.kind
        if self.turn or kind in ("local", "remote"):  # remote: the notice says it
            return ""
        strong = kind == "colab"  # Colab VMs are behind NAT: never without TURN
        text = ("Colab needs a TURN server for the video: " if strong else
                "If the video does not connect from a browser on another network: ")
        text += ("set HF_TOKEN (or TURN_URLS, TURN_USERNAME, TURN_CREDENTIAL) in the "
                 "environment, then restart the server (server.stop(); serve_in_background"
                 "(...)).")
        colour = "#b45309" if strong else "#64748b"
        style = f"color:{colour};font:13px system-ui,sans-serif;margin:4px 0"
        return f'<div style="{style}">{text}</div>'

    @property
    def src(self) -> str:
        return self.embedding.src

    def _repr_html_(self) -> str:
        e = self.embedding
        width = self.width if isinstance(self.width, str) else f"{self.width}px"
        frame = (f'<iframe src="{html.escape(e.src)}" width="{html.escape(str(width))}" '
                 f'height="{int(self.height)}" frameborder="0" allow="{ALLOW}" '
                 f'allowfullscreen></iframe>')
        if e.kind != "remote":
            return self._turn_hint() + frame
        port = e.src.rstrip("/").rsplit(":", 1)[-1]
        link = html.escape(e.src)
        # No frame: it would stay blank until the port is forwarded.
        return (
            '<div style="border:1px solid #f59e0b;border-radius:8px;padding:10px 14px;'
            'font:14px/1.5 system-ui,sans-serif">'
            f"<b>This kernel runs on another machine</b>: <code>{link}</code> is its "
            f"localhost, not your browser's. Forward port {port} to your machine:<br>"
            f"<code>{html.escape(e.forward or '')}</code><br>"
            f'then open <a href="{link}" target="_blank">{link}</a>, or show the studio here '
            "with <code>server.iframe(via=\"local\")</code>. VS Code: its Ports view forwards "
            "the port (it often does so by itself); if it picks another local port, open that "
            "one. Video needs UDP to this machine, or a TURN server (HF_TOKEN or TURN_URLS)."
            "</div>")

    def __repr__(self) -> str:
        e = self.embedding
        text = f"LiveV2V studio: {e.src} ({e.why})"
        if e.forward:
            text += f"\nForward the port first: {e.forward}"
        return text
