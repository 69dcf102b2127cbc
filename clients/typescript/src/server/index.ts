import type { Network } from "@x402/core/types";
import type { x402ResourceServer } from "@x402/core/server";

import { TALLY_NETWORK_PATTERN } from "../constants.js";
import { BatchSettlementTallyScheme, type BatchSettlementTallyServerOptions } from "./scheme.js";

export { BatchSettlementTallyScheme, type BatchSettlementTallyServerOptions } from "./scheme.js";

/** Options of {@link registerBatchSettlementTallyScheme}. */
export interface TallyResourceServerConfig extends BatchSettlementTallyServerOptions {
  /** Networks to register for (default: every Tally network, `tally:*`). */
  networks?: Network[];
}

/**
 * Registers the Tally `batch-settlement` server scheme with an SDK
 * `x402ResourceServer`, for `tally:*` (or the given networks).
 *
 * ```ts
 * const server = new x402ResourceServer(new HTTPFacilitatorClient({ url: "http://127.0.0.1:8402" }));
 * registerBatchSettlementTallyScheme(server);
 * app.use(paymentMiddleware(routes, server));
 * ```
 */
export function registerBatchSettlementTallyScheme(
  server: x402ResourceServer,
  config: TallyResourceServerConfig = {},
): x402ResourceServer {
  const { networks, ...options } = config;
  const scheme = new BatchSettlementTallyScheme(options);
  for (const network of networks ?? [TALLY_NETWORK_PATTERN]) {
    server.register(network, scheme);
  }
  return server;
}
