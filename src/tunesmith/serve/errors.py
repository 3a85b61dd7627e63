"""Errors the server turns into OpenAI-shaped HTTP responses: {"error": {message, type, param, code}}."""

from __future__ import annotations

from typing import Any

from tunesmith.errors import TunesmithError


class ServeError(TunesmithError):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, hint: str = "", *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, hint)
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        message = f"{self.message} ({self.hint})" if self.hint else self.message
        return error_body(message, self.type, self.param, self.code)


class BadRequest(ServeError):
    pass


class Unauthorized(ServeError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(ServeError):
    status, type, code = 403, "permission_error", "path_not_allowed"


class HostNotAllowed(Forbidden):
    code = "host_not_allowed"


class CrossOrigin(Forbidden):
    code = "cross_origin_refused"


class UnsupportedMediaType(ServeError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class NotFound(ServeError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class Conflict(ServeError):
    status, type, code = 409, "invalid_request_error", "adapter_exists"


class TooManyAdapters(Conflict):
    code = "too_many_adapters"


class TooLarge(ServeError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class ServerFailure(ServeError):
    status, type, code = 500, "server_error", "generation_failed"


class Unavailable(ServeError):
    status, type, code = 503, "server_error", "shutting_down"


class AdapterRejected(ServeError):
    """An adapter that cannot be served on this base: wrong base, not LoRA, not safetensors."""

    code = "adapter_rejected"


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
