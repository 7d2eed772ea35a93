"""Reference images uploaded by clients (Scope's "assets"): one flat, confined folder.

Every upload is decoded with Pillow before it is kept (the content decides the type, never the
name), stored under a sanitised name with the extension of its real format, and bounded in
size, pixel count and folder total. Lookups accept only names this store could have written,
directly inside its folder, so no path (`..`, absolute, symlink, encoded) reaches anything else.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

AssetType = Literal["image", "video", "audio"]

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp",
               ".bmp": "image/bmp"}
MAX_NAME_CHARS = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class AssetError(ValueError):
    """An upload that is refused; the text says why."""


class AssetTooLargeError(AssetError):
    """The upload, or the folder after it, would pass a size limit."""


class AssetInfo(BaseModel):
    """Scope's `AssetFileInfo`."""

    name: str
    path: str
    size_mb: float
    folder: str | None = None
    type: AssetType
    created_at: float


def safe_stem(filename: str) -> str:
    """The upload's base name without its extension, reduced to [A-Za-z0-9._-]."""
    base = re.split(r"[/\\]", filename)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    stem = _UNSAFE.sub("_", stem).strip("._-")[:MAX_NAME_CHARS - 10]
    return stem or "image"


@dataclass
class AssetStore:
    root: Path
    max_bytes: int = 20 * 1024 * 1024
    """Largest upload."""
    max_total_bytes: int = 1024 * 1024 * 1024
    """The whole folder."""
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def _folder(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root.resolve()

    def list(self, kind: AssetType | None = None) -> list[AssetInfo]:
        """Newest first. Only images are stored here: video/audio lists are empty."""
        if kind not in (None, "image") or not self.root.is_dir():
            return []
        folder = self._folder()
        found = [self._info(p) for p in folder.iterdir() if self._is_asset(p)]
        return sorted(found, key=lambda a: (-a.created_at, a.name))

    def save(self, filename: str, data: bytes) -> AssetInfo:
        """Check `data` is an image (by decoding it) and store it. Raises AssetError."""
        if len(data) > self.max_bytes:
            raise AssetTooLargeError(f"The image is {len(data)} bytes; the limit is "
                                     f"{self.max_bytes} bytes.")
        extension = self._check_image(data)
        stem = safe_stem(filename)
        folder = self._folder()
        with self._lock:
            for existing in folder.iterdir():  # the same image again: nothing new to keep
                if (self._is_asset(existing) and existing.stat().st_size == len(data)
                        and existing.read_bytes() == data):
                    return self._info(existing)
            used = sum(p.stat().st_size for p in folder.iterdir() if self._is_asset(p))
            if used + len(data) > self.max_total_bytes:
                raise AssetTooLargeError(
                    f"The asset folder is full ({used} of {self.max_total_bytes} bytes); "
                    "delete some images from it first.")
            fd, temp = tempfile.mkstemp(dir=folder, prefix=".upload-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                target = self._free_name(folder, stem, extension)
                os.replace(temp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        return self._info(target)

    def find(self, ref: str) -> Path | None:
        """The stored file `ref` names (its name, or the `path` we returned), else None."""
        folder = self._folder()
        name = ref.replace("\\", "/").rsplit("/", 1)[-1]
        if "/" in ref.replace("\\", "/") and str(Path(ref).parent) != str(folder):
            return None  # a path, but not into this folder
        candidate = folder / name
        if name != name.strip() or not self._is_asset(candidate):
            return None
        return candidate

    def media_type(self, path: Path) -> str:
        return MEDIA_TYPES[path.suffix]

    # --- helpers --------------------------------------------------------------------------------

    def _check_image(self, data: bytes) -> str:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format
                if kind not in FORMATS:
                    raise AssetError(f"{kind} images are not accepted; upload PNG, JPEG, WebP "
                                     "or BMP.")
                width, height = image.size
                if width * height > self.max_pixels:
                    raise AssetTooLargeError(f"The image is {width}×{height}; the limit is "
                                             f"{self.max_pixels} pixels.")
                image.load()  # decode it all: a truncated or corrupt file fails here
        except AssetError:
            raise
        except Image.DecompressionBombError:
            raise AssetTooLargeError(f"The image has too many pixels; the limit is "
                                     f"{self.max_pixels} pixels.") from None
        except UnidentifiedImageError as exc:
            raise AssetError("The upload is not an image Pillow can read (PNG, JPEG, WebP or "
                             f"BMP): {exc}") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise AssetError(f"The image is damaged or truncated: {exc}") from None
        return FORMATS[kind]

    @staticmethod
    def _is_asset(path: Path) -> bool:
        name = path.name
        return (path.suffix in MEDIA_TYPES and not name.startswith(".")
                and _UNSAFE.search(name) is None and len(name) <= MAX_NAME_CHARS
                and path.is_file() and not path.is_symlink())

    @staticmethod
    def _free_name(folder: Path, stem: str, extension: str) -> Path:
        for n in range(1, 10_000):
            target = folder / (f"{stem}{extension}" if n == 1 else f"{stem}-{n}{extension}")
            if not target.exists():
                return target
        raise AssetError(f"Too many images named {stem!r}; rename the upload.")

    @staticmethod
    def _info(path: Path) -> AssetInfo:
        stat = path.stat()
        return AssetInfo(name=path.stem, path=str(path), size_mb=round(stat.st_size / 2**20, 2),
                         folder=None, type="image", created_at=stat.st_mtime)
