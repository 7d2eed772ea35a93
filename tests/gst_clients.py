"""Third-party WHIP/WHEP clients run as subprocesses: GStreamer's webrtcbin through
examples/gst_whip.py on Debian's system python (python3-gi), and Debian's simple-whip-client.
Each prints JSON lines (events, frames) that a reader thread collects."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
GST_SCRIPT = ROOT / "examples" / "gst_whip.py"
GST_CHECK = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0');"
             "from gi.repository import Gst; Gst.init(None);"
             "assert all(Gst.ElementFactory.find(n) for n in ('webrtcbin', 'nicesrc', 'vp8enc',"
             "'x264enc', 'opusenc', 'vp8dec', 'appsink'))")


def require_gstreamer() -> None:
    """Fail (not skip) without the Debian packages: scripts/test.sh installs them."""
    check = subprocess.run([SYSTEM_PYTHON, "-c", GST_CHECK], capture_output=True, text=True,
                           check=False)
    if check.returncode != 0:
        pytest.fail("GStreamer webrtcbin for the system python is missing: run scripts/test.sh "
                    f"(it installs python3-gi and the gstreamer1.0 plugins)\n{check.stderr}")


class ClientProcess:
    """A client subprocess whose stdout JSON lines are collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(list(args), cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    self.events.put(json.loads(line))

    def wait_event(self, predicate, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such event; output:\n{self.output()}")
            try:
                event = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.events.empty():
                    self._reader.join(2)
                    if self.events.empty():
                        raise AssertionError(f"client exited ({self.proc.returncode}):\n"
                                             f"{self.output()}") from None
                continue
            if predicate(event):
                return event

    def output(self) -> str:
        return "\n".join(self.lines[-40:])

    def stop(self, timeout_s: float = 20.0) -> int:
        """Ctrl+C (the client DELETEs its resource), then wait; kill if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


def gst_send(url: str, *args: str) -> ClientProcess:
    return ClientProcess(SYSTEM_PYTHON, str(GST_SCRIPT), "send", url, *args)


def gst_play(url: str, *args: str) -> ClientProcess:
    return ClientProcess(SYSTEM_PYTHON, str(GST_SCRIPT), "play", url, *args)
