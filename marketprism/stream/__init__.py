"""WebSocket sessions and collectors: wire frames in, records out to a sink."""
