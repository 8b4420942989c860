/**
 * Two `main.ts serve` replicas of the embedded default model behind HAProxy running
 * deploy/haproxy.cfg (only its addresses, socket and log target rewritten for loopback). Streamed
 * completions go through HAProxy; one replica is killed (SIGKILL) while it streams one reply and
 * holds others in its queue. Checked: its in-flight streams end (closed or errored) within a
 * bound and never hang, every read has a timeout; every request started after it died succeeds on
 * the survivor with the full token count, both those sent at once (HAProxy's retry on another
 * replica) and those sent after HAProxy marked it down; greedy replies are identical on both
 * replicas. Needs Debian's `haproxy`: installed with apt-get when missing and running as root,
 * otherwise the test is skipped with the reason printed.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CONFIG = `${ROOT}deploy/haproxy.cfg`;
/** Replies long enough that the kill lands mid-stream (~130 tokens/s alone on llvmpipe). */
const MAX_TOKENS = 128;
const PROMPT = "In the beginning God created";
/** Streams started together before the kill: with leastconn, 3 per replica (1 runs, 2 queue). */
const BEFORE = 6;
/** Started the moment the killed process is gone, before HAProxy's checks have noticed. */
const AT_ONCE = 3;
/** Started once HAProxy's stats show the killed replica DOWN. */
const AFTER_DOWN = 3;
/** The victim is killed when its running stream has brought this many text chunks. */
const KILL_AFTER_CHUNKS = 8;
/** No read may wait longer (a queued request waits for the replies ahead of it: seconds). */
const READ_TIMEOUT_MS = 60_000;
/** The killed replica's streams must end this soon after SIGKILL (its teardown takes ~0.5 s). */
const IN_FLIGHT_END_LIMIT_MS = 5_000;
/** HAProxy must mark the killed replica down this soon (observe layer4, or 2 checks of 1 s). */
const DOWN_LIMIT_MS = 10_000;
/** Model load and HAProxy start on a loaded 2-core machine. */
const START_TIMEOUT_MS = 120_000;
/** The name deploy/haproxy.cfg sends as Host (the replicas refuse names they do not know). */
const REPLICA_HOST = "moe-runtime";

/** haproxy's path, or null with the reason printed (decided at load: `ignore` needs it). */
async function haproxyPath(): Promise<string | null> {
  const find = () => {
    const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/usr/local/sbin"];
    for (const dir of dirs.filter((d) => d !== "")) {
      try {
        if (Deno.statSync(`${dir}/haproxy`).isFile) return `${dir}/haproxy`;
      } catch { /* not here */ }
    }
    return null;
  };
  const found = find();
  if (found !== null) return found;
  if (Deno.uid() !== 0) {
    console.log("haproxy_failover_test skipped: haproxy is missing and installing it needs root");
    return null;
  }
  const apt = (...args: string[]) =>
    new Deno.Command("apt-get", {
      args,
      env: { DEBIAN_FRONTEND: "noninteractive" },
      stdout: "null",
      stderr: "null",
    }).output().then((o) => o.success, () => false);
  console.log("haproxy_failover_test: installing haproxy with apt-get...");
  if (!await apt("install", "-y", "-qq", "haproxy")) {
    await apt("update", "-qq") && await apt("install", "-y", "-qq", "haproxy");
  }
  const installed = find();
  if (installed === null) {
    console.log("haproxy_failover_test skipped: `apt-get install -y haproxy` failed");
  }
  return installed;
}

const HAPROXY = await haproxyPath();

/** A child process whose output lines are kept (drained to the end so its pipes never fill). */
class Proc {
  readonly child: Deno.ChildProcess;
  readonly lines: string[] = [];
  readonly drained: Promise<void>;
  exited = false;
  readonly status: Promise<Deno.CommandStatus>;
  private waiters: (() => void)[] = [];

  constructor(readonly name: string, cmd: string, args: string[]) {
    this.child = new Deno.Command(cmd, { args, cwd: ROOT, stdout: "piped", stderr: "piped" })
      .spawn();
    this.status = this.child.status.then((s) => {
      this.exited = true;
      this.notify();
      return s;
    });
    this.drained = Promise.all([this.drain(this.child.stdout), this.drain(this.child.stderr)])
      .then(() => {});
  }

  private async drain(stream: ReadableStream<Uint8Array>) {
    let buf = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      buf += text;
      const parts = buf.split("\n");
      buf = parts.pop()!;
      this.lines.push(...parts);
      this.notify();
    }
    if (buf !== "") this.lines.push(buf);
  }

  private notify() {
    for (const w of this.waiters.splice(0)) w();
  }

  /** The first capture of `re` in the output; throws when the process exits or time runs out. */
  async waitFor(re: RegExp, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      for (const line of this.lines) {
        const m = line.match(re);
        if (m) return m[1];
      }
      if (this.exited) throw new Error(`${this.name} exited:\n${this.lines.join("\n")}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no ${re} in ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 500));
        this.waiters.push(() => (clearTimeout(timer), resolve()));
      });
    }
  }

  async stop() {
    if (!this.exited) {
      try {
        this.child.kill("SIGKILL");
      } catch { /* already gone */ }
    }
    await this.status;
    await this.drained;
  }
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** `text` with the one match of `re` replaced; a config whose shape changed fails here, named. */
function replaceOne(text: string, re: RegExp, by: string, what: string): string {
  const n = [...text.matchAll(new RegExp(re.source, "gm"))].length;
  assert.equal(n, 1, `deploy/haproxy.cfg: expected one ${what} line (${re}), found ${n}`);
  return text.replace(new RegExp(re.source, "m"), by);
}

/** deploy/haproxy.cfg for loopback: frontend, stats and replicas on the given ports. */
function loopbackConfig(
  text: string,
  o: { port: number; statsPort: number; socket: string; servers: string[] },
): string {
  for (const line of [`hdr Host ${REPLICA_HOST}`, `set-header Host ${REPLICA_HOST}`]) {
    assert.ok(
      text.includes(line),
      `deploy/haproxy.cfg: no "${line}" (the replicas' --allowed-host)`,
    );
  }
  text = text.replace(/^\s*(chroot|user|group)\s.*\n/gm, ""); // needs root and /var/lib/haproxy
  text = replaceOne(text, /^(\s*)log \/dev\/log .*$/, "$1log stdout format raw local0", "log");
  text = replaceOne(text, /^(\s*)stats socket \S+/, `$1stats socket ${o.socket}`, "stats socket");
  text = replaceOne(text, /^(\s*)bind :8000$/, `$1bind 127.0.0.1:${o.port}`, "frontend bind");
  text = replaceOne(
    text,
    /^(\s*)bind 127\.0\.0\.1:8404$/,
    `$1bind 127.0.0.1:${o.statsPort}`,
    "stats bind",
  );
  const servers = [...text.matchAll(/^(\s*)server (\S+) \S+$/gm)];
  assert.equal(servers.length, o.servers.length, "deploy/haproxy.cfg: one server line per replica");
  servers.forEach((m, i) => (text = text.replace(m[0], `${m[1]}server ${m[2]} ${o.servers[i]}`)));
  return text;
}

/** HAProxy's server states from its stats socket: name -> "UP L7OK", "DOWN L4CON", ... */
async function serverStates(socket: string): Promise<Map<string, string>> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  await conn.write(new TextEncoder().encode("show stat\n"));
  const csv = await new Response(conn.readable).text(); // it closes after one command
  const [header, ...rows] = csv.trim().split("\n");
  const cols = header.replace(/^# /, "").split(",");
  const at = (name: string) => cols.indexOf(name);
  const states = new Map<string, string>();
  for (const r of rows.map((l) => l.split(","))) {
    if (r[at("pxname")] !== "replicas" || r[at("svname")] === "BACKEND") continue;
    states.set(r[at("svname")], `${r[at("status")]} ${r[at("check_status")]}`);
  }
  return states;
}

/** Waits until each named server's state starts with the given text ("UP L7OK": checked up). */
async function waitForState(socket: string, want: Record<string, string>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const s = await serverStates(socket);
    if (Object.entries(want).every(([k, v]) => s.get(k)?.startsWith(v))) return;
    if (Date.now() > deadline) {
      throw new Error(`HAProxy: ${JSON.stringify([...s])}, not ${JSON.stringify(want)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits until `url`/health answers 200 (the model is loaded). */
async function waitForHealth(url: string, proc: Proc, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const status = await fetch(`${url}/health`).then(async (
      r,
    ) => (await r.body?.cancel(), r.status));
    if (status === 200) return;
    if (proc.exited || Date.now() > deadline) {
      throw new Error(`${url}/health: ${status}\n${proc.lines.join("\n")}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** How one streamed request went; times in ms from the test's start. */
interface Outcome {
  label: string;
  startMs: number;
  endMs: number;
  status: number | null;
  server: string | null;
  chunks: number;
  text: string;
  finishReason: string | null;
  completionTokens: number | null;
  /** done: `data: [DONE]` came; closed: the body ended without it; error: a read threw. */
  end: "done" | "closed" | "error" | "hang";
  error?: string;
}

class HangError extends Error {}

/** `p`, or a HangError after `ms`. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new HangError(`${what}: nothing for ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Streams one completion through `url`, calling `onChunk` after each text chunk. */
async function stream(
  url: string,
  model: string,
  label: string,
  t0: number,
  onChunk: (o: Outcome) => void = () => {},
): Promise<Outcome> {
  const o: Outcome = {
    label,
    startMs: performance.now() - t0,
    endMs: 0,
    status: null,
    server: null,
    chunks: 0,
    text: "",
    finishReason: null,
    completionTokens: null,
    end: "closed",
  };
  const abort = new AbortController();
  try {
    const res = await within(
      fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model,
          prompt: PROMPT,
          max_tokens: MAX_TOKENS,
          temperature: 0,
          stream: true,
          stream_options: { include_usage: true },
        }),
        signal: abort.signal,
      }),
      READ_TIMEOUT_MS,
      `${label} headers`,
    );
    o.status = res.status;
    o.server = res.headers.get("x-served-by");
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    while (true) {
      const { value, done } = await within(reader.read(), READ_TIMEOUT_MS, `${label} body`);
      if (done) break;
      buf += value;
      const events = buf.split("\n\n");
      buf = events.pop()!;
      for (const ev of events) {
        const data = ev.replace(/^data: /, "");
        if (data === "[DONE]") {
          o.end = "done";
          continue;
        }
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(`error event: ${chunk.error.message}`);
        const choice = chunk.choices?.[0];
        if (choice?.text) {
          o.text += choice.text;
          o.chunks++;
          onChunk(o);
        }
        if (choice?.finish_reason) o.finishReason = choice.finish_reason;
        if (chunk.usage) o.completionTokens = chunk.usage.completion_tokens;
      }
    }
  } catch (e) {
    o.end = e instanceof HangError ? "hang" : "error";
    o.error = (e as Error).message;
    abort.abort();
  }
  o.endMs = performance.now() - t0;
  return o;
}

function describe(o: Outcome): string {
  const ms = (x: number) => `${x.toFixed(0)} ms`;
  return `${o.label.padEnd(10)} on ${o.server ?? "-"}: status ${o.status ?? "-"}, ` +
    `${String(o.chunks).padStart(3)} chunks, ${o.completionTokens ?? "-"} tokens, ${o.end}` +
    `${o.error ? ` (${o.error})` : ""}, ${ms(o.startMs)} -> ${ms(o.endMs)}`;
}

Deno.test({
  name: "HAProxy with deploy/haproxy.cfg fails over from a killed replica: " +
    "its streams end cleanly, every later request succeeds on the survivor",
  ignore: HAPROXY === null,
  async fn() {
    const t0 = performance.now();
    const now = () => performance.now() - t0;
    const dir = await Deno.makeTempDir({ prefix: "haproxy_failover_" });
    const procs: Proc[] = [];
    try {
      const hostFlag = ["--allowed-host", REPLICA_HOST]; // the Host HAProxy sends them
      const replicas = ["r1", "r2"].map((name) => {
        const args = ["run", "-A", "--unstable-webgpu", "--unstable-no-legacy-abort", "main.ts"];
        const p = new Proc(name, Deno.execPath(), [...args, "serve", "--port", "0", ...hostFlag]);
        procs.push(p);
        return p;
      });
      const urls = await Promise.all(
        replicas.map((r) => r.waitFor(/serving (http:\/\/\S+) /, START_TIMEOUT_MS)),
      );
      await Promise.all(urls.map((u, i) => waitForHealth(u, replicas[i], START_TIMEOUT_MS)));
      const socket = `${dir}/admin.sock`;
      const port = freePort();
      const cfg = `${dir}/haproxy.cfg`;
      await Deno.writeTextFile(
        cfg,
        loopbackConfig(await Deno.readTextFile(CONFIG), {
          port,
          statsPort: freePort(),
          socket,
          servers: urls.map((u) => u.replace("http://", "")),
        }),
      );
      const haproxy = new Proc("haproxy", HAPROXY!, ["-f", cfg, "-db"]);
      procs.push(haproxy);
      while (!await Deno.stat(socket).then(() => true, () => false)) {
        if (haproxy.exited) throw new Error(`haproxy exited:\n${haproxy.lines.join("\n")}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      // servers start UP before their first check: wait for a passed check on both
      await waitForState(socket, { r1: "UP L7OK", r2: "UP L7OK" }, START_TIMEOUT_MS);
      const lb = `http://127.0.0.1:${port}`;
      const models = await (await fetch(`${lb}/v1/models`)).json();
      const model: string = models.data[0].id;
      const readyMs = now();

      // streams on both replicas; kill r1 while one of its streams is midway
      let killNow!: () => void;
      const killReady = new Promise<void>((resolve) => (killNow = resolve));
      const before = Array.from(
        { length: BEFORE },
        (_, i) =>
          stream(lb, model, `before-${i}`, t0, (o) => {
            if (o.server === "r1" && o.chunks >= KILL_AFTER_CHUNKS) killNow();
          }),
      );
      await Promise.race([killReady, Promise.all(before)]); // (each read has its timeout)
      const killMs = now();
      replicas[0].child.kill("SIGKILL");
      await replicas[0].status;
      const goneMs = now();
      const atOnce = Array.from(
        { length: AT_ONCE },
        (_, i) => stream(lb, model, `at-once-${i}`, t0),
      );
      await waitForState(socket, { r1: "DOWN" }, DOWN_LIMIT_MS);
      const downMs = now();
      const afterDown = Array.from(
        { length: AFTER_DOWN },
        (_, i) => stream(lb, model, `after-${i}`, t0),
      );
      const [b, a1, a2] = await Promise.all([before, atOnce, afterDown].map((p) => Promise.all(p)));

      const ms = (x: number) => `${x.toFixed(0)} ms`;
      console.log(
        `replicas and HAProxy ready at ${ms(readyMs)}; SIGKILL r1 at ${ms(killMs)}, ` +
          `exited at ${ms(goneMs)}, HAProxy marked it DOWN at ${ms(downMs)} ` +
          `(${ms(downMs - goneMs)} after it died)`,
      );
      for (const o of [...b, ...a1, ...a2]) console.log("  " + describe(o));
      // HAProxy's view: state changes, and per request the server, timers and retries (+N:
      // redispatched) and the termination state (SD: the server closed mid-response)
      for (const line of haproxy.lines) console.log("  haproxy: " + line);
      console.log(`test took ${ms(now())}`);

      const all = [...b, ...a1, ...a2];
      assert.ok(all.every((o) => o.end !== "hang"), "a request hung");
      // the killed replica: each stream it had not finished ended cleanly, soon after it died
      const onVictim = b.filter((o) => o.server === "r1");
      const cut = onVictim.filter((o) => o.end !== "done");
      assert.ok(cut.length >= 1, "no stream was in flight on r1 when it was killed");
      for (const o of cut) {
        assert.ok(o.end === "closed" || o.end === "error", describe(o));
        assert.ok(o.endMs - killMs < IN_FLIGHT_END_LIMIT_MS, `ended late: ${describe(o)}`);
        assert.ok((o.completionTokens ?? 0) < MAX_TOKENS, describe(o));
      }
      // every other request (the survivor's, and all started after the kill) came back whole
      const whole = [...b.filter((o) => !cut.includes(o)), ...a1, ...a2];
      for (const o of whole) {
        assert.equal(o.status, 200, describe(o));
        assert.equal(o.end, "done", describe(o));
        assert.equal(o.completionTokens, MAX_TOKENS, describe(o));
        assert.equal(o.finishReason, "length", describe(o));
        assert.equal(o.text, whole[0].text, `greedy replies differ: ${describe(o)}`);
      }
      for (const o of [...a1, ...a2]) assert.equal(o.server, "r2", describe(o));
      assert.ok(b.some((o) => o.server === "r2"), "leastconn sent nothing to r2 before the kill");
      assert.ok(downMs - goneMs < DOWN_LIMIT_MS);
    } finally {
      for (const p of procs.reverse()) await p.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
