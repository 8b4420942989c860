/**
 * Parses and checks the JSON body of /v1/chat/completions and /v1/completions into a typed
 * request. Every failure is a 400 naming the parameter; parameters this server does not implement
 * (n > 1, tools, ...) are refused by name rather than silently ignored.
 */
import type { ChatMessage } from "../chat_template.ts";
import type { SamplingParams } from "../sampling.ts";
import type { ExpertSetMode } from "../types.ts";
import { EXPERT_SET_MODES, isExpertSetMode } from "../gpu/expert_sets.ts";
import { MAX_CHAT_TOP_LOGPROBS, MAX_COMPLETION_LOGPROBS } from "../logprobs.ts";
import {
  InvalidParameterError,
  MissingParameterError,
  UnsupportedParameterError,
} from "./errors.ts";

/** What both endpoints share once parsed. */
export interface GenerationRequest {
  /** The model named by the client (checked against the served id by the caller). */
  model: string | null;
  stream: boolean;
  includeUsage: boolean;
  /** null: as many as the context allows, up to the server's default; 0 only with echo. */
  maxTokens: number | null;
  stop: string[];
  sampling: SamplingParams;
  /** Extension: route only among experts already in GPU memory (approximate, no loads);
   * null: the server's default (--router-masking). */
  routerMasking: boolean | null;
  /** Extension: "context" chooses the experts from the prompt (pinned with router masking),
   * "lru" leaves them to the cache; null: the server's default (--expert-set). */
  expertSet: ExpertSetMode | null;
  /** Log-probabilities with this many top alternatives per token (chat: top_logprobs once
   * logprobs is true; completions: logprobs); null: none. */
  logprobs: number | null;
}

export interface ChatRequest extends GenerationRequest {
  messages: ChatMessage[];
}

export interface CompletionRequest extends GenerationRequest {
  /** Text, or token ids. */
  prompt: string | number[];
  /** The prompt's text goes before the completion's (and its tokens' logprobs before theirs). */
  echo: boolean;
}

/** OpenAI's limit on stop sequences. */
const MAX_STOP_SEQUENCES = 4;
/** OpenAI's temperature range. */
const MAX_TEMPERATURE = 2;
/** OpenAI's range for presence and frequency penalties: [-2, 2]. */
const MAX_PENALTY = 2;

/** Accepted and ignored: they do not change the generated tokens. */
const IGNORED = ["user", "metadata", "store", "service_tier"];

/** Roles the chat template understands; "developer" is OpenAI's newer name for "system". */
const ROLES = new Set(["system", "developer", "user", "assistant", "tool"]);

type Body = Record<string, unknown>;

const isNull = (v: unknown) => v === undefined || v === null;

function num(body: Body, key: string, min: number, max: number, integer = false): number | null {
  const v = body[key];
  if (isNull(v)) return null;
  if (typeof v !== "number" || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
    throw new InvalidParameterError(
      key,
      `expected ${integer ? "an integer" : "a number"}, got ${JSON.stringify(v)}`,
    );
  }
  if (v < min || v > max) {
    throw new InvalidParameterError(key, `${v} is out of range [${min}, ${max}]`);
  }
  return v;
}

function bool(body: Body, key: string): boolean | null {
  const v = body[key];
  if (isNull(v)) return null;
  if (typeof v !== "boolean") {
    throw new InvalidParameterError(key, `expected a boolean, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** One of the expert set modes, or null when absent. */
function expertSet(body: Body, key: string): ExpertSetMode | null {
  const v = body[key];
  if (isNull(v)) return null;
  if (!isExpertSetMode(v)) {
    const modes = EXPERT_SET_MODES.map((m) => JSON.stringify(m)).join(" or ");
    throw new InvalidParameterError(key, `expected ${modes}, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Refuses a parameter unless its value is one that means "off". */
function refuseUnless(body: Body, key: string, off: (v: unknown) => boolean, detail: string) {
  if (key in body && !isNull(body[key]) && !off(body[key])) {
    throw new UnsupportedParameterError(key, detail);
  }
}

function parseStop(body: Body): string[] {
  const v = body.stop;
  if (isNull(v)) return [];
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || list.some((s) => typeof s !== "string")) {
    throw new InvalidParameterError("stop", "expected a string or an array of strings");
  }
  if (list.length > MAX_STOP_SEQUENCES) {
    throw new InvalidParameterError("stop", `at most ${MAX_STOP_SEQUENCES} stop sequences`);
  }
  return list as string[];
}

/** Parses what both endpoints share; max_tokens may be 0 only when `zeroMaxTokens` (echo). */
function parseCommon(
  body: Body,
  known: string[],
  zeroMaxTokens = false,
): Omit<GenerationRequest, "logprobs"> {
  const allowed = new Set([...known, ...IGNORED, ...COMMON_KEYS]);
  for (const key of Object.keys(body)) {
    if (!allowed.has(key)) throw new UnsupportedParameterError(key, "unknown parameter");
  }
  refuseUnless(body, "n", (v) => v === 1, "only n=1 is served");
  refuseUnless(
    body,
    "logit_bias",
    (v) => typeof v === "object" && Object.keys(v!).length === 0,
    "logit_bias is not implemented",
  );
  refuseUnless(
    body,
    "response_format",
    (v) => (v as Body)?.type === "text",
    'only {"type":"text"} is served',
  );
  for (const key of ["tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"]) {
    refuseUnless(
      body,
      key,
      (v) => Array.isArray(v) && v.length === 0,
      "tool calling is not implemented",
    );
  }
  if (!isNull(body.model) && typeof body.model !== "string") {
    throw new InvalidParameterError("model", "expected a string");
  }
  const opts = body.stream_options;
  if (!isNull(opts) && (typeof opts !== "object" || Array.isArray(opts))) {
    throw new InvalidParameterError("stream_options", "expected an object");
  }
  const includeUsage = isNull(opts) ? null : bool(opts as Body, "include_usage");
  const maxA = num(body, "max_tokens", 0, Number.MAX_SAFE_INTEGER, true);
  if (maxA === 0 && !zeroMaxTokens) {
    throw new InvalidParameterError(
      "max_tokens",
      "must be at least 1 (0 is served only by /v1/completions with echo: true)",
    );
  }
  const maxB = num(body, "max_completion_tokens", 1, Number.MAX_SAFE_INTEGER, true);
  const topK = num(body, "top_k", -1, Number.MAX_SAFE_INTEGER, true) ?? 0;
  const topP = num(body, "top_p", 0, 1) ?? 1;
  if (topP === 0) throw new InvalidParameterError("top_p", "must be greater than 0");
  const rep = num(body, "repetition_penalty", 0, Number.MAX_VALUE) ?? 1;
  if (rep === 0) throw new InvalidParameterError("repetition_penalty", "must be greater than 0");
  const seed = num(body, "seed", Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, true);
  return {
    model: (body.model as string | undefined) ?? null,
    stream: bool(body, "stream") ?? false,
    includeUsage: includeUsage ?? false,
    maxTokens: maxB ?? maxA,
    stop: parseStop(body),
    routerMasking: bool(body, "router_masking"),
    expertSet: expertSet(body, "expert_set"),
    sampling: {
      temperature: num(body, "temperature", 0, MAX_TEMPERATURE) ?? 1,
      topK: topK < 0 ? 0 : topK,
      topP,
      minP: num(body, "min_p", 0, 1) ?? 0,
      repetitionPenalty: rep,
      presencePenalty: num(body, "presence_penalty", -MAX_PENALTY, MAX_PENALTY) ?? 0,
      frequencyPenalty: num(body, "frequency_penalty", -MAX_PENALTY, MAX_PENALTY) ?? 0,
      ...(seed === null ? {} : { seed }),
    },
  };
}

/** Keys both endpoints understand. */
const COMMON_KEYS = [
  "model",
  "stream",
  "stream_options",
  "max_tokens",
  "max_completion_tokens",
  "temperature",
  "top_p",
  "top_k",
  "min_p",
  "repetition_penalty",
  "presence_penalty",
  "frequency_penalty",
  "seed",
  "router_masking",
  "expert_set",
  "stop",
  "n",
  "logit_bias",
  "response_format",
  "tools",
  "tool_choice",
  "functions",
  "function_call",
  "parallel_tool_calls",
];

/** The text of a message's content: a string, or an array of {type: "text", text} parts. */
function contentText(v: unknown, at: string): string {
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    return v.map((part, i) => {
      const p = part as Body;
      if (p?.type !== "text") {
        throw new UnsupportedParameterError(
          `${at}[${i}].type`,
          "only text content parts are served",
        );
      }
      if (typeof p.text !== "string") {
        throw new InvalidParameterError(`${at}[${i}].text`, "expected a string");
      }
      return p.text;
    }).join("");
  }
  throw new InvalidParameterError(at, "expected a string or an array of text parts");
}

export function parseChatRequest(body: Body): ChatRequest {
  const common = parseCommon(body, ["messages", "logprobs", "top_logprobs"]);
  const logprobs = bool(body, "logprobs") ?? false;
  const top = num(body, "top_logprobs", 0, MAX_CHAT_TOP_LOGPROBS, true);
  if (top !== null && !logprobs) {
    throw new InvalidParameterError("top_logprobs", "requires logprobs: true");
  }
  if (isNull(body.messages)) throw new MissingParameterError("messages");
  if (!Array.isArray(body.messages)) {
    throw new InvalidParameterError("messages", "expected an array");
  }
  if (body.messages.length === 0) {
    throw new InvalidParameterError("messages", "must hold at least one message");
  }
  const messages = body.messages.map((m: unknown, i: number): ChatMessage => {
    const msg = m as Body;
    if (typeof msg !== "object" || msg === null || Array.isArray(msg)) {
      throw new InvalidParameterError(`messages[${i}]`, "expected an object");
    }
    if (typeof msg.role !== "string" || !ROLES.has(msg.role)) {
      throw new InvalidParameterError(
        `messages[${i}].role`,
        `expected one of ${[...ROLES].join(", ")}`,
      );
    }
    const role = msg.role === "developer" ? "system" : msg.role;
    return { role, content: contentText(msg.content, `messages[${i}].content`) };
  });
  return { ...common, logprobs: logprobs ? top ?? 0 : null, messages };
}

export function parseCompletionRequest(body: Body, vocabSize: number): CompletionRequest {
  const echo = bool(body, "echo") ?? false;
  const common = parseCommon(
    body,
    ["prompt", "logprobs", "echo", "suffix", "best_of"],
    echo,
  );
  const logprobs = num(body, "logprobs", 0, MAX_COMPLETION_LOGPROBS, true);
  if (common.stream && echo && logprobs !== null) {
    throw new UnsupportedParameterError(
      "echo",
      "echo with logprobs is not served when streaming; ask with stream: false",
    );
  }
  refuseUnless(body, "suffix", (v) => v === "", "suffix (insertion) is not implemented");
  refuseUnless(body, "best_of", (v) => v === 1, "only best_of=1 is served");
  const parsed = { ...common, logprobs, echo };
  let prompt = body.prompt;
  if (isNull(prompt)) throw new MissingParameterError("prompt");
  if (
    Array.isArray(prompt) && prompt.length === 1 &&
    (typeof prompt[0] === "string" || Array.isArray(prompt[0]))
  ) {
    prompt = prompt[0]; // a batch of one (lm-evaluation-harness sends [[ids]])
  }
  if (typeof prompt === "string") {
    if (prompt.length === 0) throw new InvalidParameterError("prompt", "must not be empty");
    return { ...parsed, prompt };
  }
  if (
    Array.isArray(prompt) && prompt.length > 0 &&
    prompt.every((t) => Number.isInteger(t) && t >= 0 && t < vocabSize)
  ) {
    return { ...parsed, prompt: prompt as number[] };
  }
  if (
    Array.isArray(prompt) && prompt.length > 1 &&
    prompt.every((t) => typeof t === "string" || Array.isArray(t))
  ) {
    throw new UnsupportedParameterError("prompt", "batches of several prompts are not served");
  }
  throw new InvalidParameterError(
    "prompt",
    `expected a non-empty string or array of token ids in [0, ${vocabSize})`,
  );
}
