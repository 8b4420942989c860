/**
 * `main.ts serve [--model DIR] [--host H] [--port P] [--api-key KEY] [--model-id ID]
 * [--steps-per-readback N] [runtime flags]`: loads the tokenizer, starts the OpenAI-compatible
 * server at once (/health answers "loading" while the model opens on the GPU in the engine
 * worker), and serves until interrupted; then it closes the worker. The API key may also come
 * from the environment variable QWEN_MOE_API_KEY.
 */
import { basename, resolve } from "node:path";
import { type Flags, info, numberFlag, parseFlags } from "../cli/args.ts";
import { RUNTIME_BOOLEAN_FLAGS, RUNTIME_STRING_FLAGS } from "../cli/runtime.ts";
import { DEFAULT_MODEL_DIR } from "../model_dir.ts";
import { loadTokenizer } from "../tokenizer.ts";
import { WorkerEngine } from "../engine/worker_engine.ts";
import { DEFAULT_HOST, DEFAULT_MAX_BODY_BYTES, DEFAULT_PORT, serve } from "./app.ts";

export { expertCacheStats } from "../engine/local.ts";

/** Context the server's sessions get unless --max-context says otherwise. */
const DEFAULT_SERVE_CONTEXT = 4096;
const API_KEY_ENV = "QWEN_MOE_API_KEY";

/** The runtime flags alone (what the engine worker opens; the API key stays here). */
function runtimeFlags(flags: Flags): Flags {
  const names = [...RUNTIME_STRING_FLAGS, ...RUNTIME_BOOLEAN_FLAGS];
  return Object.fromEntries(names.filter((n) => flags[n] !== undefined).map((n) => [n, flags[n]]));
}

export async function serveCommand(argv: string[]): Promise<number> {
  const serveFlags = [
    "host",
    "port",
    "api-key",
    "model-id",
    "max-body-bytes",
    "steps-per-readback",
  ];
  const flags = parseFlags(
    argv,
    [...new Set([...RUNTIME_STRING_FLAGS, ...serveFlags])],
    RUNTIME_BOOLEAN_FLAGS,
  );
  const port = numberFlag(flags, "port", DEFAULT_PORT, (n) => Number.isInteger(n) && n >= 0);
  const maxBodyBytes = numberFlag(flags, "max-body-bytes", DEFAULT_MAX_BODY_BYTES, (n) => n > 0);
  const stepsPerReadback = flags["steps-per-readback"] === undefined
    ? null
    : numberFlag(flags, "steps-per-readback", 0, (n) => Number.isInteger(n) && n > 0);
  const dir = (flags.model as string | undefined) ?? DEFAULT_MODEL_DIR;
  const tokenizer = await loadTokenizer(dir);
  const engine = WorkerEngine.start({
    kind: "runtime",
    flags: runtimeFlags(flags),
    defaultContext: DEFAULT_SERVE_CONTEXT,
  });
  engine.catch((e) => info(`serve: the model failed to load: ${(e as Error).message}`));
  const stop = new AbortController();
  Deno.addSignalListener("SIGINT", () => stop.abort());
  const { server, url } = serve({
    signal: stop.signal,
    engine,
    tokenizer,
    modelId: (flags["model-id"] as string | undefined) ?? basename(resolve(dir)),
    apiKey: (flags["api-key"] as string | undefined) ?? Deno.env.get(API_KEY_ENV),
    maxBodyBytes,
    stepsPerReadback,
    host: (flags.host as string | undefined) ?? DEFAULT_HOST,
    port,
  });
  info(`serving ${url} (chat page at ${url}/, OpenAI API at ${url}/v1)`);
  await server.finished;
  await (await engine.catch(() => null))?.close();
  return 0;
}
