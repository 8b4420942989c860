/**
 * The OpenAI-compatible HTTP server: a Hono app whose routes are one table, a wrapper that turns
 * every exception into OpenAI-style JSON, Bearer-key auth on /v1/*, request metrics, and /health
 * answering while the engine loads. `serve()` runs it on Deno.serve (127.0.0.1:8000 by default).
 * The model runs in an Engine (a WorkerEngine for `main.ts serve`): /health, /metrics and /stats
 * never wait on it.
 */
import { type Context, Hono } from "hono";
import type { LanguageModel } from "../types.ts";
import type { Tokenizer } from "../tokenizer.ts";
import { type ChatTemplate, chatTemplateFromConfig } from "../chat_template.ts";
import {
  ApiError,
  AuthenticationError,
  internalError,
  ModelLoadFailedError,
  ModelLoadingError,
  RouteNotFoundError,
} from "./errors.ts";
import { ServerMetrics, splitEngineStats } from "./metrics.ts";
import type { Engine } from "../engine/engine.ts";
import { LocalEngine } from "../engine/local.ts";
import type { RunnerContext } from "./runner.ts";
import { chatCompletions, completions, type EndpointContext } from "./endpoints.ts";
import { modelList } from "./openai_types.ts";

/** OpenAI's own request body limit is far larger; 4 MiB holds any prompt a context can take. */
export const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;
/** Completion length when a request sets no max_tokens (still capped by the context left). */
export const DEFAULT_MAX_TOKENS = 512;
export const DEFAULT_HOST = "127.0.0.1";
export const DEFAULT_PORT = 8000;

export interface AppOptions {
  /** The engine, or the promise of it while it loads (/health says "loading" until then). */
  engine?: Engine | Promise<Engine>;
  /** In-process alternative to `engine`: the model (or its promise), run by a LocalEngine. */
  model?: LanguageModel | Promise<LanguageModel>;
  /** Encodes prompts and renders the chat template on the server's thread. */
  tokenizer: Tokenizer;
  /** The id clients name in "model" and GET /v1/models lists. */
  modelId: string;
  /** When set, /v1/* requires `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  maxBodyBytes?: number;
  defaultMaxTokens?: number;
  /** Figures merged over the engine's stats() (hits, misses, evictions, bytesUploaded, ...). */
  cacheStats?: () => Record<string, number>;
  /** Decode steps per GPU readback for every job; absent or null: adaptive. */
  stepsPerReadback?: number | null;
}

type Handler = (c: Context) => Response | Promise<Response>;

/** The engine's load state, shared by /health, /metrics, /stats and the endpoints. */
class EngineState {
  engine: Engine | null = null;
  failure: string | null = null;

  constructor(engine: Engine | Promise<Engine>) {
    Promise.resolve(engine).then(
      (e) => this.engine = e,
      (e) => this.failure = e instanceof Error ? e.message : String(e),
    );
  }

  get status(): "ok" | "loading" | "error" {
    return this.engine ? "ok" : this.failure !== null ? "error" : "loading";
  }

  ready(): Engine {
    if (this.failure !== null) throw new ModelLoadFailedError(this.failure);
    if (this.engine === null) throw new ModelLoadingError();
    return this.engine;
  }
}

/** The engine given, or a LocalEngine over the model given. */
function engineOf(opts: AppOptions): Engine | Promise<Engine> {
  if (opts.engine !== undefined) return opts.engine;
  if (opts.model === undefined) throw new TypeError("createApp() needs an engine or a model");
  return Promise.resolve(opts.model).then((m) => new LocalEngine(m, opts.tokenizer));
}

const INDEX_HTML = new URL("../../web/index.html", import.meta.url);

export function createApp(opts: AppOptions): Hono {
  const state = new EngineState(engineOf(opts));
  const metrics = new ServerMetrics();
  const created = Math.floor(Date.now() / 1000);
  let template: ChatTemplate | null = null;
  /** The engine's latest figures (never waits on a worker), plus the cacheStats callback's. */
  const engineStats = () => splitEngineStats({ ...state.engine?.stats(), ...opts.cacheStats?.() });
  const ctx: EndpointContext = {
    modelId: opts.modelId,
    maxBodyBytes: opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES,
    runner: (): RunnerContext => ({
      engine: state.ready(),
      tokenizer: opts.tokenizer,
      metrics,
      defaultMaxTokens: opts.defaultMaxTokens ?? DEFAULT_MAX_TOKENS,
      stepsPerReadback: opts.stepsPerReadback ?? null,
    }),
    template: () => template ??= chatTemplateFromConfig(opts.tokenizer.config, opts.tokenizer),
  };

  const health: Handler = (c) => {
    if (state.failure !== null) return c.json({ status: "error", error: state.failure }, 500);
    return state.engine ? c.json({ status: "ok" }) : c.json({ status: "loading" }, 503);
  };
  const stats: Handler = (c) => {
    const s = engineStats();
    return c.json({
      model: opts.modelId,
      status: state.status,
      generations: metrics.generations,
      promptTokens: metrics.promptTokens,
      completionTokens: metrics.completionTokens,
      tokensPerSecond: metrics.lastTokensPerSecond,
      queue: s.queue,
      sessions: s.sessions,
      cache: s.cache,
    });
  };
  const page: Handler = async (c) => c.html(await Deno.readTextFile(INDEX_HTML));

  // deno-fmt-ignore
  const ROUTES: [method: "GET" | "POST", path: string, handler: Handler][] = [
    ["POST", "/v1/chat/completions", (c) => chatCompletions(ctx, c.req.raw)],
    ["POST", "/v1/completions",      (c) => completions(ctx, c.req.raw)],
    ["GET",  "/v1/models",           (c) => c.json(modelList(opts.modelId, created))],
    ["GET",  "/health",              health],
    ["GET",  "/metrics",             (c) => c.text(metrics.render(engineStats()))],
    ["GET",  "/stats",               stats],
    ["GET",  "/",                    page],
  ];
  const known = new Set(ROUTES.map(([m, p]) => `${m} ${p}`));

  const app = new Hono();
  app.use("*", async (c, next) => {
    await next();
    const key = `${c.req.method} ${c.req.path}`;
    metrics.countRequest(known.has(key) ? c.req.path : "unmatched", c.res.status);
  });
  app.use("/v1/*", async (c, next) => {
    if (opts.apiKey === undefined) return await next();
    const auth = c.req.header("authorization");
    if (auth === undefined) throw new AuthenticationError(true);
    if (auth !== `Bearer ${opts.apiKey}`) throw new AuthenticationError(false);
    await next();
  });
  for (const [method, path, handler] of ROUTES) app.on(method, path, handler);
  app.notFound((c) => {
    const e = new RouteNotFoundError(c.req.method, c.req.path);
    return c.json(e.toJSON(), 404);
  });
  app.onError((e, c) => {
    const err = e instanceof ApiError ? e : internalError(e);
    if (!(e instanceof ApiError)) console.error(`${c.req.method} ${c.req.path}:`, e);
    return new Response(JSON.stringify(err.toJSON()), {
      status: err.status,
      headers: { "content-type": "application/json" },
    });
  });
  return app;
}

export interface ServeOptions extends AppOptions {
  host?: string;
  /** 0 picks a free port (see the returned url). */
  port?: number;
  /** Aborting it shuts the server down. */
  signal?: AbortSignal;
}

export interface RunningServer {
  server: Deno.HttpServer<Deno.NetAddr>;
  /** http://host:port of the listening socket. */
  url: string;
  app: Hono;
}

/** Starts the server on Deno.serve. */
export function serve(opts: ServeOptions): RunningServer {
  const app = createApp(opts);
  const server = Deno.serve({
    hostname: opts.host ?? DEFAULT_HOST,
    port: opts.port ?? DEFAULT_PORT,
    signal: opts.signal,
    onListen: () => {},
  }, app.fetch);
  const { hostname, port } = server.addr;
  return { server, url: `http://${hostname}:${port}`, app };
}
