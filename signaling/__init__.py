"""WebRTC signaling and the HTTP API. Never imports torch."""
