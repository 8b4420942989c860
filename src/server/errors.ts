/**
 * OpenAI-style API errors: each failure is its own class carrying the HTTP status and the
 * `{"error": {"message", "type", "param", "code"}}` body fields; the message says what to do.
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

/** The model failed to load: the server cannot generate. */
export class ModelLoadFailedError extends ApiError {
  override name = "ModelLoadFailedError";
  constructor(cause: string) {
    super(
      500,
      `the model failed to load (${cause}); fix the model and restart the server`,
      "server_error",
      null,
      "model_load_failed",
    );
  }
}

/** Any other exception, wrapped so the client still gets OpenAI-shaped JSON. */
export function internalError(e: unknown): ApiError {
  const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return new ApiError(
    500,
    `internal server error: ${message}`,
    "server_error",
    null,
    "internal_error",
  );
}
