"""Assets (reference images): Scope's shapes, content checked by decoding, safe names, one
confined folder that no path escapes, size limits, and the API key rule on every new route."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest
from PIL import Image

from pipeline.resources.assets import AssetStore, AssetTooLargeError
from tests.conftest import Server, serve_in_thread


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (32, 24),
                color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header claims width×height (a decompression bomb's header)."""
    data = bytearray(image_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("assets-root") / "assets"


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[Server]:
    with serve_in_thread(pipeline=None, assets_dir=folder,
                         asset_max_bytes=64 * 1024) as srv:
        yield srv


def upload(server: Server, filename: str, data: bytes, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/assets", params={"filename": filename},
                      content=data, headers={"content-type": "application/octet-stream"},
                      timeout=30, **kw)


def test_upload_list_and_fetch_in_scopes_shape(server: Server, folder: Path) -> None:
    png = image_bytes(color=(10, 200, 10))
    r = upload(server, "green field.png", png)
    assert r.status_code == 200, r.text
    info = r.json()
    assert set(info) == {"name", "path", "size_mb", "folder", "type", "created_at"}
    assert info["name"] == "green_field" and info["type"] == "image" and info["folder"] is None
    assert Path(info["path"]) == folder.resolve() / "green_field.png"
    assert Path(info["path"]).read_bytes() == png and info["size_mb"] == 0.0

    listed = httpx.get(f"{server.url}/api/v1/assets", timeout=10).json()["assets"]
    assert info in listed
    assert info in httpx.get(f"{server.url}/api/v1/assets?type=image", timeout=10).json()["assets"]
    for kind in ("video", "audio"):
        assert httpx.get(f"{server.url}/api/v1/assets?type={kind}",
                         timeout=10).json() == {"assets": []}
    assert httpx.get(f"{server.url}/api/v1/assets?type=bogus", timeout=10).status_code == 422

    # By name, or by the path Scope stores (as is, or encodeURIComponent'd as Scope's app does).
    for ref in ("green_field.png", info["path"], quote(info["path"], safe="")):
        got = httpx.get(f"{server.url}/api/v1/assets/{ref}", timeout=10)
        assert got.status_code == 200 and got.content == png, ref
        assert got.headers["content-type"] == "image/png"
        assert got.headers["x-content-type-options"] == "nosniff"

    again = upload(server, "other-name.png", png)  # the same image is kept once
    assert again.status_code == 200 and again.json()["path"] == info["path"]
    other = upload(server, "green field.png", image_bytes(color=(1, 2, 3)))
    assert other.json()["name"] == "green_field-2"  # never overwrites another image


def test_the_content_decides_the_type(server: Server) -> None:
    jpeg = upload(server, "photo.png", image_bytes("JPEG"))  # the name lies: stored as JPEG
    assert jpeg.status_code == 200 and jpeg.json()["path"].endswith("/photo.jpg")
    got = httpx.get(f"{server.url}/api/v1/assets/photo.jpg", timeout=10)
    assert got.headers["content-type"] == "image/jpeg"
    assert upload(server, "x.webp", image_bytes("WEBP")).json()["path"].endswith("/x.webp")
    assert upload(server, "x.bmp", image_bytes("BMP", (8, 8))).json()["path"].endswith("/x.bmp")

    png = image_bytes()
    for name, data, why in [
        ("evil.png", b"<svg onload=alert(1)></svg>", "not an image"),
        ("page.html", b"<html><script>alert(1)</script></html>", "not an image"),
        ("cut.png", png[: len(png) // 2], "damaged or truncated"),
        ("anim.gif", image_bytes("GIF"), "GIF images are not accepted"),
    ]:
        r = upload(server, name, data)
        assert r.status_code == 400 and why in r.json()["detail"], (name, r.text)
    r = upload(server, "empty.png", b"")
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    for width, height in [(40_000, 40_000), (8_000, 8_000)]:  # Pillow's limit, then ours
        r = upload(server, "bomb.png", png_claiming(width, height))
        assert r.status_code == 413 and "pixels" in r.json()["detail"], r.text


def test_file_names_are_made_safe(server: Server, folder: Path) -> None:
    png = image_bytes(color=(5, 5, 250))
    for i, (given, stored) in enumerate([
        ("../../../etc/passwd.png", "passwd.png"),
        ("..\\..\\windows\\evil.png", "evil.png"),
        (".hidden.png", "hidden.png"),
        ("naïve café.PNG", "naive_cafe.png"),
        ("a" * 250 + ".png", "a" * 90 + ".png"),
        ("....", "image.png"),
        ("x\x00y.png", "x_y.png"),
    ]):
        r = upload(server, given, image_bytes(color=(20 * i + 1, 7, 250)))
        assert r.status_code == 200, (given, r.text)
        path = Path(r.json()["path"])
        assert path.name == stored and path.parent == folder.resolve(), given
    for bad in ("", "a" * 300):
        assert upload(server, bad, png).status_code == 422
    assert httpx.post(f"{server.url}/api/v1/assets", content=png, timeout=10).status_code == 422
    assert sorted(p.parent for p in folder.iterdir()) == [folder] * len(list(folder.iterdir()))


def test_no_path_escapes_the_folder(server: Server, folder: Path, tmp_path: Path) -> None:
    outside = folder.parent / "outside.png"
    outside.write_bytes(image_bytes())
    (folder / "link.png").symlink_to(outside)
    (folder / "bad name.png").write_bytes(image_bytes())
    secret = tmp_path / "secret.png"
    secret.write_bytes(image_bytes())
    url = f"{server.url}/api/v1/assets/"
    refs = ["../outside.png", "%2e%2e/outside.png", "..%2foutside.png", "..%5coutside.png",
                str(outside), f"/{outside}", str(secret), "/etc/passwd", "..", ".", "",
                "link.png", "bad%20name.png", "bad name.png", "%00.png", "x/../outside.png",
                f"{folder}/../outside.png", "C:%5cWindows%5cwin.ini"]
    store = AssetStore(folder)
    for ref in refs:  # what the route gets, however the client spells it
        assert store.find(unquote(ref)) is None, ref
    for ref in refs:
        r = httpx.get(url + ref, timeout=10)  # httpx folds "." and "..": the list, or 404
        assert r.headers["content-type"] == "application/json", ref
        assert r.status_code == 404 or set(r.json()) == {"assets"}, ref
    listed = [a["name"] for a in httpx.get(url[:-1], timeout=10).json()["assets"]]
    assert "link" not in listed and "bad name" not in listed


def test_size_limits(server: Server, folder: Path) -> None:
    big = image_bytes(size=(600, 600))  # incompressible enough? make sure it is over 64 KiB
    big = big + b"\0" * max(0, 70 * 1024 - len(big))
    r = upload(server, "big.png", big)
    assert r.status_code == 413 and "65536" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(20):
            yield b"\0" * 8192

    r = httpx.post(f"{server.url}/api/v1/assets", params={"filename": "s.png"},
                   content=chunks(), timeout=30)
    assert r.status_code == 413
    assert not (folder / "big.png").exists() and not (folder / "s.png").exists()
    # Other routes keep the small API body limit.
    r = httpx.post(f"{server.url}/api/v1/pipeline/load", content=b"{" + b" " * 300_000 + b"}",
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413


def test_the_folder_as_a_whole_is_bounded(tmp_path: Path) -> None:
    store = AssetStore(tmp_path / "a", max_total_bytes=2 * len(image_bytes()) + 10)
    store.save("one.png", image_bytes(color=(1, 1, 1)))
    store.save("two.png", image_bytes(color=(2, 2, 2)))
    with pytest.raises(AssetTooLargeError, match="folder is full"):
        store.save("three.png", image_bytes(color=(3, 3, 3)))
    assert len(store.list()) == 2


def test_every_new_route_needs_the_api_key(tmp_path: Path) -> None:
    with serve_in_thread(pipeline=None, api_key="s3cret", assets_dir=tmp_path) as server:
        calls = [("GET", "/api/v1/assets"), ("POST", "/api/v1/assets?filename=a.png"),
                 ("GET", "/api/v1/assets/a.png"), ("GET", "/api/v1/models/status?pipeline_id=x"),
                 ("POST", "/api/v1/models/download"), ("POST", "/api/v1/recordings/x/start"),
                 ("POST", "/api/v1/recordings/x/stop"), ("GET", "/api/v1/recordings/x")]
        for method, path in calls:
            r = httpx.request(method, server.url + path, content=image_bytes(), timeout=10)
            assert r.status_code == 401, (method, path)
        key = {"Authorization": "Bearer s3cret"}
        r = httpx.post(f"{server.url}/api/v1/assets", params={"filename": "a.png"},
                       content=image_bytes(), headers=key, timeout=10)
        assert r.status_code == 200
        assert httpx.get(f"{server.url}/api/v1/assets/a.png", headers=key,
                         timeout=10).status_code == 200
