/**
 * The two generation endpoints: /v1/chat/completions (messages -> chat template -> ids) and
 * /v1/completions (raw text or ids). Both check the request fully before queueing, then answer
 * with one JSON object or an SSE stream of OpenAI chunks. Logprobs (chat logprobs/top_logprobs,
 * completions logprobs/echo) come with the pieces and the result (src/generate.ts); token texts,
 * bytes and text offsets are made here with the server's tokenizer.
 */
import type { ChatTemplate } from "../chat_template.ts";
import type { GenerationResult, Piece } from "../generate.ts";
import type { TokenLogprob } from "../logprobs.ts";
import type { Tokenizer } from "../tokenizer.ts";
import { ModelNotFoundError } from "./errors.ts";
import { readJsonBody } from "./body.ts";
import {
  chatChunk,
  chatCompletion,
  chatLogprobs,
  codePoints,
  completion,
  type CompletionLogprobs,
  completionLogprobs,
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

/**
 * Streams pieces as chunks built by `build`, then the finish and usage chunks. A chunk goes out
 * for each piece with text, with the pieces since the last chunk (their logprobs); pieces still
 * pending at the end (held text, an EOS) ride on the finish chunk.
 */
async function* chunks(
  pieces: AsyncGenerator<Piece, GenerationResult>,
  who: ResponseIdentity,
  build: {
    opening?: () => unknown;
    text: (text: string, pieces: Piece[]) => unknown;
    finish: (r: GenerationResult, pieces: Piece[]) => unknown;
    usage: (r: GenerationResult) => unknown;
  },
): AsyncGenerator<unknown, void> {
  try {
    let opened = false;
    let pending: Piece[] = [];
    while (true) {
      const step = await pieces.next();
      if (!opened && build.opening) yield build.opening(); // role chunk once the turn has begun
      opened = true;
      if (step.done) {
        yield build.finish(step.value, pending);
        if (who.includeUsage) yield build.usage(step.value);
        return;
      }
      pending.push(step.value);
      if (step.value.text !== "") {
        yield build.text(step.value.text, pending);
        pending = [];
      }
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

/** Runs the generation to its end; keeps the pieces when `keep` (their logprobs). */
async function collect(
  pieces: AsyncGenerator<Piece, GenerationResult>,
  keep: boolean,
): Promise<{ result: GenerationResult; pieces: Piece[] }> {
  const kept: Piece[] = [];
  while (true) {
    const step = await pieces.next();
    if (step.done) return { result: step.value, pieces: kept };
    if (keep) kept.push(step.value);
  }
}

/** The logprobs the pieces carry (all of them when the request asked). */
function logprobsOf(pieces: Piece[]): TokenLogprob[] {
  return pieces.flatMap((p) => p.logprob ? [p.logprob] : []);
}

/**
 * text_offset of tokens pushed in order: the characters the text had before each, decoding from
 * `start` characters on (special tokens kept when !skipSpecial: the echoed prompt).
 */
function textOffsets(tokenizer: Tokenizer, start: number, skipSpecial: boolean) {
  const decoder = tokenizer.streamDecoder({ skipSpecial });
  let at = start;
  return (id: number): number => {
    const offset = at;
    at += codePoints(decoder.push(id));
    return offset;
  };
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
    expertSet: parsed.expertSet,
    logprobs: parsed.logprobs,
    echo: "echo" in parsed && parsed.echo === true,
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
  const pieceOf = (id: number) => runner.tokenizer.tokenPiece(id);
  /** The chat logprobs of `ps`; null when none were asked (or there are none, at the end). */
  const logprobs = (ps: Piece[]) =>
    parsed.logprobs === null ? null : chatLogprobs(logprobsOf(ps), pieceOf);
  if (parsed.stream) {
    return sseResponse(
      chunks(pieces, who, {
        opening: () => chatChunk(who, { delta: { role: "assistant", content: "" } }),
        text: (content, ps) => chatChunk(who, { delta: { content }, logprobs: logprobs(ps) }),
        finish: (r, ps) =>
          chatChunk(who, {
            finish: r.finishReason,
            logprobs: ps.length > 0 ? logprobs(ps) : null,
          }),
        usage: (r) => chatChunk(who, { usage: usage(r.promptTokens, r.completionTokens) }),
      }),
      abort,
    );
  }
  const { result: r, pieces: got } = await collect(pieces, parsed.logprobs !== null);
  return Response.json(
    chatCompletion(
      who,
      r.text,
      r.finishReason,
      usage(r.promptTokens, r.completionTokens),
      logprobs(got),
    ),
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
  const tokenizer = runner.tokenizer;
  const pieceOf = (id: number) => tokenizer.tokenPiece(id);
  // echo: the prompt as given (ids decoded, special tokens kept) goes before the completion
  const echoed = !parsed.echo
    ? ""
    : typeof parsed.prompt === "string"
    ? parsed.prompt
    : tokenizer.decode(parsed.prompt);
  const generatedOffset = textOffsets(tokenizer, codePoints(echoed), true);
  /** The completion logprobs of generated pieces `ps` (offsets continue from the last call). */
  const logprobs = (ps: Piece[]): CompletionLogprobs | null =>
    parsed.logprobs === null ? null : completionLogprobs(
      ps.map((p) => p.token),
      ps.map((p) => p.logprob ?? null),
      ps.map((p) => generatedOffset(p.token)),
      pieceOf,
    );
  if (parsed.stream) { // with echo, never with logprobs (request.ts refuses it)
    return sseResponse(
      chunks(pieces, who, {
        ...(parsed.echo ? { opening: () => completion(who, { text: echoed, stream: true }) } : {}),
        text: (text, ps) => completion(who, { text, logprobs: logprobs(ps), stream: true }),
        finish: (r, ps) =>
          completion(who, {
            finish: r.finishReason,
            logprobs: ps.length > 0 ? logprobs(ps) : null,
            stream: true,
          }),
        usage: (r) =>
          completion(who, { usage: usage(r.promptTokens, r.completionTokens), stream: true }),
      }),
      abort,
    );
  }
  const { result: r, pieces: got } = await collect(pieces, parsed.logprobs !== null);
  let lp = logprobs(got);
  if (lp !== null && parsed.echo) { // the prompt's tokens first
    const promptOffset = textOffsets(tokenizer, 0, false);
    const prompt = completionLogprobs(
      ids,
      r.promptLogprobs ?? ids.map(() => null),
      ids.map(promptOffset),
      pieceOf,
    );
    lp = {
      tokens: [...prompt.tokens, ...lp.tokens],
      token_logprobs: [...prompt.token_logprobs, ...lp.token_logprobs],
      top_logprobs: [...prompt.top_logprobs, ...lp.top_logprobs],
      text_offset: [...prompt.text_offset, ...lp.text_offset],
    };
  }
  return Response.json(completion(who, {
    text: echoed + r.text,
    finish: r.finishReason,
    usage: usage(r.promptTokens, r.completionTokens),
    logprobs: lp,
    stream: false,
  }));
}
