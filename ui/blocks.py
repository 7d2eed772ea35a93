"""The Gradio page mounted at `/`: the LiveV2V studio.

Gradio gives the page, its theme (light/dark) and the notes below the studio; the studio itself
(videos, controls, WebRTC) is one `gr.HTML` component whose `js_on_load` imports the plain ES
modules in `ui/static/` (`studio.js`, which drives `livev2v.js`, the reusable client). Gradio
serves those files itself (`gr.set_static_paths`), so the page needs no route of its own and
works under any root path, on Spaces and in a notebook iframe. `ui.routes.router` also serves
the client at the stable URL `/ui/livev2v.js` for other pages.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import gradio as gr

STATIC_DIR = Path(__file__).resolve().parent / "static"
ELEM_ID = "livev2v-studio"

# The page-level extras Gradio 6 takes in `mount_gradio_app(...)` (not in `gr.Blocks`). The page
# works without them; with them the look is tuned (theme) and Gradio's API footer (about Gradio
# endpoints, which this page has none of) is left out.
MOUNT_OPTIONS: dict = {"footer_links": ["gradio", "settings"]}

_PAGE_CSS = """
.gradio-container { padding-top: 12px !important; }
.gradio-container .lv-notes { max-width: 1472px; margin: 0 auto; }
.dark #livev2v-studio .lv-app { --lv-muted: #94a3b8; }
"""

_NOTES = """
**Use it from your own page.** The studio's WebRTC client is one plain ES module,
[`livev2v.js`](ui/livev2v.js) — no bundler, no dependencies:

```js
import { LiveV2VClient, openCamera } from "http://localhost:8000/ui/livev2v.js";
const client = new LiveV2VClient({ baseUrl: "http://localhost:8000" });
client.on("track", ({ stream }) => { video.srcObject = stream; });
const cam = await openCamera({ width: 512, height: 512 });
await client.connect({ input: cam.stream,
                       initialParameters: { prompts: [{ text: "an oil painting", weight: 1 }] } });
client.send({ prompts: [{ text: "a watercolor", weight: 1 }] });
```

The server speaks the [Daydream Scope](https://github.com/daydreamlive/scope) HTTP + WebRTC API:
`POST /api/v1/webrtc/offer`, `PATCH` for ICE candidates, `POST /api/v1/pipeline/load`,
`GET /api/v1/pipeline/status`, `GET /api/v1/pipelines/schemas` — interactive docs at [/docs](docs).
"""


def _read(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def _loader_js() -> str:
    """`js_on_load`: import the studio module from Gradio's file route and mount it."""
    module = json.dumps((STATIC_DIR / "studio.js").as_posix())
    version = json.dumps(_version())
    return f"""
const cfg = window.gradio_config || {{}};
// Gradio's root carries the proxy's prefix; its scheme and host are Gradio's guess from the
// headers (http behind a TLS-terminating hub), so the page's own origin is used with its path.
let base = cfg.root ? new URL(new URL(cfg.root).pathname, location.origin).href : document.baseURI;
if (!base.endsWith("/")) base += "/";
const url = new URL("gradio_api/file=" + encodeURI({module}) + "?v=" + {version}, base).href;
import(url).then((m) => {{
  window.liveV2V = m.mountStudio(element, {{ baseUrl: base }});
}}).catch((error) => {{
  console.error("LiveV2V: the studio module did not load", error);
  const box = element.querySelector('[data-role="notice"]');
  if (box) {{
    box.hidden = false;
    box.querySelector('[data-role="notice-title"]').textContent = "The page did not load fully";
    box.querySelector('[data-role="notice-text"]').textContent = String(error);
  }}
}});
"""


def _version() -> str:
    """Changes whenever a static file changes (cache busting for the module URLs)."""
    stamps = sorted(f"{p.name}:{p.stat().st_mtime_ns}" for p in STATIC_DIR.iterdir())
    return hashlib.sha1("|".join(stamps).encode()).hexdigest()[:10]


def scope_css(css: str, scope: str) -> str:
    """Prefix every selector with `scope`: the studio's rules then outrank Gradio's element
    resets (`.gradio-container-X button {padding: 0}` and the like) without `!important`."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    out: list[str] = []
    i = 0
    while True:
        start = css.find("{", i)
        if start < 0:
            break
        head = css[i:start].strip()
        depth, j = 1, start + 1
        while depth:
            depth += {"{": 1, "}": -1}.get(css[j], 0)
            j += 1
        body = css[start + 1:j - 1]
        if head.startswith(("@media", "@supports", "@container")):
            out.append(f"{head} {{{scope_css(body, scope)}}}")
        elif head.startswith("@"):
            out.append(f"{head} {{{body}}}")
        else:
            selectors = ", ".join(f"{scope} {sel.strip()}" for sel in head.split(","))
            out.append(f"{selectors} {{{body}}}")
        i = j
    return "\n".join(out)


def build_blocks() -> gr.Blocks:
    gr.set_static_paths([STATIC_DIR])
    html = _read("studio.html")
    if "${" in html or "`" in html or "{{" in html:  # gr.HTML renders it as a JS template
        raise ValueError("studio.html must not contain ${, backticks or {{")
    head = f"<style>{scope_css(_read('studio.css'), '#' + ELEM_ID)}\n{_PAGE_CSS}</style>"
    with gr.Blocks(title="LiveV2V — real-time video-to-video", fill_width=True) as blocks:
        gr.HTML(
            html_template=html,
            js_on_load=_loader_js(),
            head=head,
            apply_default_css=False,
            container=False,
            padding=False,
            elem_id=ELEM_ID,
        )
        with gr.Accordion("Use the API and the JavaScript client", open=False,
                          elem_classes=["lv-notes"]):
            gr.Markdown(_NOTES)
    return blocks
