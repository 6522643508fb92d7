"""`steppe ui`: the web UI on this machine: the embedded servers when none are configured, `steppe api`,
and a browser tab on /ui."""

from __future__ import annotations

import threading
import time

import typer

from orchestrator.cli.common import console, load_settings, report_errors


def _open_when_up(url: str, health: str, *, timeout: float = 30.0) -> None:
    """Open `url` in the default browser ($BROWSER is honoured) once `health` answers."""
    import webbrowser

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(health, timeout=1).status_code == 200:
                webbrowser.open(url)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


@report_errors
def ui(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on"),
    port: int = typer.Option(8080, "--port", "-p", help="TCP port"),
    browser: bool = typer.Option(True, "--browser/--no-browser", help="Open a browser tab on the UI"),
) -> None:
    """Serve the web UI: embedded Redis and PostgreSQL (`steppe dev up`) unless URLs are set, then the
    HTTP API with its UI at /ui; Ctrl-C stops the API (the servers keep running)."""
    from orchestrator.api import ApiSettings
    from orchestrator.cli.api_cmd import api
    from orchestrator.cli.processes import _ensure_servers

    settings = load_settings()
    _ensure_servers(settings)
    url = f"http://{host}:{port}/ui" + ("/login" if ApiSettings().token is not None else "/runs")
    console.print(f"Steppe UI on {url}", highlight=False)
    if browser:
        health = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/healthz"  # noqa: S104
        threading.Thread(target=_open_when_up, args=(url, health), daemon=True, name="open-browser").start()
    api(host=host, port=port, workers=1, access_log=False)


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)
