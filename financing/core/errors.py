"""Domain errors raised by services and mapped to HTTP statuses by the views."""


class DomainError(Exception):
    """Base class: a rule of the platform rejected the operation."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class ValidationFailed(DomainError):
    """One or more fields are invalid; `fields` maps each field to its message."""

    status = 422
    code = "invalid"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class Conflict(DomainError):
    """The request conflicts with the current state, e.g. a pledge beyond the goal."""

    status = 409
    code = "conflict"
