"""How `iframe()` decides the URL the browser loads (ui/notebook.py), branch by branch.

The Jupyter branch runs for real in tests/test_notebook.py (a Jupyter Server with
jupyter-server-proxy). Colab is faked here by its module alone: a `google.colab` package put on
sys.path whose `output.eval_js` answers as Colab's does for `google.colab.kernel.proxyPort(port)`.
It has never run on Colab itself here (no network to reach it).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from ui.notebook import StudioFrame, embed

FAKE_COLAB_OUTPUT = '''
import re
CALLS = []

def eval_js(script, ignore_result=False, timeout_sec=None):
    """Colab's runs `script` in the notebook's browser tab and returns its value."""
    CALLS.append(script)
    port = re.fullmatch(r"google\\.colab\\.kernel\\.proxyPort\\((\\d+)\\)", script)
    return f"https://x7k2q9-{port.group(1)}-colab.googleusercontent.com/" if port else None
'''


@pytest.fixture
def fake_colab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    package = tmp_path / "google" / "colab"  # `google` stays a namespace package (protobuf's)
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "output.py").write_text(FAKE_COLAB_OUTPUT)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [n for n in sys.modules if n.startswith("google.colab")]:
        del sys.modules[name]


def test_plain_local_kernel_gets_localhost() -> None:
    e = embed(8000, env={"VSCODE_PID": "1"}, servers=[])  # VS Code on the same machine
    assert (e.kind, e.src, e.forward) == ("local", "http://localhost:8000/", None)
    html = StudioFrame(e)._repr_html_()
    assert html.startswith('<iframe src="http://localhost:8000/"') and 'allow="camera;' in html


def test_colab_uses_colabs_port_proxy(fake_colab: object) -> None:
    e = embed(8123, env={}, servers=[])
    assert e.kind == "colab"
    assert e.src == "https://x7k2q9-8123-colab.googleusercontent.com/"
    import google.colab.output as output  # the fake: what the kernel asked Colab for

    assert output.CALLS == ["google.colab.kernel.proxyPort(8123)"]
    html = StudioFrame(e, height=700, turn=True)._repr_html_()
    assert f'src="{e.src}"' in html and 'height="700"' in html
    assert 'allow="camera; microphone; autoplay' in html
    assert "TURN" not in html
    # Colab's VM is behind NAT: without TURN the cell says what to set
    assert "Colab needs a TURN server" in StudioFrame(e, turn=False)._repr_html_()
    # an explicit URL or way still wins over Colab
    assert embed(8123, url="https://tunnel.example/", env={}).src == "https://tunnel.example/"
    assert embed(8123, via="local", env={}).kind == "local"


def test_colab_without_a_url_is_a_clear_error(fake_colab: object,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import google.colab.output as output

    monkeypatch.setattr(output, "eval_js", lambda script: None)
    with pytest.raises(RuntimeError, match="Colab gave no URL for port 8000"):
        embed(8000, env={}, servers=[])


def test_without_colab_the_colab_branch_is_not_taken() -> None:
    assert "google.colab" not in sys.modules
    assert embed(8000, env={}, servers=[]).kind == "local"
    with pytest.raises(RuntimeError, match="via='colab' needs Colab"):
        embed(8000, via="colab", env={}, servers=[])


def test_remote_kernel_over_ssh_says_how_to_forward() -> None:
    env = {"SSH_CONNECTION": "10.0.0.5 50022 192.168.1.20 2222", "USER": "bob"}
    e = embed(8000, env=env, servers=[])
    assert e.kind == "remote" and e.src == "http://localhost:8000/"
    assert e.forward == "ssh -N -L 8000:localhost:8000 -p 2222 bob@192.168.1.20"
    html = StudioFrame(e)._repr_html_()
    assert e.forward in html and '<a href="http://localhost:8000/"' in html
    assert "<iframe" not in html  # it would stay blank until the port is forwarded
    assert 'server.iframe(via="local")' in html
    assert "<iframe" in StudioFrame(embed(8000, via="local", env=env))._repr_html_()
    assert "Forward the port first: ssh -N -L 8000:localhost:8000" in repr(StudioFrame(e))
    plain = embed(8000, env={"SSH_CONNECTION": "10.0.0.5 50022 192.168.1.20 22",
                             "USER": "bob"}, servers=[])
    assert plain.forward == "ssh -N -L 8000:localhost:8000 bob@192.168.1.20"


def test_vscode_remote_container_is_remote() -> None:
    env = {"VSCODE_AGENT_FOLDER": "/root/.vscode-server", "REMOTE_CONTAINERS": "true",
           "USER": "dev"}
    e = embed(8000, env=env, servers=[])
    assert e.kind == "remote" and re.fullmatch(r"ssh -N -L 8000:localhost:8000 dev@\S+",
                                               e.forward or "")


def test_jupyterhub_prefix_without_a_server_to_ask() -> None:
    env = {"JUPYTERHUB_SERVICE_PREFIX": "/user/bob/", "SSH_CONNECTION": "1 2 3 22"}
    e = embed(8000, env=env, servers=[])  # jupyter_server_proxy is installed here
    assert (e.kind, e.src) == ("jupyter", "/user/bob/proxy/8000/")


def test_a_jupyter_server_that_does_not_proxy_is_skipped() -> None:
    closed = free_port()  # nothing listens there
    servers = [{"url": f"http://127.0.0.1:{closed}/", "base_url": "/", "token": "t"}]
    assert embed(8000, env={}, servers=servers).kind == "local"
    with pytest.raises(RuntimeError, match="no Jupyter Server with jupyter-server-proxy"):
        embed(8000, via="jupyter", env={}, servers=servers)
