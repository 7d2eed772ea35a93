"""LoRAs as Scope's API has them: load-time entries, live scales, and the folder they live in.

- `load_params.loras: [{path, scale, merge_mode?}]` and `lora_merge_mode` (`LoraParams`):
  `permanent` (Scope's `permanent_merge`): fused into the weights at load, full speed, fixed
  scale; `runtime_peft`: kept as PEFT adapters whose scale changes live (`lora_scales`), at the
  cost of the extra low-rank matmuls per layer.
- `path`: a file in the LoRA folder (`--lora-dir`), given as its name (`style`,
  `style.safetensors`), a path relative to the folder, or an absolute path. Paths outside the
  folder obey the server's local-path policy. The service resolves every entry to its absolute
  path before loading (`LoraFolder.resolve_params`) and checks the file is a complete
  safetensors file holding LoRA weights, so a bad file is refused before anything is unloaded.
- Files: `.safetensors`, and PyTorch's zip format (`.pt`, `.pth`, `.bin`: training checkpoints
  such as LongLive's lora.pt). The latter are pickles, so they are only ever read with
  `torch.load(weights_only=True)` (tensors and plain containers; no code runs), and checked here
  without unpickling: a whole zip whose pickle names LoRA weights. Legacy (pre-zip) pickles and
  `.ckpt` files are refused.

Nothing here imports torch: the signaling side validates `lora_scales` with it.
"""

from __future__ import annotations

import json
import os
import pickletools
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .paths import ForbiddenPathError, LocalPathPolicy

LORA_EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin")
TORCH_EXTENSIONS = (".pt", ".pth", ".bin")
MAX_LORAS = 8
MAX_SCALE = 10.0
MergeMode = Literal["permanent", "runtime_peft"]
_MODE_ALIASES = {"permanent_merge": "permanent", "merge": "permanent", "fused": "permanent",
                 "runtime": "runtime_peft", "peft": "runtime_peft"}


class LoraError(ValueError):
    """A LoRA file or scale that cannot be used; the text says what to do."""


def _merge_mode(value: Any) -> Any:
    return _MODE_ALIASES.get(value, value) if isinstance(value, str) else value


class LoraEntry(BaseModel):
    """One `load_params.loras` item."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    path: str = Field(min_length=1, max_length=1000,
                      description="A file in the LoRA folder (name or relative path) or an "
                                  "absolute path to a LoRA (.safetensors, or a .pt/.pth/.bin "
                                  "PyTorch file).")
    scale: float = Field(default=1.0, ge=-MAX_SCALE, le=MAX_SCALE, allow_inf_nan=False,
                         description="Strength; 0 disables it, 1 is full strength.")
    merge_mode: MergeMode | None = Field(
        default=None, description="This LoRA's merge mode; unset = the pipeline's "
                                  "lora_merge_mode. Scope's 'permanent_merge' is accepted.")

    _mode = field_validator("merge_mode", mode="before")(_merge_mode)

    @field_validator("path", mode="before")
    @classmethod
    def _chosen(cls, value: Any) -> Any:
        # Scope's app sends a LoRA row whose file was never picked as path "": say so, in place
        # of pydantic's "String should have at least 1 character" (shown raw in its toast).
        if isinstance(value, str) and not value.strip():
            raise ValueError("no LoRA file chosen: pick one in the list or remove this entry")
        return value


class LoraScale(BaseModel):
    """One `lora_scales` item of a parameters message."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    path: str = Field(min_length=1, max_length=1000)
    scale: float = Field(ge=-MAX_SCALE, le=MAX_SCALE, allow_inf_nan=False)

    @field_validator("scale", mode="before")
    @classmethod
    def _int_is_fine(cls, value: Any) -> Any:
        # JSON has one number type: a slider at 1 sends `1`.
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def parse_scales(raw: Any) -> list[LoraScale]:
    """`lora_scales` as clients send it: Scope's `[{path, scale}]`, or `{path: scale}`. Raises
    LoraError."""
    if isinstance(raw, dict):
        raw = [{"path": path, "scale": scale} for path, scale in raw.items()]
    if not isinstance(raw, list):
        raise LoraError("lora_scales must be a list of {path, scale}")
    if len(raw) > MAX_LORAS:
        raise LoraError(f"lora_scales has {len(raw)} entries; at most {MAX_LORAS} LoRAs load")
    try:
        return [LoraScale.model_validate(item) for item in raw]
    except ValueError as exc:
        raise LoraError(f"lora_scales: {_first_error(exc)}") from None


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc)
    err = errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


class LoraParams(BaseModel):
    """The LoRA fields of a pipeline's `load_params` (mixed into its Params class)."""

    loras: list[LoraEntry] = Field(default_factory=list, max_length=MAX_LORAS,
                                   description="LoRA adapters to load (Scope's shape).")
    lora_merge_mode: MergeMode = Field(
        default="permanent",
        description="permanent: fused into the weights (full speed, fixed scale); runtime_peft: "
                    "live lora_scales at some cost per frame.")

    _mode = field_validator("lora_merge_mode", mode="before")(_merge_mode)

    @field_validator("loras", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("loras")
    @classmethod
    def _distinct(cls, loras: list[LoraEntry]) -> list[LoraEntry]:
        paths = [entry.path for entry in loras]
        if len(set(paths)) != len(paths):
            raise ValueError("the same LoRA is listed twice")
        return loras

    def lora_specs(self) -> list[LoraSpec]:
        """Every entry with its merge mode decided."""
        return [LoraSpec(entry.path, entry.scale, entry.merge_mode or self.lora_merge_mode)
                for entry in self.loras]


@dataclass(frozen=True)
class LoraSpec:
    path: str
    scale: float
    merge_mode: MergeMode

    @property
    def runtime(self) -> bool:
        return self.merge_mode == "runtime_peft"


def loaded_adapters(params: Any) -> list[dict[str, Any]]:
    """Scope's status `loaded_lora_adapters`: [{path, scale, merge_mode}] (empty without LoRAs)."""
    if not isinstance(params, LoraParams):
        return []
    return [{"path": s.path, "scale": s.scale, "merge_mode": s.merge_mode}
            for s in params.lora_specs()]


def same_lora(a: str, b: str) -> bool:
    """Whether two references name the same LoRA: equal paths, or equal file names / stems
    (Scope's app sends back the path the status showed; people type names)."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.name == pb.name or _stem(pa) == _stem(pb)


def _stem(path: Path) -> str:
    return path.stem if path.suffix.lower() in LORA_EXTENSIONS else path.name


def scale_overrides(params: Any, raw: Any, *, strict: bool = True) -> dict[str, float]:
    """Validate a session's `lora_scales` against the loaded LoRAs: {loaded path: scale}.
    Raises LoraError for an unknown LoRA, or a new scale for a permanent (fused) one; a
    permanent one at its loaded scale is accepted (Scope's app sends every loaded LoRA).
    `strict=False` skips what does not apply instead (the pipeline, per frame)."""
    try:
        scales = parse_scales(raw)
    except LoraError:
        if strict:
            raise
        return {}
    specs = params.lora_specs() if isinstance(params, LoraParams) else []
    if scales and not specs and strict:
        raise LoraError("No LoRAs are loaded: lora_scales has nothing to change. Load the "
                        "pipeline with load_params.loras first.")
    out: dict[str, float] = {}
    for item in scales:
        spec = next((s for s in specs if same_lora(s.path, item.path)), None)
        if not strict and (spec is None or not spec.runtime):
            continue
        if spec is None:
            names = ", ".join(Path(s.path).name for s in specs)
            raise LoraError(f"LoRA {item.path!r} is not loaded (loaded: {names}).")
        if not spec.runtime:
            if abs(item.scale - spec.scale) > 1e-6:
                raise LoraError(
                    f"LoRA {Path(spec.path).name!r} is fused into the weights (merge mode "
                    "permanent): its scale cannot change live. Reload the pipeline with "
                    "lora_merge_mode 'runtime_peft' (or this LoRA's merge_mode) to change it "
                    "while streaming, or with the new scale.")
            continue
        out[spec.path] = item.scale
    return out


# --- files -----------------------------------------------------------------------------------

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The header of a safetensors file, checked to be whole: every tensor's bytes lie inside
    the file and the data section is exactly as long as the header says (a cut-off download
    fails here). Raises LoraError."""
    name = path.name
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise LoraError(f"{name} is not a safetensors file (only {size} bytes).")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise LoraError(f"{name} is not a complete safetensors file (header of {length}"
                                f" bytes in a {size}-byte file): download it again.")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise LoraError(f"{name} cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoraError(f"{name} is not a safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise LoraError(f"{name} is not a safetensors file (bad header).")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets) or offsets[0] > offsets[1]):
            raise LoraError(f"{name} is not a valid safetensors file (tensor {key!r}).")
        end = max(end, offsets[1])
    if 8 + length + end != size:
        raise LoraError(f"{name} is truncated or padded: its tensors need {8 + length + end} "
                        f"bytes, the file has {size}. Download it again.")
    return header


def read_torch_keys(path: Path) -> list[str]:
    """The strings a PyTorch zip-format file's pickle holds (its keys among them), read with
    `pickletools` (nothing is unpickled). A cut-off download has no zip directory and fails
    here. Raises LoraError."""
    name = path.name
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
            if len(pickles) != 1:
                raise LoraError(f"{name} is not a PyTorch file (no data.pkl in it).")
            info = archive.getinfo(pickles[0])
            if info.file_size > MAX_HEADER_BYTES:
                raise LoraError(f"{name}: its pickle is {info.file_size} bytes, too big.")
            data = archive.read(info)
    except zipfile.BadZipFile:
        raise LoraError(f"{name} is not a complete PyTorch zip file (truncated, or a legacy "
                        "pre-1.6 pickle): download it again, or convert it to safetensors."
                        ) from None
    except OSError as exc:
        raise LoraError(f"{name} cannot be read: {exc.strerror or exc}") from None
    try:
        return [arg for _op, arg, _pos in pickletools.genops(data) if isinstance(arg, str)]
    except (ValueError, EOFError) as exc:
        raise LoraError(f"{name}: its pickle is damaged ({exc}).") from None


def check_lora_file(path: Path) -> int:
    """Raise LoraError unless `path` is a whole safetensors or PyTorch file of LoRA weights;
    the number of tensors (of strings in a PyTorch file's pickle)."""
    if path.suffix.lower() in TORCH_EXTENSIONS:
        strings = read_torch_keys(path)
        if not any(_is_lora_key(s) for s in strings):
            raise LoraError(f"{path.name} holds no LoRA weights (no lora_A/lora_B, lora_down/"
                            "lora_up keys): it looks like a full model, not a LoRA.")
        return len(strings)
    header = read_safetensors_header(path)
    keys = [k for k in header if k != "__metadata__"]
    if not keys:
        raise LoraError(f"{path.name} holds no tensors.")
    if not any(_is_lora_key(k) for k in keys):
        raise LoraError(f"{path.name} holds no LoRA weights (no lora_A/lora_B, lora_down/"
                        f"lora_up keys; e.g. {keys[0]!r}): it looks like a full model, not a "
                        "LoRA.")
    return len(keys)


def _is_lora_key(key: str) -> bool:
    k = key.lower()
    return any(part in k for part in ("lora_a", "lora_b", "lora_down", "lora_up", "lora.down",
                                      "lora.up", "lora_linear_layer", ".lora."))


class LoraFileInfo(BaseModel):
    """One file of `GET /loras` (Scope's fields)."""

    name: str
    path: str
    size_mb: float
    folder: str | None = None
    read_only: bool = False


class LoraFolder:
    """The LoRA folder: listing, resolving references, deleting. Everything stays inside it
    (symlinks and `..` included) unless the path policy allows a file elsewhere."""

    def __init__(self, root: Path | None, policy: LocalPathPolicy | None = None) -> None:
        """`root` None: no folder (only absolute paths the policy allows)."""
        self.root = None if root is None else Path(root).expanduser()
        self.policy = policy or LocalPathPolicy()

    def _root(self) -> Path | None:
        return None if self.root is None else self.root.resolve()

    def inside(self, path: Path) -> bool:
        root = self._root()
        return root is not None and root in path.resolve().parents

    def list(self) -> list[LoraFileInfo]:
        root = self._root()
        if root is None or not root.is_dir():
            return []
        files = []
        for dirpath, _dirs, names in os.walk(root):  # no followlinks: stays inside
            for name in names:
                path = Path(dirpath) / name
                if path.suffix.lower() not in LORA_EXTENSIONS or name.startswith("."):
                    continue
                if not self.inside(path) or not path.is_file():
                    continue
                folder = path.parent.relative_to(root).as_posix()
                files.append(LoraFileInfo(
                    name=path.stem, path=str(path), size_mb=round(path.stat().st_size / 2**20, 2),
                    folder=None if folder == "." else folder))
        return sorted(files, key=lambda f: (f.folder or "", f.name))

    def resolve(self, ref: str) -> Path:
        """The file a `loras[].path` names. Raises LoraError (not found, not a LoRA file) or
        ForbiddenPathError (outside the folder where the policy forbids it)."""
        if "\x00" in ref:
            raise LoraError("A LoRA path cannot contain NUL characters.")
        given = Path(ref).expanduser()
        root = self._root()
        if root is None and not given.is_absolute():
            raise LoraError(f"LoRA {ref!r}: this server has no LoRA folder; give an absolute "
                            "path.")
        candidates = [given] if given.is_absolute() or root is None else [root / given]
        if not given.suffix:
            candidates += [c.with_name(c.name + ext) for c in list(candidates)
                           for ext in LORA_EXTENSIONS]
        if not given.is_absolute() and len(given.parts) == 1:  # a bare name: any sub-folder
            found = [Path(f.path) for f in self.list()]
            candidates += [f for f in found if _stem(f) == _stem(given)]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise LoraError(f"LoRA {ref!r} was not found in the LoRA folder ({self.root}); "
                            "GET /api/v1/loras lists what is there, POST /api/v1/loras "
                            "installs one.")
        path = path.resolve()
        if not self.inside(path):
            self.policy.check(str(path))
            if self.policy.models_dir is None and not self.policy.allow_any:
                raise ForbiddenPathError(f"{ref!r} is outside this server's LoRA folder.")
        if path.suffix.lower() not in LORA_EXTENSIONS:
            raise LoraError(f"{path.name}: LoRAs load from .safetensors, .pt, .pth or .bin "
                            "files (a .ckpt is a full checkpoint, not a LoRA).")
        return path

    def resolve_params(self, params: LoraParams) -> LoraParams:
        """`params` with every LoRA path resolved and its file checked. Raises LoraError or
        ForbiddenPathError."""
        if not params.loras:
            return params
        entries = []
        for entry in params.loras:
            path = self.resolve(entry.path)
            check_lora_file(path)
            entries.append(entry.model_copy(update={"path": str(path)}))
        if len({e.path for e in entries}) != len(entries):
            raise LoraError("The same LoRA file is listed twice.")
        return params.model_copy(update={"loras": entries})

    def find(self, name: str) -> Path | None:
        """A file of the folder by name (with or without extension) or relative path."""
        try:
            path = self.resolve(name)
        except (LoraError, ForbiddenPathError):
            return None
        return path if self.inside(path) else None

    def delete(self, name: str) -> Path:
        path = self.find(name)
        if path is None:
            raise LoraError(f"LoRA {name!r} is not in the LoRA folder.")
        path.unlink()
        return path


def runtime_scale_key(specs: Sequence[LoraSpec], overrides: dict[str, float]) -> tuple[float, ...]:
    """The scales of the runtime adapters for one request, in load order."""
    return tuple(overrides.get(s.path, s.scale) for s in specs if s.runtime)
