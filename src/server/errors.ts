/**
 * OpenAI-style API errors: each failure is its own class carrying the HTTP status and the
 * `{"error": {"message", "type", "param", "code"}}` body fields; the message says what to do.
 * Bodies never carry file paths, stack traces or internal class names: any other exception is
 * logged on stderr with an error id and answered by that id (toApiError).
 */

/** The JSON body OpenAI clients parse. */
export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** Base of every error the server answers with a status other than 500. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }

  toJSON(): ErrorBody {
    return {
      error: { message: this.message, type: this.type, param: this.param, code: this.code },
    };
  }
}

/** The body is not JSON (or not a JSON object). */
export class InvalidJsonError extends ApiError {
  override name = "InvalidJsonError";
  constructor(detail: string) {
    super(
      400,
      `request body is not a valid JSON object (${detail}); send Content-Type: application/json`,
      "invalid_request_error",
      null,
      "invalid_json",
    );
  }
}

/** A parameter has the wrong type or a value outside its range. */
export class InvalidParameterError extends ApiError {
  override name = "InvalidParameterError";
  constructor(param: string, message: string) {
    super(400, `'${param}': ${message}`, "invalid_request_error", param, "invalid_value");
  }
}

/** A required parameter is absent. */
export class MissingParameterError extends ApiError {
  override name = "MissingParameterError";
  constructor(param: string) {
    super(
      400,
      `'${param}' is required`,
      "invalid_request_error",
      param,
      "missing_required_parameter",
    );
  }
}

/** A parameter (or value) this server does not implement. */
export class UnsupportedParameterError extends ApiError {
  override name = "UnsupportedParameterError";
  constructor(param: string, detail: string) {
    super(
      400,
      `'${param}' is not supported by this server (${detail}); remove it from the request`,
      "invalid_request_error",
      param,
      "unsupported_parameter",
    );
  }
}

/** The request names a model this server does not serve. */
export class ModelNotFoundError extends ApiError {
  override name = "ModelNotFoundError";
  constructor(requested: string, served: string) {
    super(
      404,
      `the model '${requested}' does not exist on this server; use '${served}' (see GET /v1/models)`,
      "invalid_request_error",
      "model",
      "model_not_found",
    );
  }
}

/** Prompt (plus max_tokens) does not fit the model's context. */
export class ContextLengthError extends ApiError {
  override name = "ContextLengthError";
  constructor(message: string, param: string) {
    super(400, message, "invalid_request_error", param, "context_length_exceeded");
  }
}

/** The body ended before the bytes its Content-Length announced (client half-closed early). */
export class IncompleteBodyError extends ApiError {
  override name = "IncompleteBodyError";
  constructor() {
    super(
      400,
      "the request body ended before its Content-Length; send the whole body",
      "invalid_request_error",
      null,
      "incomplete_body",
    );
  }
}

/** The body is larger than maxBodyBytes. */
export class BodyTooLargeError extends ApiError {
  override name = "BodyTooLargeError";
  constructor(limit: number) {
    super(
      413,
      `request body exceeds the server's limit of ${limit} bytes; send a shorter prompt`,
      "invalid_request_error",
      null,
      "request_too_large",
    );
  }
}

/** An API key is configured and the request lacks it or has another. */
export class AuthenticationError extends ApiError {
  override name = "AuthenticationError";
  constructor(missing: boolean) {
    super(
      401,
      missing
        ? "no API key given; send the header 'Authorization: Bearer <key>'"
        : "incorrect API key given; send the key the server was started with",
      "invalid_request_error",
      null,
      "invalid_api_key",
    );
  }
}

/** No route matches the method and path. */
export class RouteNotFoundError extends ApiError {
  override name = "RouteNotFoundError";
  constructor(method: string, path: string) {
    super(
      404,
      `no route for ${method} ${path}; see /v1/chat/completions, /v1/completions, /v1/models`,
      "invalid_request_error",
      null,
      "unknown_url",
    );
  }
}

/** The model is still loading. */
export class ModelLoadingError extends ApiError {
  override name = "ModelLoadingError";
  constructor() {
    super(
      503,
      "the model is still loading; retry when GET /health says ok",
      "server_error",
      null,
      "model_loading",
    );
  }
}

/** The model failed to load: the server cannot generate (the reason is in the server's log). */
export class ModelLoadFailedError extends ApiError {
  override name = "ModelLoadFailedError";
  constructor() {
    super(
      500,
      "the model failed to load (the server's log says why); fix the model and restart the server",
      "server_error",
      null,
      "model_load_failed",
    );
  }
}

/** The model is not usable right now (the GPU device was lost): the server is reloading it. */
export class ModelUnavailableError extends ApiError {
  override name = "ModelUnavailableError";
  constructor(detail = "the GPU device was lost") {
    super(
      503,
      `the model is unavailable (${detail}); the server is reloading it: retry when GET /health ` +
        "says ok",
      "server_error",
      null,
      "model_unavailable",
    );
  }
}

/** The generation queue is full: retry later (the response carries Retry-After). */
export class ServerBusyError extends ApiError {
  override name = "ServerBusyError";
  constructor(detail: string) {
    super(503, detail, "server_error", null, "server_busy");
  }
}

/** The GPU reported an error during the generation: its output was void. */
export class GpuFailureError extends ApiError {
  override name = "GpuFailureError";
  constructor(id: string) {
    super(
      500,
      `the GPU reported an error during this generation (error id ${id} in the server's log); ` +
        "the server reloads the model: retry when GET /health says ok",
      "server_error",
      null,
      "gpu_error",
    );
  }
}

/** The server is shutting down: it runs no more generations. */
export class ShuttingDownError extends ApiError {
  override name = "ShuttingDownError";
  constructor() {
    super(
      503,
      "the server is shutting down; retry on a running server",
      "server_error",
      null,
      "shutting_down",
    );
  }
}

/** The request's Host is not an address this server serves (DNS rebinding guard). */
export class HostNotAllowedError extends ApiError {
  override name = "HostNotAllowedError";
  constructor() {
    super(
      403,
      "the Host header names no address this server serves; use its address, or start the " +
        "server with --allowed-host NAME",
      "invalid_request_error",
      null,
      "host_not_allowed",
    );
  }
}

/** A browser request from an origin the CORS policy does not allow. */
export class OriginNotAllowedError extends ApiError {
  override name = "OriginNotAllowedError";
  constructor() {
    super(
      403,
      "cross-origin requests from this origin are not allowed; start the server with " +
        "--cors-origin ORIGIN to allow it",
      "invalid_request_error",
      null,
      "origin_not_allowed",
    );
  }
}

let errorIds = 0;

/** A short id that ties an answer to its log line. */
function newErrorId(): string {
  errorIds = (errorIds + 1) % 0x10000;
  return `${Date.now().toString(36)}-${errorIds.toString(36)}`;
}

/** Any other exception: a 500 that names only the error id the log line carries. */
export function internalError(id: string): ApiError {
  return new ApiError(
    500,
    `internal server error (error id ${id}); the server's log has the details`,
    "server_error",
    null,
    "internal_error",
  );
}

/**
 * The answer to any exception: ApiErrors as they are; a lost device, a GPU error or a closing
 * engine as their own 503/500 (matched by name, as errors rebuilt from the engine worker keep
 * theirs); anything else as internalError. Everything but an ApiError is logged on stderr with
 * its error id and stack, under `where` (e.g. "POST /v1/completions").
 */
export function toApiError(e: unknown, where: string): ApiError {
  if (e instanceof ApiError) return e;
  // a full queue is the server's normal answer under load, not a fault to log
  if (e instanceof Error && e.name === "QueueFullError") return new ServerBusyError(e.message);
  const id = newErrorId();
  console.error(`[error ${id}] ${where}:`, e);
  const name = e instanceof Error ? e.name : "";
  switch (name) {
    case "DeviceLostError":
      return new ModelUnavailableError();
    case "GpuError":
      return new GpuFailureError(id);
    case "EngineClosedError":
      return new ShuttingDownError();
    default:
      return internalError(id);
  }
}
