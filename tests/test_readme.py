"""The README's Python example runs as written (against a test server)."""

from __future__ import annotations

import contextlib
import io
import re

from tests.conftest import ROOT, serve_in_thread


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_python_client_example_runs() -> None:
    code = readme_example()
    assert "asyncio.run(main())" in code
    with serve_in_thread(pipeline="cpu-effect") as server:
        code = code.replace("http://127.0.0.1:8000", server.url)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # calls asyncio.run
    lines = out.getvalue().splitlines()
    assert lines[0] == "512 512"
    assert "blue ocean" in lines[1]
