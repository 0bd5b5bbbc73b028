// An HTTP proxy in front of a real S3 server that never answers the requests a test picks (a
// store that hangs), and tells the test when one arrives, so it can act at exactly that moment.

import { EventEmitter, once } from 'node:events';
import { type IncomingMessage, type ServerResponse, createServer, request } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface StalledRequest {
  method: string;
  /** The path as sent, e.g. /bucket/prefix/packs/0000000000000002-1a2b3c4d. */
  path: string;
}

export class StallingProxy {
  readonly stalled: StalledRequest[] = [];
  private readonly events = new EventEmitter();
  private readonly sockets = new Set<Socket>();
  private readonly server = createServer((req, res) => this.handle(req, res));

  private constructor(
    private readonly target: URL,
    private readonly shouldStall: (request: StalledRequest) => boolean,
  ) {
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  /** Proxies to `endpoint` (http://host:port), stalling every request `shouldStall` picks. */
  static async start(endpoint: string, shouldStall: (request: StalledRequest) => boolean): Promise<StallingProxy> {
    const proxy = new StallingProxy(new URL(endpoint), shouldStall);
    proxy.server.listen(0, '127.0.0.1');
    await once(proxy.server, 'listening');
    return proxy;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Resolves with the first stalled request (at once if one has arrived already). */
  async firstStall(): Promise<StalledRequest> {
    if (this.stalled.length > 0) return this.stalled[0]!;
    const [stalled] = (await once(this.events, 'stall')) as [StalledRequest];
    return stalled;
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const seen = { method: req.method ?? '', path: req.url ?? '' };
    if (this.shouldStall(seen)) {
      req.resume(); // take the body, never answer
      this.stalled.push(seen);
      this.events.emit('stall', seen);
      return;
    }
    const upstream = request(
      { host: this.target.hostname, port: this.target.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  }
}
