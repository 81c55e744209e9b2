"""Matching: scored, explained suggestions of which funder fits which project, and their review."""
