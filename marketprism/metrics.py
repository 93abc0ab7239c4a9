"""Prometheus metrics, named ``marketprism_<subsystem>_<name>_<unit>``.

Components also keep plain per-instance counters (``.stats``) so a caller can read its own numbers
without scraping the process-wide registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FRAMES = Counter("marketprism_collector_frames_total", "WebSocket frames received", ["venue"])
FRAME_BYTES = Counter("marketprism_collector_frame_bytes_total", "WebSocket payload bytes received", ["venue"])
PARSE_ERRORS = Counter("marketprism_collector_parse_errors_total", "Frames that failed to parse", ["venue"])
RECORDS = Counter("marketprism_collector_records_total", "Records normalised", ["venue", "data_type"])
RECONNECTS = Counter("marketprism_collector_reconnects_total", "WebSocket reconnects", ["venue", "reason"])
CONNECTED = Gauge("marketprism_collector_connections", "Open WebSocket connections", ["venue"])

PUBLISHED = Counter("marketprism_bus_published_total", "Records acknowledged by JetStream", ["data_type"])
DUPLICATES = Counter("marketprism_bus_duplicates_total", "Publishes JetStream acknowledged as duplicates")
DROPPED = Counter("marketprism_bus_dropped_total", "Records dropped before JetStream acknowledged them", ["reason"])
RETRIES = Counter("marketprism_bus_publish_retries_total", "Publishes retried after a failure or ack timeout")
BUFFERED = Gauge("marketprism_bus_buffered_records", "Records waiting in the publish buffer")
