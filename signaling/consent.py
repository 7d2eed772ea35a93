"""ICE consent checks that end with their connection (an aioice 0.10 race, worked around).

A peer connection closed while ICE is completing (a WHIP client that stops right after its
POST, a DELETE racing the handshake) can leave a consent-freshness task behind forever:
`Connection.connect()` has already taken "completed" from its check list when `close()` runs,
so it starts `query_consent()` *after* the close; that loop finds no nominated pair, so it
never counts a failure and never ends (a task per such session, seen in tests/test_churn.py).
A consent loop that starts on a closing connection now returns at once.
"""

from __future__ import annotations

from typing import Any

import aioice.ice

_original = aioice.ice.Connection.query_consent


async def _query_consent_unless_closing(self: aioice.ice.Connection) -> Any:
    if self._closing:
        return None
    return await _original(self)


def end_consent_checks_on_close() -> None:
    aioice.ice.Connection.query_consent = _query_consent_unless_closing  # type: ignore[method-assign]
