/**
 * Reads a request's JSON object body, refusing more than maxBytes before buffering it all. A body
 * cut short (fewer bytes than its Content-Length, then the client half-closes) is the client's
 * error: 400, not a 500 with a stack trace.
 */
import { BodyTooLargeError, IncompleteBodyError, InvalidJsonError } from "./errors.ts";

export async function readJsonBody(
  req: Request,
  maxBytes: number,
): Promise<Record<string, unknown>> {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (declared > maxBytes) throw new BodyTooLargeError(maxBytes);
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    const reader = req.body.getReader();
    while (true) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch {
        // Deno: "BadResource: Cannot read request body" when the connection ends early
        throw new IncompleteBodyError();
      }
      const { value, done } = chunk;
      if (done) break;
      size += value.byteLength;
      if (size > maxBytes) {
        await reader.cancel();
        throw new BodyTooLargeError(maxBytes);
      }
      chunks.push(value);
    }
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new InvalidJsonError((e as Error).message);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new InvalidJsonError(
      `expected an object, got ${Array.isArray(parsed) ? "an array" : typeof parsed}`,
    );
  }
  return parsed as Record<string, unknown>;
}
