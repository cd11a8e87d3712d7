"""Test and demo infrastructure: a real Kafka broker and helpers to talk to it."""
