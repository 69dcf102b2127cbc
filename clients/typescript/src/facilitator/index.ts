import { HTTPFacilitatorClient, type FacilitatorConfig } from "@x402/core/server";
import {
  SettleError,
  VerifyError,
  type Network,
  type PaymentPayload,
  type PaymentRequirements,
  type SchemeNetworkFacilitator,
  type SettleResponse,
  type VerifyResponse,
} from "@x402/core/types";
import type { x402Facilitator } from "@x402/core/facilitator";

import { IOU_FORMAT, SCHEME, TALLY_NETWORK_PATTERN, WEB_BOT_AUTH_FORMAT } from "../constants.js";

/** Options of the facilitator scheme. */
export interface BatchSettlementTallyFacilitatorOptions extends FacilitatorConfig {
  /** The Tally HTTP facilitator (`tally serve --http-addr`), e.g. `http://127.0.0.1:8402`. */
  url: string;
}

/**
 * The x402 facilitator scheme for Tally's `batch-settlement` binding. Tally is its own
 * facilitator: it keeps the ledger, credit limits and replay index, so this scheme
 * forwards `verify` and `settle` to a Tally deployment's HTTP facilitator. Register it
 * with an SDK `x402Facilitator` to serve `tally:*` next to other schemes.
 */
export class BatchSettlementTallyScheme implements SchemeNetworkFacilitator {
  readonly scheme = SCHEME;
  readonly caipFamily = TALLY_NETWORK_PATTERN;
  private readonly client: HTTPFacilitatorClient;

  constructor(options: BatchSettlementTallyFacilitatorOptions) {
    this.client = new HTTPFacilitatorClient(options);
  }

  getExtra(_network: Network): Record<string, unknown> | undefined {
    return { dynamicPricing: true, formats: [IOU_FORMAT, WEB_BOT_AUTH_FORMAT], trustModel: "credit-backed" };
  }

  getSigners(_network: string): string[] {
    return [];
  }

  async verify(payload: PaymentPayload, requirements: PaymentRequirements): Promise<VerifyResponse> {
    try {
      return await this.client.verify(payload, requirements);
    } catch (error) {
      // Tally answers some refusals with a 4xx status (payment_identifier_*): a verdict.
      if (error instanceof VerifyError) {
        return {
          isValid: false,
          invalidReason: error.invalidReason ?? "invalid_payload",
          ...(error.invalidMessage !== undefined ? { invalidMessage: error.invalidMessage } : {}),
          ...(error.payer !== undefined ? { payer: error.payer } : {}),
        };
      }
      throw error;
    }
  }

  async settle(payload: PaymentPayload, requirements: PaymentRequirements): Promise<SettleResponse> {
    try {
      return await this.client.settle(payload, requirements);
    } catch (error) {
      if (error instanceof SettleError) {
        return {
          success: false,
          errorReason: error.errorReason ?? "invalid_payload",
          ...(error.errorMessage !== undefined ? { errorMessage: error.errorMessage } : {}),
          ...(error.payer !== undefined ? { payer: error.payer } : {}),
          transaction: error.transaction ?? "",
          network: error.network ?? requirements.network,
        };
      }
      throw error;
    }
  }
}

/**
 * Registers the Tally facilitator scheme with an SDK `x402Facilitator` for the given
 * networks (a facilitator lists concrete networks in `/supported`).
 */
export function registerBatchSettlementTallyScheme(
  facilitator: x402Facilitator,
  config: BatchSettlementTallyFacilitatorOptions & { networks: Network[] },
): x402Facilitator {
  const { networks, ...options } = config;
  facilitator.register(networks, new BatchSettlementTallyScheme(options));
  return facilitator;
}
