/**
 * The OpenAI wire format: response records (exactly the fields OpenAI sends) and the builders of
 * each object and streamed chunk for /v1/chat/completions and /v1/completions.
 */
import type { FinishReason } from "../generate.ts";
import type { TokenLogprob, TopLogprob } from "../logprobs.ts";
import type { TokenPiece } from "../tokenizer.ts";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** A token as chat logprobs name it: its text, log-probability and bytes. */
export interface ChatTopLogprob {
  token: string;
  logprob: number;
  bytes: number[];
}

/** One generated token of chat logprobs, with its most likely alternatives. */
export interface ChatTokenLogprob extends ChatTopLogprob {
  top_logprobs: ChatTopLogprob[];
}

/** choices[0].logprobs of a chat completion (or of a chunk: its tokens only). */
export interface ChatLogprobs {
  content: ChatTokenLogprob[];
  refusal: null;
}

/** choices[0].logprobs of a completion (legacy format): parallel lists, one entry per token. */
export interface CompletionLogprobs {
  tokens: string[];
  /** null for the first prompt token (echo): nothing predicts it. */
  token_logprobs: (number | null)[];
  /** The most likely tokens (and the token itself) by text; null where token_logprobs is. */
  top_logprobs: (Record<string, number> | null)[];
  /** Where each token starts in the choice's text, in characters (code points). */
  text_offset: number[];
}

/** Token id -> its text and bytes (Tokenizer.tokenPiece). */
export type PieceOf = (id: number) => TokenPiece;

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  system_fingerprint: null;
  choices: {
    index: number;
    message: { role: "assistant"; content: string; refusal: null };
    logprobs: ChatLogprobs | null;
    finish_reason: FinishReason;
  }[];
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  system_fingerprint: null;
  choices: {
    index: number;
    delta: { role?: "assistant"; content?: string };
    logprobs: ChatLogprobs | null;
    finish_reason: FinishReason | null;
  }[];
  /** Present (null until the last chunk) only when stream_options.include_usage is true. */
  usage?: Usage | null;
}

export interface Completion {
  id: string;
  object: "text_completion";
  created: number;
  model: string;
  system_fingerprint: null;
  choices: {
    index: number;
    text: string;
    logprobs: CompletionLogprobs | null;
    finish_reason: FinishReason | null;
  }[];
  usage?: Usage | null;
}

export interface ModelList {
  object: "list";
  data: { id: string; object: "model"; created: number; owned_by: string }[];
}

/** Identity shared by every chunk of one response. */
export interface ResponseIdentity {
  id: string;
  created: number;
  model: string;
  includeUsage: boolean;
}

export function usage(promptTokens: number, completionTokens: number): Usage {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
  };
}

/** A fresh response identity: "chatcmpl-…" or "cmpl-…" with a random suffix, created now. */
export function newIdentity(
  prefix: "chatcmpl" | "cmpl",
  model: string,
  includeUsage: boolean,
): ResponseIdentity {
  const id = `${prefix}-${crypto.randomUUID().replaceAll("-", "")}`;
  return { id, created: Math.floor(Date.now() / 1000), model, includeUsage };
}

/** Chat logprobs of generated tokens (each with its top alternatives). */
export function chatLogprobs(entries: TokenLogprob[], pieceOf: PieceOf): ChatLogprobs {
  const named = (token: number, logprob: number): ChatTopLogprob => {
    const p = pieceOf(token);
    return { token: p.text, logprob, bytes: p.bytes };
  };
  return {
    content: entries.map((e) => ({
      ...named(e.token, e.logprob),
      top_logprobs: e.top.map((t) => named(t.token, t.logprob)),
    })),
    refusal: null,
  };
}

/** Characters of `s` as Python counts them (code points), for text_offset. */
export function codePoints(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0xdc00 || c > 0xdfff) n++; // a low surrogate ends a pair already counted
  }
  return n;
}

/**
 * Completion logprobs of `ids` (entries[i]: ids[i]'s logprob, null for an unpredicted first
 * prompt token), starting at text offsets `offsets`. Each top_logprobs map holds the top
 * alternatives and the token itself (up to logprobs + 1 entries, as OpenAI's); tokens whose texts
 * coincide keep the likelier one.
 */
export function completionLogprobs(
  ids: number[],
  entries: (TokenLogprob | null)[],
  offsets: number[],
  pieceOf: PieceOf,
): CompletionLogprobs {
  return {
    tokens: ids.map((id) => pieceOf(id).text),
    token_logprobs: entries.map((e) => e?.logprob ?? null),
    top_logprobs: entries.map((e) => e === null ? null : topMap(e, pieceOf)),
    text_offset: offsets,
  };
}

/** A completion's top_logprobs map: text -> logprob of the top tokens and the token itself,
 * most likely first; of tokens with the same text, the likelier. */
function topMap(e: TokenLogprob, pieceOf: PieceOf): Record<string, number> {
  const all: TopLogprob[] = [...e.top];
  if (!all.some((t) => t.token === e.token)) {
    all.push({ token: e.token, logprob: e.logprob });
    all.sort((a, b) => b.logprob - a.logprob || a.token - b.token);
  }
  const map = new Map<string, number>();
  for (const t of all) {
    const text = pieceOf(t.token).text;
    if (!map.has(text)) map.set(text, t.logprob);
  }
  return Object.fromEntries(map); // own properties, even for a token named "__proto__"
}

export function chatCompletion(
  who: ResponseIdentity,
  content: string,
  finish: FinishReason,
  u: Usage,
  logprobs: ChatLogprobs | null = null,
): ChatCompletion {
  return {
    id: who.id,
    object: "chat.completion",
    created: who.created,
    model: who.model,
    system_fingerprint: null,
    choices: [{
      index: 0,
      message: { role: "assistant", content, refusal: null },
      logprobs,
      finish_reason: finish,
    }],
    usage: u,
  };
}

/** A chat chunk: a delta, or the finishing chunk (empty delta), or the usage chunk (no choices). */
export function chatChunk(
  who: ResponseIdentity,
  part: {
    delta?: ChatCompletionChunk["choices"][0]["delta"];
    finish?: FinishReason;
    usage?: Usage;
    logprobs?: ChatLogprobs | null;
  },
): ChatCompletionChunk {
  const chunk: ChatCompletionChunk = {
    id: who.id,
    object: "chat.completion.chunk",
    created: who.created,
    model: who.model,
    system_fingerprint: null,
    choices: part.usage ? [] : [{
      index: 0,
      delta: part.delta ?? {},
      logprobs: part.logprobs ?? null,
      finish_reason: part.finish ?? null,
    }],
  };
  if (who.includeUsage) chunk.usage = part.usage ?? null;
  return chunk;
}

export function completion(
  who: ResponseIdentity,
  part: {
    text?: string;
    finish?: FinishReason;
    usage?: Usage;
    logprobs?: CompletionLogprobs | null;
    stream: boolean;
  },
): Completion {
  const c: Completion = {
    id: who.id,
    object: "text_completion",
    created: who.created,
    model: who.model,
    system_fingerprint: null,
    choices: part.stream && part.usage ? [] : [{
      index: 0,
      text: part.text ?? "",
      logprobs: part.logprobs ?? null,
      finish_reason: part.finish ?? null,
    }],
  };
  if (!part.stream) c.usage = part.usage;
  else if (who.includeUsage) c.usage = part.usage ?? null;
  return c;
}

export function modelList(modelId: string, created: number): ModelList {
  return { object: "list", data: [{ id: modelId, object: "model", created, owned_by: "local" }] };
}
