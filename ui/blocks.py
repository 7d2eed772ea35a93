"""The Gradio page mounted at `/`."""

from __future__ import annotations

import gradio as gr


def build_blocks() -> gr.Blocks:
    with gr.Blocks(title="LiveV2V") as blocks:
        gr.Markdown("# LiveV2V\nReal-time video-to-video over WebRTC. "
                    "The API is documented at [/docs](/docs).")
    return blocks
