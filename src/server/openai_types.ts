/**
 * The OpenAI wire format: response records (exactly the fields OpenAI sends) and the builders of
 * each object and streamed chunk for /v1/chat/completions and /v1/completions.
 */
import type { FinishReason } from "../generate.ts";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  system_fingerprint: null;
  choices: {
    index: number;
    message: { role: "assistant"; content: string; refusal: null };
    logprobs: null;
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
    logprobs: null;
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
  choices: { index: number; text: string; logprobs: null; finish_reason: FinishReason | null }[];
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

export function chatCompletion(
  who: ResponseIdentity,
  content: string,
  finish: FinishReason,
  u: Usage,
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
      logprobs: null,
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
      logprobs: null,
      finish_reason: part.finish ?? null,
    }],
  };
  if (who.includeUsage) chunk.usage = part.usage ?? null;
  return chunk;
}

export function completion(
  who: ResponseIdentity,
  part: { text?: string; finish?: FinishReason; usage?: Usage; stream: boolean },
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
      logprobs: null,
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
