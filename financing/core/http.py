"""Request helpers shared by HTML views and the JSON API."""

from flask import request


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/payments/")


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    """Build the error document of the API: {"error": {"code", "message", "fields"}}."""
    return {"error": {"code": code, "message": message, "fields": fields or {}}}
