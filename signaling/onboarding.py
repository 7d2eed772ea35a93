"""Scope's first-run state (`/onboarding/status`), kept in a small JSON file per user."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

FILE_NAME = "onboarding.json"


class OnboardingStatus(BaseModel):
    """What Scope's app reads and writes (frontend/src/lib/onboardingStorage.ts)."""

    model_config = ConfigDict(extra="ignore")

    completed: bool = False
    inference_mode: Literal["local", "cloud"] | None = None
    onboarding_style: Literal["teaching", "simple"] | None = None
    referral_source: str | None = Field(default=None, max_length=200)
    use_case: str | None = Field(default=None, max_length=200)


class OnboardingUpdate(OnboardingStatus):
    """A PUT: only the keys sent change (Scope's app sends one or two at a time)."""

    model_config = ConfigDict(extra="ignore", strict=True)


class OnboardingStore:
    """One JSON file in the data folder; missing or unreadable means "not completed"."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self._lock = threading.Lock()

    def read(self) -> OnboardingStatus:
        try:
            return OnboardingStatus.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return OnboardingStatus()
        except (OSError, ValidationError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return OnboardingStatus()

    def update(self, update: OnboardingUpdate) -> OnboardingStatus:
        """Merge the keys sent and write the file atomically. Raises OSError."""
        with self._lock:
            merged = self.read().model_copy(update=update.model_dump(exclude_unset=True))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(merged.model_dump(), indent=1))
            os.replace(tmp, self.path)
            return merged
