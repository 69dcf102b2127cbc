// Real HTTP servers for the tests: Express and Hono with the official x402
// middlewares, on 127.0.0.1 port 0.
import type { AddressInfo } from "node:net";
import type { Server } from "node:http";

import express from "express";
import { Hono } from "hono";
import { serve } from "@hono/node-server";
import { HTTPFacilitatorClient, x402ResourceServer, type RoutesConfig } from "@x402/core/server";
import { paymentMiddleware as expressPaymentMiddleware, setSettlementOverrides as expressOverrides } from "@x402/express";
import { paymentMiddleware as honoPaymentMiddleware, setSettlementOverrides as honoOverrides } from "@x402/hono";

import { registerBatchSettlementTallyScheme } from "@tally-x402/batch-settlement/server";

/** A request as the resource handler saw it. */
export interface SeenRequest {
  path: string;
  headers: Record<string, string>;
}

export interface RunningServer {
  baseUrl: string;
  /** Requests that reached a paid handler, in order. */
  served: SeenRequest[];
  close(): Promise<void>;
}

/** A handler's behaviour: a fixed price, or a lower charge in smallest units. */
export interface RouteSpec {
  path: string;
  payTo: string;
  price: string;
  /** Charge this many smallest units at settlement (dynamic pricing). */
  charge?: string;
  extra?: Record<string, unknown>;
  extensions?: Record<string, unknown>;
}

export const NETWORK = "tally:test";

function routesConfig(routes: RouteSpec[]): RoutesConfig {
  const config: RoutesConfig = {};
  for (const r of routes) {
    config[`GET ${r.path}`] = {
      accepts: {
        scheme: "batch-settlement",
        network: NETWORK,
        payTo: r.payTo,
        price: r.price,
        ...(r.extra ? { extra: r.extra } : {}),
      },
      description: `paid ${r.path}`,
      mimeType: "application/json",
      ...(r.extensions ? { extensions: r.extensions } : {}),
    };
  }
  return config;
}

export interface ServerOptions {
  /** Passed to the server scheme (default true). */
  bindResource?: boolean;
}

function resourceServer(facilitatorUrl: string, options: ServerOptions): x402ResourceServer {
  const server = new x402ResourceServer(new HTTPFacilitatorClient({ url: facilitatorUrl }));
  registerBatchSettlementTallyScheme(server, { bindResource: options.bindResource ?? true });
  return server;
}

function headersOf(get: (name: string) => string | undefined, names: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of names) {
    const v = get(n);
    if (v !== undefined) out[n] = v;
  }
  return out;
}

const SEEN_HEADERS = ["host", "payment-signature", "signature", "signature-input", "signature-agent"];

export async function startExpress(
  facilitatorUrl: string,
  routes: RouteSpec[],
  options: ServerOptions = {},
): Promise<RunningServer> {
  const app = express();
  const served: SeenRequest[] = [];
  app.use(expressPaymentMiddleware(routesConfig(routes), resourceServer(facilitatorUrl, options)));
  for (const r of routes) {
    app.get(r.path, (req, res) => {
      served.push({ path: r.path, headers: headersOf((n) => req.header(n), SEEN_HEADERS) });
      if (r.charge !== undefined) {
        expressOverrides(res, { amount: r.charge });
      }
      res.json({ path: r.path, content: "the paid content" });
    });
  }
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
  });
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    served,
    close: () => closeServer(server),
  };
}

export async function startHono(
  facilitatorUrl: string,
  routes: RouteSpec[],
  options: ServerOptions = {},
): Promise<RunningServer> {
  const app = new Hono();
  const served: SeenRequest[] = [];
  app.use(honoPaymentMiddleware(routesConfig(routes), resourceServer(facilitatorUrl, options)));
  for (const r of routes) {
    app.get(r.path, (c) => {
      served.push({ path: r.path, headers: headersOf((n) => c.req.header(n), SEEN_HEADERS) });
      if (r.charge !== undefined) {
        honoOverrides(c, { amount: r.charge });
      }
      return c.json({ path: r.path, content: "the paid content" });
    });
  }
  const { server, port } = await new Promise<{ server: ReturnType<typeof serve>; port: number }>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: "127.0.0.1" }, (info) => resolve({ server: s, port: info.port }));
  });
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    served,
    close: () => closeServer(server as Server),
  };
}

/** Stops a server now, keep-alive connections included. */
function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
