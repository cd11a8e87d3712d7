"""Adapters: everything that touches the outside world (Kafka, bytes, files, logs, settings)."""
