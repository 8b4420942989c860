/**
 * The OpenAI-compatible HTTP server: a Hono app whose routes are one table, a wrapper that turns
 * every exception into OpenAI-style JSON (details to the log, never to the client), request
 * metrics, and /health answering while the engine loads or reloads. `serve()` runs it on
 * Deno.serve (127.0.0.1:8000 by default). The model runs in an Engine (a WorkerEngine for
 * `main.ts serve`): /health, /metrics and /stats never wait on it.
 *
 * Access, in the order the middleware applies it:
 *   1. Host: a request whose Host header is not an address the server listens on (plus
 *      `allowedHosts`) is refused, so a DNS-rebinding page cannot reach a loopback server.
 *   2. Origin (CORS): a browser request from another origin is refused unless `corsOrigins`
 *      allows it; then it gets Access-Control-Allow-* headers and its OPTIONS preflight a 204.
 *   3. API key: with `apiKey`, /v1/* needs `Authorization: Bearer KEY` (hono's bearerAuth, a
 *      constant-time comparison); with `apiKeyAll` also /metrics and /stats. /health (for load
 *      balancers) and the static chat page stay open.
 */
import { type Context, Hono } from "hono";
import { bearerAuth } from "hono/bearer-auth";
import { HTTPException } from "hono/http-exception";
import type { LanguageModel } from "../types.ts";
import type { Tokenizer } from "../tokenizer.ts";
import { type ChatTemplate, chatTemplateFromConfig } from "../chat_template.ts";
import {
  ApiError,
  AuthenticationError,
  HostNotAllowedError,
  ModelLoadFailedError,
  ModelLoadingError,
  ModelNotFoundError,
  ModelUnavailableError,
  OriginNotAllowedError,
  RouteNotFoundError,
  toApiError,
} from "./errors.ts";
import { type GenerationOutcome, ServerMetrics, splitEngineStats } from "./metrics.ts";
import type { Engine, EngineJob } from "../engine/engine.ts";
import { LocalEngine } from "../engine/local.ts";
import type { RunnerContext } from "./runner.ts";
import { chatCompletions, completions, type EndpointContext } from "./endpoints.ts";
import { modelList } from "./openai_types.ts";
import type { GenerationResult, Piece } from "../generate.ts";
import type { EngineHealth } from "../engine/worker_engine.ts";

/** OpenAI's own request body limit is far larger; 4 MiB holds any prompt a context can take. */
export const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;
/** Completion length when a request sets no max_tokens (still capped by the context left). */
export const DEFAULT_MAX_TOKENS = 512;
export const DEFAULT_HOST = "127.0.0.1";
export const DEFAULT_PORT = 8000;
/** How long a browser may cache a CORS preflight answer. */
const CORS_MAX_AGE_SECONDS = 600;

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
  /** With apiKey: /metrics and /stats require it too (/health and the chat page stay open). */
  apiKeyAll?: boolean;
  /**
   * Host names (or name:port) accepted in the Host header besides the addresses served; "*"
   * accepts any. serve() checks Host always; createApp() alone only when `served` is given.
   */
  allowedHosts?: string[];
  /** The served addresses (set by serve()): Host must name one of them or an allowedHost. */
  served?: ServedAddress;
  /** Origins (e.g. "https://app.example") allowed cross-origin; "*" allows any. Default none. */
  corsOrigins?: string[];
  maxBodyBytes?: number;
  defaultMaxTokens?: number;
  /** Figures merged over the engine's stats() (hits, misses, evictions, bytesUploaded, ...). */
  cacheStats?: () => Record<string, number>;
  /** Decode steps per GPU readback for every job; absent or null: adaptive. */
  stepsPerReadback?: number | null;
}

/** An engine's health, when it reports one (WorkerEngine does), else "ok". */
function healthOf(engine: Engine): EngineHealth {
  const e = engine as Engine & { health?: () => EngineHealth };
  return e.health?.() ?? { status: "ok" };
}

type Variables = { route: string };
type Ctx = Context<{ Variables: Variables }>;
type Handler = (c: Ctx) => Response | Promise<Response>;

/** The engine's load state, shared by /health, /metrics, /stats and the endpoints. */
class EngineState {
  engine: Engine | null = null;
  loadFailed = false;

  constructor(engine: Engine | Promise<Engine>) {
    Promise.resolve(engine).then(
      (e) => this.engine = e,
      (e) => {
        this.loadFailed = true;
        console.error("the model failed to load:", e);
      },
    );
  }

  health(): EngineHealth | { status: "loading" } {
    if (this.loadFailed) return { status: "error", message: new ModelLoadFailedError().message };
    if (this.engine === null) return { status: "loading" };
    return healthOf(this.engine);
  }

  ready(): Engine {
    const h = this.health();
    if (h.status === "loading") throw new ModelLoadingError();
    if (h.status === "unavailable") throw new ModelUnavailableError(h.message);
    if (h.status === "error") throw new ModelLoadFailedError();
    return this.engine!;
  }
}

/** The engine given, or a LocalEngine over the model given. */
function engineOf(opts: AppOptions): Engine | Promise<Engine> {
  if (opts.engine !== undefined) return opts.engine;
  if (opts.model === undefined) throw new TypeError("createApp() needs an engine or a model");
  return Promise.resolve(opts.model).then((m) => new LocalEngine(m, opts.tokenizer));
}

/**
 * `engine` as the runner sees it, recording in `metrics` every generation that ends without its
 * result (client gone: "aborted"; an error: "failed") with the tokens it produced. Completed
 * generations are recorded by the runner (runJob) with their arrival-based time to first token.
 */
function meteredEngine(engine: Engine, metrics: ServerMetrics): Engine {
  return {
    get info() {
      return engine.info;
    },
    stats: () => engine.stats(),
    close: () => engine.close(),
    checkAdmission: () => engine.checkAdmission(),
    async *run(job: EngineJob, signal: AbortSignal): AsyncGenerator<Piece, GenerationResult> {
      const start = performance.now();
      const it = engine.run(job, signal);
      let first = 0;
      let last = 0;
      let tokens = 0;
      let outcome: GenerationOutcome | null = "aborted"; // until done or thrown
      let queued = true;
      try {
        while (true) {
          const step = await it.next();
          queued = false;
          if (step.done) {
            outcome = null;
            return step.value;
          }
          last = performance.now();
          if (first === 0) first = last;
          tokens++;
          yield step.value;
        }
      } catch (e) {
        const name = (e as Error).name;
        queued &&= name === "QueueAbortedError";
        outcome = signal.aborted || name.endsWith("AbortedError") ? "aborted" : "failed";
        throw e;
      } finally {
        if (outcome !== null) {
          metrics.recordGeneration({
            promptTokens: queued ? 0 : job.promptIds.length,
            completionTokens: tokens,
            ttftSeconds: first > 0 ? (first - start) / 1000 : null,
            decodeSeconds: (last - first) / 1000,
            outcome,
          });
        }
        await it.return(undefined as never);
      }
    },
  };
}

// ---- the Host and Origin checks ----

/** The address a server listens on, as the Host check sees it (port set once listening). */
export interface ServedAddress {
  hostname: string;
  port: number;
}

const LOOPBACK_NAMES = ["localhost", "127.0.0.1", "[::1]"];

/** Whether `host` (a listen address) is reachable from this machine only. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** Whether `host` listens on every interface. */
function isWildcard(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "");
  return h === "0.0.0.0" || h === "::";
}

/** "[::1]" for an IPv6 address, the name itself otherwise (as a Host header writes it). */
function hostForm(name: string): string {
  return name.includes(":") && !name.startsWith("[") ? `[${name}]` : name.toLowerCase();
}

/** The names a Host header may give for a server listening on `hostname`. */
export function servedHostNames(hostname: string): string[] {
  if (isLoopback(hostname)) return [...LOOPBACK_NAMES, hostForm(hostname)];
  if (!isWildcard(hostname)) return [hostForm(hostname)];
  const names = [...LOOPBACK_NAMES];
  try {
    names.push(Deno.hostname().toLowerCase());
    for (const i of Deno.networkInterfaces()) names.push(hostForm(i.address));
  } catch {
    // without --allow-sys only the loopback names and --allowed-host NAME are known
  }
  return names;
}

/** Splits a Host header into its host and port ("" when absent). */
function splitHost(header: string): { host: string; port: string } {
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(header.trim().toLowerCase());
  return m ? { host: m[1], port: m[2] ?? "" } : { host: "", port: "" };
}

/** The port a Host header without one means. */
const DEFAULT_HTTP_PORT = 80;

/**
 * The Host check: one of `names` (servedHostNames()) on the served port, or an allowed name (or
 * name:port) on any port.
 */
function hostAllowed(
  header: string | undefined,
  names: string[],
  port: number,
  allowed: string[],
): boolean {
  if (allowed.includes("*")) return true;
  if (header === undefined) return false;
  const given = splitHost(header);
  const samePort = given.port === String(port) ||
    (given.port === "" && port === DEFAULT_HTTP_PORT);
  if (samePort && names.includes(given.host)) return true;
  const whole = header.trim().toLowerCase();
  return allowed.some((a) => a.toLowerCase() === given.host || a.toLowerCase() === whole);
}

/** Whether `origin` (an Origin header) is the origin the request was sent to. */
function sameOrigin(origin: string, host: string | undefined): boolean {
  try {
    return host !== undefined && new URL(origin).host === host.toLowerCase();
  } catch {
    return false; // "null" and other opaque origins
  }
}

const INDEX_HTML = new URL("../../web/index.html", import.meta.url);

export function createApp(opts: AppOptions): Hono<{ Variables: Variables }> {
  const state = new EngineState(engineOf(opts));
  const metrics = new ServerMetrics();
  const created = Math.floor(Date.now() / 1000);
  const corsOrigins = opts.corsOrigins ?? [];
  const allowedHosts = opts.allowedHosts ?? [];
  let template: ChatTemplate | null = null;
  let metered: { of: Engine; engine: Engine } | null = null;
  /** The engine's latest figures (never waits on a worker), plus the cacheStats callback's. */
  const engineStats = () => splitEngineStats({ ...state.engine?.stats(), ...opts.cacheStats?.() });
  const ctx: EndpointContext = {
    modelId: opts.modelId,
    maxBodyBytes: opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES,
    runner: (): RunnerContext => {
      const engine = state.ready();
      if (metered?.of !== engine) metered = { of: engine, engine: meteredEngine(engine, metrics) };
      return {
        engine: metered.engine,
        tokenizer: opts.tokenizer,
        metrics,
        defaultMaxTokens: opts.defaultMaxTokens ?? DEFAULT_MAX_TOKENS,
        stepsPerReadback: opts.stepsPerReadback ?? null,
      };
    },
    template: () => template ??= chatTemplateFromConfig(opts.tokenizer.config, opts.tokenizer),
  };

  const health: Handler = (c) => {
    const h = state.health();
    if (h.status === "ok") return c.json({ status: "ok" });
    if (h.status === "loading") return c.json({ status: "loading" }, 503);
    return c.json({ status: h.status, error: h.message }, h.status === "error" ? 500 : 503);
  };
  const stats: Handler = (c) => {
    const s = engineStats();
    return c.json({
      model: opts.modelId,
      status: state.health().status,
      generations: metrics.generations,
      promptTokens: metrics.promptTokens,
      completionTokens: metrics.completionTokens,
      tokensPerSecond: metrics.lastTokensPerSecond,
      queue: s.queue,
      sessions: s.sessions,
      cache: s.cache,
    });
  };
  const model: Handler = (c) => {
    const id = c.req.param("id") ?? "";
    if (id !== opts.modelId) throw new ModelNotFoundError(id, opts.modelId);
    return c.json(modelList(opts.modelId, created).data[0]);
  };
  const page: Handler = async (c) => c.html(await Deno.readTextFile(INDEX_HTML));

  // deno-fmt-ignore
  const ROUTES: [method: "GET" | "POST", path: string, label: string, handler: Handler][] = [
    ["POST", "/v1/chat/completions", "/v1/chat/completions", (c) => chatCompletions(ctx, c.req.raw)],
    ["POST", "/v1/completions",      "/v1/completions",      (c) => completions(ctx, c.req.raw)],
    ["GET",  "/v1/models",           "/v1/models",           (c) => c.json(modelList(opts.modelId, created))],
    ["GET",  "/v1/models/:id{.+}",   "/v1/models/{id}",      model],
    ["GET",  "/health",              "/health",              health],
    ["GET",  "/metrics",             "/metrics",             (c) => c.text(metrics.render(engineStats()))],
    ["GET",  "/stats",               "/stats",               stats],
    ["GET",  "/",                    "/",                    page],
  ];

  const app = new Hono<{ Variables: Variables }>();
  app.use("*", async (c, next) => {
    await next();
    metrics.countRequest(c.get("route") ?? "unmatched", c.res.status);
  });
  for (const [method, path, label] of ROUTES) {
    app.on(method, path, async (c, next) => {
      c.set("route", label); // before the checks below, so refusals count under their route
      await next();
    });
  }
  if (opts.served) {
    const served = opts.served;
    const names = servedHostNames(served.hostname); // the port may be set later (port 0)
    app.use("*", async (c, next) => {
      if (!hostAllowed(c.req.header("host"), names, served.port, allowedHosts)) {
        throw new HostNotAllowedError();
      }
      await next();
    });
  }
  app.use("*", async (c, next) => {
    const origin = c.req.header("origin");
    const preflight = c.req.method === "OPTIONS";
    if (origin === undefined || sameOrigin(origin, c.req.header("host"))) {
      if (!preflight) return await next();
      return c.body(null, 204, { Allow: "GET, POST, OPTIONS" });
    }
    if (!corsOrigins.includes(origin) && !corsOrigins.includes("*")) {
      throw new OriginNotAllowedError();
    }
    const allow = { "Access-Control-Allow-Origin": origin, Vary: "Origin" };
    if (preflight) {
      return c.body(null, 204, {
        ...allow,
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "authorization, content-type",
        "Access-Control-Max-Age": String(CORS_MAX_AGE_SECONDS),
      });
    }
    await next();
    for (const [k, v] of Object.entries(allow)) c.res.headers.set(k, v);
  });
  if (opts.apiKey !== undefined) {
    const deny = (missing: boolean) => () => errorResponse(new AuthenticationError(missing));
    const auth = bearerAuth({
      token: opts.apiKey,
      noAuthenticationHeader: { message: deny(true) },
      invalidAuthenticationHeader: { message: deny(false) },
      invalidToken: { message: deny(false) },
    });
    app.use("/v1/*", auth);
    if (opts.apiKeyAll) { for (const path of ["/metrics", "/stats"]) app.use(path, auth); }
  }
  for (const [method, path, , handler] of ROUTES) app.on(method, path, handler);
  app.notFound((c) => errorResponse(new RouteNotFoundError(c.req.method, c.req.path)));
  app.onError((e, c) => {
    if (e instanceof HTTPException) return e.getResponse();
    return errorResponse(toApiError(e, `${c.req.method} ${c.req.path}`));
  });
  return app;
}

/** An ApiError as its OpenAI-style JSON response. */
function errorResponse(err: ApiError): Response {
  const headers: Record<string, string> = { "content-type": "application/json" };
  // a 503 is temporary (loading, reloading, queue full): say when to come back
  if (err.status === 503) headers["retry-after"] = String(RETRY_AFTER_SECONDS);
  return new Response(JSON.stringify(err.toJSON()), { status: err.status, headers });
}

/** Retry-After of 503 answers. */
const RETRY_AFTER_SECONDS = 1;

/** The warning serve() prints when the server is reachable beyond this machine without a key. */
export function exposureWarning(host: string, apiKey: string | undefined): string | null {
  if (isLoopback(host) || apiKey !== undefined) return null;
  return `warning: listening on ${host} without an API key: anyone who can reach this address ` +
    "can run generations; pass --api-key KEY (or set QWEN_MOE_API_KEY)";
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
  app: Hono<{ Variables: Variables }>;
}

/** Starts the server on Deno.serve, checking every request's Host against the address served. */
export function serve(opts: ServeOptions): RunningServer {
  const host = opts.host ?? DEFAULT_HOST;
  const served: ServedAddress = { hostname: host, port: opts.port ?? DEFAULT_PORT };
  const app = createApp({ ...opts, served });
  const warning = exposureWarning(host, opts.apiKey);
  if (warning) console.error(warning);
  const server = Deno.serve({
    hostname: host,
    port: opts.port ?? DEFAULT_PORT,
    signal: opts.signal,
    onListen: () => {},
  }, app.fetch);
  const { hostname, port } = server.addr;
  served.port = port; // port 0: the one the system picked, before any request is handled
  return { server, url: `http://${hostForm(hostname)}:${port}`, app };
}
