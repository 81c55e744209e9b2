"""Shared building blocks: timestamps, domain errors and small helpers."""
