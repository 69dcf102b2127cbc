import type { Network } from "@x402/core/types";
import type { x402Client } from "@x402/core/client";

import { TALLY_NETWORK_PATTERN } from "../constants.js";
import { BatchSettlementTallyScheme, type BatchSettlementTallySchemeOptions } from "./scheme.js";

export { BatchSettlementTallyScheme, type BatchSettlementTallySchemeOptions } from "./scheme.js";
export {
  WEB_BOT_AUTH_COMPONENTS,
  WEB_BOT_AUTH_VALIDITY_MAX_SECONDS,
  ed25519PublicJwk,
  jwkThumbprint,
  signatureAgentHeader,
  webBotAuthSigner,
  wrapFetchWithWebBotAuth,
  type WebBotAuthOptions,
} from "./webBotAuth.js";

/** Options of {@link registerBatchSettlementTallyScheme}. */
export interface TallyClientConfig extends BatchSettlementTallySchemeOptions {
  /** Networks to register for (default: every Tally network, `tally:*`). */
  networks?: Network[];
}

/**
 * Registers the Tally `batch-settlement` client scheme with an SDK `x402Client`, for
 * `tally:*` (or the given networks).
 *
 * ```ts
 * const client = new x402Client();
 * registerBatchSettlementTallyScheme(client, { signer: process.env.TALLY_SEED! });
 * const fetchWithPayment = wrapFetchWithPayment(fetch, client);
 * ```
 */
export function registerBatchSettlementTallyScheme(client: x402Client, config: TallyClientConfig): x402Client {
  const { networks, ...options } = config;
  const scheme = new BatchSettlementTallyScheme(options);
  for (const network of networks ?? [TALLY_NETWORK_PATTERN]) {
    client.register(network, scheme);
  }
  return client;
}
