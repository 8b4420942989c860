/**
 * The two generation endpoints: /v1/chat/completions (messages -> chat template -> ids) and
 * /v1/completions (raw text or ids). Both check the request fully before queueing, then answer
 * with one JSON object or an SSE stream of OpenAI chunks.
 */
import type { ChatTemplate } from "../chat_template.ts";
import type { GenerationResult, Piece } from "../generate.ts";
import { ModelNotFoundError } from "./errors.ts";
import { readJsonBody } from "./body.ts";
import {
  chatChunk,
  chatCompletion,
  completion,
  newIdentity,
  type ResponseIdentity,
  usage,
} from "./openai_types.ts";
import { type GenerationRequest, parseChatRequest, parseCompletionRequest } from "./request.ts";
import { type Job, resolveMaxTokens, runJob, type RunnerContext } from "./runner.ts";
import { sseResponse } from "./stream.ts";

/** What the endpoints need from the app. */
export interface EndpointContext {
  modelId: string;
  maxBodyBytes: number;
  /** The loaded model's runner context (throws ModelLoadingError while loading). */
  runner(): RunnerContext;
  /** The model's chat template (throws MissingChatTemplateError when it has none). */
  template(): ChatTemplate;
}

function checkModel(requested: string | null, served: string): void {
  if (requested !== null && requested !== served) throw new ModelNotFoundError(requested, served);
}

/**
 * Links the request's abort (client disconnect) to the generation's controller until `unlink()`,
 * which the caller runs once the generation ended (Deno also aborts request.signal after a
 * successful response; by then nothing listens).
 */
function abortOnDisconnect(req: Request): { abort: AbortController; unlink: () => void } {
  const abort = new AbortController();
  const onAbort = () => abort.abort();
  if (req.signal.aborted) abort.abort();
  else req.signal.addEventListener("abort", onAbort, { once: true });
  return { abort, unlink: () => req.signal.removeEventListener("abort", onAbort) };
}

/** Streams pieces as chunks built by `toChunk`, then the finish and usage chunks. */
async function* chunks(
  pieces: AsyncGenerator<Piece, GenerationResult>,
  who: ResponseIdentity,
  build: {
    opening?: () => unknown;
    text: (text: string) => unknown;
    finish: (r: GenerationResult) => unknown;
    usage: (r: GenerationResult) => unknown;
  },
): AsyncGenerator<unknown, void> {
  try {
    let opened = false;
    while (true) {
      const step = await pieces.next();
      if (!opened && build.opening) yield build.opening(); // role chunk once the turn has begun
      opened = true;
      if (step.done) {
        yield build.finish(step.value);
        if (who.includeUsage) yield build.usage(step.value);
        return;
      }
      if (step.value.text !== "") yield build.text(step.value.text);
    }
  } finally {
    await pieces.return(undefined as never); // frees the session when the client left early
  }
}

/** Passes `pieces` through, running `unlink` once they end (finished, failed or returned). */
async function* unlinkAtEnd(
  pieces: AsyncGenerator<Piece, GenerationResult>,
  unlink: () => void,
): AsyncGenerator<Piece, GenerationResult> {
  try {
    return yield* pieces;
  } finally {
    unlink();
  }
}

async function collect(pieces: AsyncGenerator<Piece, GenerationResult>): Promise<GenerationResult> {
  while (true) {
    const step = await pieces.next();
    if (step.done) return step.value;
  }
}

function start(
  ctx: EndpointContext,
  req: Request,
  parsed: GenerationRequest,
  promptIds: number[],
  promptParam: string,
  arrival: number,
) {
  const runner = ctx.runner();
  const { abort, unlink } = abortOnDisconnect(req);
  const job: Job = {
    promptIds,
    maxTokens: parsed.maxTokens,
    stop: parsed.stop,
    sampling: parsed.sampling,
    routerMasking: parsed.routerMasking,
    signal: abort.signal,
    arrival,
    promptParam,
  };
  let maxTokens: number;
  try {
    maxTokens = resolveMaxTokens(runner, job);
    runner.engine.checkAdmission();
  } catch (e) {
    unlink();
    throw e;
  }
  return { abort, pieces: unlinkAtEnd(runJob(runner, job, maxTokens), unlink) };
}

export async function chatCompletions(ctx: EndpointContext, req: Request): Promise<Response> {
  const arrival = performance.now();
  const parsed = parseChatRequest(await readJsonBody(req, ctx.maxBodyBytes));
  checkModel(parsed.model, ctx.modelId);
  const runner = ctx.runner();
  const prompt = ctx.template().render(parsed.messages);
  const ids = runner.tokenizer.encode(prompt);
  const { abort, pieces } = start(ctx, req, parsed, ids, "messages", arrival);
  const who = newIdentity("chatcmpl", ctx.modelId, parsed.stream && parsed.includeUsage);
  if (parsed.stream) {
    return sseResponse(
      chunks(pieces, who, {
        opening: () => chatChunk(who, { delta: { role: "assistant", content: "" } }),
        text: (content) => chatChunk(who, { delta: { content } }),
        finish: (r) => chatChunk(who, { finish: r.finishReason }),
        usage: (r) => chatChunk(who, { usage: usage(r.promptTokens, r.completionTokens) }),
      }),
      abort,
    );
  }
  const r = await collect(pieces);
  return Response.json(
    chatCompletion(who, r.text, r.finishReason, usage(r.promptTokens, r.completionTokens)),
  );
}

export async function completions(ctx: EndpointContext, req: Request): Promise<Response> {
  const arrival = performance.now();
  const body = await readJsonBody(req, ctx.maxBodyBytes);
  const runner = ctx.runner();
  const parsed = parseCompletionRequest(body, runner.engine.info.config.vocabSize);
  checkModel(parsed.model, ctx.modelId);
  const ids = typeof parsed.prompt === "string"
    ? runner.tokenizer.encode(parsed.prompt)
    : parsed.prompt;
  const { abort, pieces } = start(ctx, req, parsed, ids, "prompt", arrival);
  const who = newIdentity("cmpl", ctx.modelId, parsed.stream && parsed.includeUsage);
  if (parsed.stream) {
    return sseResponse(
      chunks(pieces, who, {
        text: (text) => completion(who, { text, stream: true }),
        finish: (r) => completion(who, { finish: r.finishReason, stream: true }),
        usage: (r) =>
          completion(who, { usage: usage(r.promptTokens, r.completionTokens), stream: true }),
      }),
      abort,
    );
  }
  const r = await collect(pieces);
  return Response.json(completion(who, {
    text: r.text,
    finish: r.finishReason,
    usage: usage(r.promptTokens, r.completionTokens),
    stream: false,
  }));
}
