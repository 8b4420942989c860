/**
 * Server-sent events in OpenAI's format: `data: <json>\n\n` per chunk, then `data: [DONE]\n\n`.
 * When the client goes away the response body is cancelled: that aborts the generation (its
 * session is freed by the generator's finally) and the next queued request runs.
 */
import { toApiError } from "./errors.ts";

const encoder = new TextEncoder();

function event(data: string): Uint8Array {
  return encoder.encode(`data: ${data}\n\n`);
}

/**
 * A text/event-stream Response over `chunks`. `abort` is fired when the client disconnects. An
 * exception after the headers went out is sent as one `data: {"error": ...}` event.
 */
export function sseResponse(
  chunks: AsyncGenerator<unknown, unknown>,
  abort: AbortController,
): Response {
  let finished = false;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (finished) return;
      try {
        const { value, done } = await chunks.next();
        if (!done) {
          controller.enqueue(event(JSON.stringify(value)));
          return;
        }
        controller.enqueue(event("[DONE]"));
      } catch (e) {
        if (abort.signal.aborted) return; // client gone: nobody to tell
        // after the headers: the error is one event (details logged, not sent)
        controller.enqueue(event(JSON.stringify(toApiError(e, "streamed response").toJSON())));
      }
      finished = true;
      controller.close();
    },
    async cancel() {
      finished = true;
      abort.abort();
      await chunks.return(undefined);
    },
  });
  return new Response(body, {
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "connection": "keep-alive",
    },
  });
}
