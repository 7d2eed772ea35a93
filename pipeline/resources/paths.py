"""Which local folders `load_params` may name.

A server bound to a public address (a Space, say) must not let visitors probe its disk through
`model_id: "/etc"`. Local folders are therefore accepted only on a loopback-bound server, or
inside a configured models folder; anywhere else only hub ids are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ForbiddenPathError(PermissionError):
    """`load_params` named a local folder this server does not serve."""


def looks_local(ref: str) -> bool:
    """True for a filesystem path, False for a hub id (`owner/name` or `name`)."""
    return (ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") > 1
            or Path(ref).expanduser().exists())


@dataclass(frozen=True)
class LocalPathPolicy:
    allow_any: bool = True
    """Any folder (the server is only reachable from this machine)."""
    models_dir: Path | None = None
    """Folders inside this one are allowed, whatever the binding."""

    def check(self, ref: str) -> None:
        if not looks_local(ref):
            return
        if self.models_dir is not None:
            root = self.models_dir.expanduser().resolve()
            target = Path(ref).expanduser().resolve()  # symlinks and .. cannot escape
            if target == root or root in target.parents:
                return
            raise ForbiddenPathError(f"{ref!r} is outside this server's models folder; use a "
                                     "folder inside it or a Hugging Face hub id.")
        if not self.allow_any:
            raise ForbiddenPathError(
                "Local model folders are disabled on this server (it is reachable from the "
                "network); use a Hugging Face hub id, or start it with --models-dir.")
