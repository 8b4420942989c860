/**
 * `main.ts serve [flags]` (see SERVE_SPEC, or `main.ts serve --help`): checks every flag, loads the
 * tokenizer, starts the OpenAI-compatible server at once (/health answers "loading" while the model
 * opens on the GPU in the engine worker), and serves until interrupted; then it closes the worker.
 * The API key may also come from the environment variable QWEN_MOE_API_KEY.
 */
import { basename, resolve } from "node:path";
import {
  type CommandSpec,
  type Flags,
  info,
  intFlag,
  parseFlags,
  UsageError,
} from "../cli/args.ts";
import {
  RUNTIME_BOOLEAN_FLAGS,
  RUNTIME_FLAGS,
  RUNTIME_STRING_FLAGS,
  runtimeOptions,
} from "../cli/runtime.ts";
import { DEFAULT_MODEL_DIR } from "../model_dir.ts";
import { loadTokenizer } from "../tokenizer.ts";
import { WorkerEngine } from "../engine/worker_engine.ts";
import { DEFAULT_HOST, DEFAULT_MAX_BODY_BYTES, DEFAULT_PORT, serve } from "./app.ts";

import { DEFAULT_MAX_QUEUE } from "../engine/local.ts";

export { expertCacheStats } from "../engine/local.ts";

/** Context the server's sessions get unless --max-context says otherwise. */
const DEFAULT_SERVE_CONTEXT = 4096;
/** Sequences the server decodes together unless --max-batch says otherwise (fewer when the
 * device cannot allocate their KV caches). */
const DEFAULT_SERVE_SEQUENCES = 16;
const API_KEY_ENV = "QWEN_MOE_API_KEY";
const MAX_PORT = 65535;

export const SERVE_SPEC: CommandSpec = {
  name: "serve",
  summary: "the OpenAI-compatible server (chat page at /, API at /v1, /health, /metrics, /stats)",
  usage: "[--model DIR] [--host H] [--port P] [--api-key KEY] [flags]",
  flags: [
    { name: "host", arg: "H", help: `address to listen on (${DEFAULT_HOST})` },
    { name: "port", arg: "P", help: `port to listen on, 0 for any free one (${DEFAULT_PORT})` },
    {
      name: "api-key",
      arg: "KEY",
      help: `require Authorization: Bearer KEY on /v1/* (or set ${API_KEY_ENV})`,
    },
    { name: "api-key-all", help: "require the key on /metrics and /stats too (not /health, /)" },
    {
      name: "allowed-host",
      arg: "NAME",
      help: "accept this Host header besides the listen address (a proxy's name; * for any)",
      repeatable: true,
    },
    {
      name: "cors-origin",
      arg: "ORIGIN",
      help: "allow cross-origin browser requests from ORIGIN (https://host[:port]; * for any)",
      repeatable: true,
    },
    { name: "model-id", arg: "ID", help: "the model id clients send (the model dir's name)" },
    {
      name: "max-body-bytes",
      arg: "N",
      help: `largest request body accepted (${DEFAULT_MAX_BODY_BYTES})`,
    },
    {
      name: "max-queue",
      arg: "N",
      help: `requests that may wait for a place; more get 503 + Retry-After (${DEFAULT_MAX_QUEUE})`,
    },
    ...RUNTIME_FLAGS,
  ],
};

/** The runtime flags alone (what the engine worker opens; the API key stays here). */
function runtimeFlags(flags: Flags): Flags {
  const names = [...RUNTIME_STRING_FLAGS, ...RUNTIME_BOOLEAN_FLAGS];
  return {
    "max-batch": String(DEFAULT_SERVE_SEQUENCES),
    ...Object.fromEntries(names.filter((n) => flags[n] !== undefined).map((n) => [n, flags[n]])),
  };
}

/** A repeatable flag's values. */
function list(flags: Flags, name: string): string[] {
  const v = flags[name];
  return Array.isArray(v) ? v : typeof v === "string" ? [v] : [];
}

/** "https://host[:port]" as browsers send it in Origin, or "*"; anything else is a UsageError. */
function corsOrigin(text: string): string {
  if (text === "*") return text;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new UsageError(`--cors-origin: "${text}" is not an origin like https://app.example`);
  }
  if (url.origin === "null" || `${url.origin}/` !== url.href.replace(/\/?$/, "/")) {
    throw new UsageError(`--cors-origin: "${text}" is not an origin (scheme://host[:port] only)`);
  }
  return url.origin;
}

export async function serveCommand(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, SERVE_SPEC);
  // every flag is checked here, before the tokenizer and the model load
  const port = intFlag(flags, "port", DEFAULT_PORT, 0, MAX_PORT);
  const maxBodyBytes = intFlag(flags, "max-body-bytes", DEFAULT_MAX_BODY_BYTES, 1);
  const runtime = runtimeOptions(runtimeFlags(flags), DEFAULT_SERVE_CONTEXT);
  const maxQueue = intFlag(flags, "max-queue", DEFAULT_MAX_QUEUE, 0);
  const corsOrigins = list(flags, "cors-origin").map(corsOrigin);
  const allowedHosts = list(flags, "allowed-host");
  const apiKey = (flags["api-key"] as string | undefined) ?? Deno.env.get(API_KEY_ENV);
  if (apiKey === "") throw new UsageError("--api-key: the key is empty");
  if (flags["api-key-all"] && apiKey === undefined) {
    throw new UsageError(`--api-key-all needs --api-key KEY (or ${API_KEY_ENV})`);
  }
  const dir = (flags.model as string | undefined) ?? DEFAULT_MODEL_DIR;
  const tokenizer = await loadTokenizer(dir);
  const engine = WorkerEngine.start({
    kind: "runtime",
    flags: runtimeFlags(flags),
    defaultContext: DEFAULT_SERVE_CONTEXT,
    maxQueue,
  });
  const stop = new AbortController();
  Deno.addSignalListener("SIGINT", () => stop.abort());
  const { server, url } = serve({
    signal: stop.signal,
    engine,
    tokenizer,
    modelId: (flags["model-id"] as string | undefined) ?? basename(resolve(dir)),
    apiKey,
    apiKeyAll: !!flags["api-key-all"],
    allowedHosts,
    corsOrigins,
    maxBodyBytes,
    stepsPerReadback: runtime.stepsPerReadback ?? null,
    host: (flags.host as string | undefined) ?? DEFAULT_HOST,
    port,
  });
  info(`serving ${url} (chat page at ${url}/, OpenAI API at ${url}/v1)`);
  await server.finished;
  await (await engine.catch(() => null))?.close();
  return 0;
}
