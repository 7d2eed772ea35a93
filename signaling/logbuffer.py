"""The server's recent log lines for `/logs/tail` and `/logs/current`: a bounded ring buffer
fed by a logging handler, with secrets replaced before a line is stored."""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from collections.abc import Iterable

MAX_LINES = 2000
MAX_LINE_CHARS = 8000
# Scope's app reads the level from " - LEVEL - " (frontend/src/hooks/useLogStream.ts).
LINE_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TWILIO_AUTH_TOKEN", "TURN_CREDENTIAL",
              "LIVEV2V_API_KEY")
_PATTERNS = [
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), "hf_***"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
    (re.compile(r"(?i)\b(x-api-key|api[_-]?key|token|credential|password|secret)"
                r"(['\"]?\s*[:=]\s*['\"]?)[^\s'\"&,;]+"), r"\1\2***"),
]


class LogBuffer(logging.Handler):
    """Keeps the last MAX_LINES formatted records. Offsets count lines since the server
    started, so a poller asks for what came after the last offset it saw."""

    def __init__(self, secrets: Iterable[str | None] = (), max_lines: int = MAX_LINES) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(LINE_FORMAT))
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._next = 0  # offset of the next line
        env = (os.environ.get(name) for name in SECRET_ENV)
        self._secrets = sorted({s for s in (*secrets, *env) if s and len(s) >= 4},
                               key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.redact(self.format(record))[:MAX_LINE_CHARS]
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)
            return
        self._lines.append(line)  # handle() holds self.lock
        self._next += 1

    def tail(self, lines: int, since_offset: int = 0) -> tuple[list[str], int]:
        """Up to `lines` of the newest lines at or after `since_offset`, and the offset to ask
        from next time. An offset from before a restart (beyond the end) starts over."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            first = self._next - len(self._lines)  # offset of the oldest line kept
            if since_offset > self._next:
                since_offset = 0
            newer = list(self._lines)[max(since_offset - first, 0):]
            return newer[-lines:] if lines else [], self._next

    def text(self) -> str:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            return "\n".join(self._lines) + ("\n" if self._lines else "")

    def install(self) -> None:
        logging.getLogger().addHandler(self)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self)

