"""Spans, metrics and logs. Used by the engine and the sidecar; imports neither."""
