"""Audit log: one row per state change of a business object, written in the change's transaction."""
