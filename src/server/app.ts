/**
 * The OpenAI-compatible HTTP server: a Hono app whose routes are one table, a wrapper that turns
 * every exception into OpenAI-style JSON, Bearer-key auth on /v1/*, request metrics, and /health
 * answering while the model loads. `serve()` runs it on Deno.serve (127.0.0.1:8000 by default).
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
import { GenerationQueue } from "./queue.ts";
import { ServerMetrics } from "./metrics.ts";
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
  /** The model, or the promise of it while it loads (/health says "loading" until then). */
  model: LanguageModel | Promise<LanguageModel>;
  tokenizer: Tokenizer;
  /** The id clients name in "model" and GET /v1/models lists. */
  modelId: string;
  /** When set, /v1/* requires `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  maxBodyBytes?: number;
  defaultMaxTokens?: number;
  /** Expert cache figures (hits, misses, evictions, bytesUploaded, coldLoadSeconds, ...). */
  cacheStats?: () => Record<string, number>;
}

type Handler = (c: Context) => Response | Promise<Response>;

/** The model's load state, shared by /health and the endpoints. */
class ModelState {
  model: LanguageModel | null = null;
  failure: string | null = null;

  constructor(model: LanguageModel | Promise<LanguageModel>) {
    Promise.resolve(model).then(
      (m) => this.model = m,
      (e) => this.failure = e instanceof Error ? e.message : String(e),
    );
  }

  ready(): LanguageModel {
    if (this.failure !== null) throw new ModelLoadFailedError(this.failure);
    if (this.model === null) throw new ModelLoadingError();
    return this.model;
  }
}

const INDEX_HTML = new URL("../../web/index.html", import.meta.url);

/** Hit rate from hits and misses when the callback does not give one. */
function withHitRate(stats: Record<string, number>): Record<string, number> {
  if ("hitRate" in stats || !("hits" in stats && "misses" in stats)) return stats;
  const total = stats.hits + stats.misses;
  return { ...stats, hitRate: total > 0 ? stats.hits / total : 0 };
}

export function createApp(opts: AppOptions): Hono {
  const state = new ModelState(opts.model);
  const queue = new GenerationQueue();
  const metrics = new ServerMetrics();
  const created = Math.floor(Date.now() / 1000);
  let template: ChatTemplate | null = null;
  const cacheStats = () => withHitRate(opts.cacheStats?.() ?? {});
  const ctx: EndpointContext = {
    modelId: opts.modelId,
    maxBodyBytes: opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES,
    runner: (): RunnerContext => ({
      model: state.ready(),
      tokenizer: opts.tokenizer,
      queue,
      metrics,
      defaultMaxTokens: opts.defaultMaxTokens ?? DEFAULT_MAX_TOKENS,
    }),
    template: () => template ??= chatTemplateFromConfig(opts.tokenizer.config, opts.tokenizer),
  };

  const health: Handler = (c) => {
    if (state.failure !== null) return c.json({ status: "error", error: state.failure }, 500);
    return state.model ? c.json({ status: "ok" }) : c.json({ status: "loading" }, 503);
  };
  const stats: Handler = (c) =>
    c.json({
      model: opts.modelId,
      status: state.model ? "ok" : state.failure ? "error" : "loading",
      generations: metrics.generations,
      promptTokens: metrics.promptTokens,
      completionTokens: metrics.completionTokens,
      tokensPerSecond: metrics.lastTokensPerSecond,
      queue: { waiting: queue.waiting, busy: queue.busy },
      cache: cacheStats(),
    });
  const page: Handler = async (c) => c.html(await Deno.readTextFile(INDEX_HTML));

  // deno-fmt-ignore
  const ROUTES: [method: "GET" | "POST", path: string, handler: Handler][] = [
    ["POST", "/v1/chat/completions", (c) => chatCompletions(ctx, c.req.raw)],
    ["POST", "/v1/completions",      (c) => completions(ctx, c.req.raw)],
    ["GET",  "/v1/models",           (c) => c.json(modelList(opts.modelId, created))],
    ["GET",  "/health",              health],
    ["GET",  "/metrics",             (c) => c.text(metrics.render(queue, cacheStats()))],
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
