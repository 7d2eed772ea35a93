"""The browser UI: Gradio Blocks plus a plain JS WebRTC client module."""
