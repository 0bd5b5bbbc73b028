// A fault-injecting HTTP proxy for S3 traffic: listens on 127.0.0.1 in front of a real server
// (s3rver) and, per request, draws a fault from a seeded RNG: 503 SlowDown with an S3 XML error
// body, a connection reset before the request reaches the server, a reset after the server
// handled it (the reply is lost), a reset in the middle of the response body, a latency spike,
// or a stall (the connection is held and never answered). An outage can be switched on and off
// (every connection is reset). Counters say which faults really happened, so a fault test can
// insist that it injected some. Tests that act at one moment can also stall every request they
// pick (and hear when the first arrives), or hold a response after its headers and first bytes
// until they release it; the proxy logs every request it was sent.
//
// s3rver ignores If-None-Match; with `emulateIfNoneMatch` the proxy answers a conditional PUT
// of a key it has seen stored (through itself) with 412 PreconditionFailed, as S3 does. Every
// write must then go through the proxy.

import { EventEmitter, once } from 'node:events';
import { Agent, createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { seededRandom } from './random.js';

export const FAULT_KINDS = ['slowdown', 'reset-before', 'reset-after', 'reset-mid', 'latency', 'stall'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface FaultProxyOptions {
  /** The real server, e.g. http://127.0.0.1:41234. */
  target: string;
  seed: number;
  /** Chance of each fault per request (their sum at most 1). Default none. */
  probabilities?: Partial<Record<FaultKind, number>>;
  /** How long a latency spike holds a request before forwarding it. Default 200. */
  latencyMs?: number;
  emulateIfNoneMatch?: boolean;
}

export interface FaultCounts extends Record<FaultKind, number> {
  requests: number;
  /** Connections reset because the outage was on. */
  outage: number;
  /** Emulated 412 answers. */
  preconditionFailed: number;
  /** Stalled connections that the client gave up on and closed (its timeout at work). */
  stallsClosedByClient: number;
}

/** Picks requests: `url` is the path as sent, with the query (e.g. /bucket/prefix/packs/…?x-id=GetObject). */
export type RequestMatcher = (method: string, url: string, headers: IncomingMessage['headers']) => boolean;

export interface ProxiedRequest {
  method: string;
  /** The path as sent, with the query. */
  url: string;
  /** The Range header, if any. */
  range: string | undefined;
}

/** A response held after its headers and the first half of its body (see holdNext). */
export interface HeldResponse {
  /** Resolves once the headers and the first bytes have been written to the client. */
  readonly sent: Promise<void>;
  /** Sends the rest of the body. */
  release(): void;
}

export interface FaultProxy {
  readonly endpoint: string;
  readonly counts: FaultCounts;
  /** Injected faults in all, outage resets included (latency spikes not: they fail nothing). */
  injected(): number;
  setProbabilities(probabilities: Partial<Record<FaultKind, number>>): void;
  /** The next request that `matches` gets `kind`, whatever the RNG says. */
  injectNext(kind: FaultKind, matches?: RequestMatcher): void;
  /** From now on every request that `matches` stalls (is taken and never answered). */
  stallEvery(matches: RequestMatcher): void;
  /** Resolves with the first stalled request (at once if one has been stalled already). */
  firstStall(): Promise<ProxiedRequest>;
  /** The next request that `matches` is answered with its headers and half its body; the rest waits for release(). */
  holdNext(matches?: RequestMatcher): HeldResponse;
  /** Every request the proxy was sent, in order of arrival. */
  readonly requests: ProxiedRequest[];
  /** Resolves when every connection stalled so far has been closed by its client. */
  stalledConnectionsClosed(): Promise<void>;
  /** While on, every request's connection is reset. */
  setOutage(on: boolean): void;
  close(): Promise<void>;
}

const SLOW_DOWN = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>';
const PRECONDITION_FAILED =
  '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message><Condition>If-None-Match</Condition></Error>';
const HOP_BY_HOP = ['connection', 'keep-alive', 'expect', 'transfer-encoding', 'proxy-connection', 'upgrade'];

/** A request about one part of a multipart upload, not the object (the SDK adds ?x-id=… to others). */
function isPart(url: string): boolean {
  return /[?&](uploadId|partNumber|uploads)\b/.test(url);
}

export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const target = new URL(options.target);
  const random = seededRandom(options.seed);
  const agent = new Agent({ keepAlive: true });
  const latencyMs = options.latencyMs ?? 200;
  let probabilities: Partial<Record<FaultKind, number>> = { ...options.probabilities };
  let outage = false;
  const forced: Array<{ kind: FaultKind; matches: RequestMatcher }> = [];
  const stallRules: RequestMatcher[] = [];
  const holds: Array<{ matches: RequestMatcher; sent: () => void; released: Promise<void> }> = [];
  const requests: ProxiedRequest[] = [];
  const stalled: ProxiedRequest[] = [];
  const events = new EventEmitter();
  const stored = new Set<string>();
  const sockets = new Set<Socket>();
  const stallsClosed: Array<Promise<void>> = [];
  let closing = false;
  const counts: FaultCounts = {
    requests: 0,
    outage: 0,
    preconditionFailed: 0,
    stallsClosedByClient: 0,
    ...(Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])) as Record<FaultKind, number>),
  };

  const draw = (method: string, path: string, headers: IncomingMessage['headers']): FaultKind | undefined => {
    if (stallRules.some((matches) => matches(method, path, headers))) return 'stall';
    const index = forced.findIndex((f) => f.matches(method, path, headers));
    if (index >= 0) return forced.splice(index, 1)[0]!.kind;
    let r = random();
    for (const kind of FAULT_KINDS) {
      r -= probabilities[kind] ?? 0;
      if (r < 0) return kind;
    }
    return undefined;
  };

  const reset = (socket: Socket): void => {
    socket.resetAndDestroy();
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    counts.requests++;
    const seen: ProxiedRequest = { method: req.method ?? 'GET', url: req.url ?? '/', range: req.headers['range'] };
    requests.push(seen);
    const socket = req.socket;
    if (outage) {
      counts.outage++;
      return reset(socket);
    }
    const method = req.method ?? 'GET';
    const path = (req.url ?? '/').split('?')[0]!;
    const fault = draw(method, req.url ?? '/', req.headers);
    if (fault !== undefined) counts[fault]++;
    const holdIndex = fault === undefined ? holds.findIndex((h) => h.matches(method, req.url ?? '/', req.headers)) : -1;
    const hold = holdIndex >= 0 ? holds.splice(holdIndex, 1)[0] : undefined;
    switch (fault) {
      case 'reset-before':
        return reset(socket);
      case 'stall':
        req.resume(); // take the request, never answer
        stalled.push(seen);
        events.emit('stall', seen);
        stallsClosed.push(
          new Promise((resolve) =>
            socket.once('close', () => {
              if (!closing) counts.stallsClosedByClient++;
              resolve();
            }),
          ),
        );
        return;
      case 'slowdown':
        req.resume();
        req.once('end', () => res.writeHead(503, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(SLOW_DOWN) }).end(SLOW_DOWN));
        return;
      case 'latency':
        await new Promise((resolve) => setTimeout(resolve, latencyMs));
        break;
    }
    const conditional = method === 'PUT' && req.headers['if-none-match'] === '*' && !isPart(req.url ?? '');
    if (options.emulateIfNoneMatch === true && conditional && stored.has(path)) {
      counts.preconditionFailed++;
      req.resume();
      req.once('end', () => res.writeHead(412, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(PRECONDITION_FAILED) }).end(PRECONDITION_FAILED));
      return;
    }
    const headers = { ...req.headers };
    for (const name of HOP_BY_HOP) delete headers[name];
    const upstream = request({ host: target.hostname, port: target.port, method, path: req.url, headers, agent });
    upstream.on('error', () => reset(socket));
    req.pipe(upstream);
    upstream.on('response', (answer) => {
      const chunks: Buffer[] = [];
      answer.on('data', (chunk: Buffer) => chunks.push(chunk));
      answer.on('error', () => reset(socket));
      answer.on('end', () => {
        const status = answer.statusCode ?? 502;
        if (status >= 200 && status < 300 && !isPart(req.url ?? '')) {
          if (method === 'PUT') stored.add(path);
          if (method === 'DELETE') stored.delete(path);
        }
        const body = Buffer.concat(chunks);
        if (fault === 'reset-after' || (fault === 'reset-mid' && body.length < 2)) return reset(socket);
        const replyHeaders = { ...answer.headers };
        for (const name of HOP_BY_HOP) delete replyHeaders[name];
        if (method !== 'HEAD') replyHeaders['content-length'] = String(body.length);
        res.writeHead(status, replyHeaders);
        if (fault === 'reset-mid') {
          res.write(body.subarray(0, body.length >> 1), () => reset(socket));
          return;
        }
        if (hold !== undefined && method !== 'HEAD') {
          res.write(body.subarray(0, body.length >> 1), () => hold.sent());
          void hold.released.then(() => res.end(body.subarray(body.length >> 1)));
          return;
        }
        res.end(method === 'HEAD' ? undefined : body);
      });
    });
  };

  const server = createServer((req, res) => {
    handle(req, res).catch(() => reset(req.socket));
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    endpoint: `http://127.0.0.1:${port}`,
    counts,
    injected: () => FAULT_KINDS.filter((k) => k !== 'latency').reduce((sum, k) => sum + counts[k], counts.outage),
    setProbabilities(next) {
      probabilities = { ...next };
    },
    injectNext(kind, matches = () => true) {
      forced.push({ kind, matches });
    },
    async stalledConnectionsClosed() {
      await Promise.all(stallsClosed);
    },
    stallEvery(matches) {
      stallRules.push(matches);
    },
    async firstStall() {
      if (stalled.length > 0) return stalled[0]!;
      const [first] = (await once(events, 'stall')) as [ProxiedRequest];
      return first;
    },
    holdNext(matches = () => true) {
      let sent!: () => void;
      let release!: () => void;
      const sentPromise = new Promise<void>((resolve) => (sent = resolve));
      const released = new Promise<void>((resolve) => (release = resolve));
      holds.push({ matches, sent, released });
      return { sent: sentPromise, release };
    },
    requests,
    setOutage(on) {
      outage = on;
    },
    async close() {
      closing = true;
      for (const socket of sockets) socket.destroy();
      agent.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
