import { randomBytes } from "node:crypto";

import type {
  DefaultAsset,
  Network,
  PaymentPayloadContext,
  PaymentPayloadResult,
  PaymentRequirements,
  SchemeClientHooks,
  SchemeNetworkClient,
} from "@x402/core/types";

import { TallyAssetTable, type TallyAsset } from "../assets.js";
import {
  IOU_FORMAT,
  PAYMENT_IDENTIFIER,
  SCHEME,
  VALIDITY_MAX_SECONDS,
  WEB_BOT_AUTH_FORMAT,
  isTallyNetwork,
} from "../constants.js";
import { keyPairFromSeed, type Ed25519KeyPair } from "../ed25519.js";
import { parseAmount, signIou, tallyIouPayload, type Iou } from "../iou.js";
import {
  generatePaymentId,
  isValidPaymentId,
  nonceFromPaymentId,
  paymentIdFromExtensions,
  paymentIdentifierDeclaration,
} from "../paymentId.js";

/** Options of the client scheme. */
export interface BatchSettlementTallySchemeOptions {
  /**
   * The payer's Ed25519 key: a key pair, or its 32-byte RFC 8032 seed (bytes or
   * 64 hex digits). Its public key must be registered with the Tally deployment.
   */
  signer: Ed25519KeyPair | Uint8Array | string;
  /**
   * The deployment's assets and scales (default: USD at scale 6). Assets marked
   * `usdPegged` are reported to the SDK's spend controls as default assets, so its
   * USD cap (`maxAmountPerPayment`, $1 by default) applies to them.
   */
  assets?: readonly TallyAsset[];
  /**
   * Validity window of each IOU in seconds (`expiresAt - issuedAt`). Default: the
   * offer's `maxTimeoutSeconds`, capped at Tally's one-day maximum.
   */
  validitySeconds?: number;
  /**
   * Supplies the payment identifier for a payment, e.g. to make a retry idempotent.
   * When it returns an id, the IOU's nonce is derived from it and the id is sent in
   * the `payment-identifier` extension. By default an id already present in the
   * offer's extension is used, else one is generated when the server declares the
   * extension, else the nonce is 16 random bytes.
   */
  paymentId?: (requirements: PaymentRequirements) => string | undefined;
  /**
   * The commitment format (`docs/x402-binding.md`, section 1):
   *
   * - `"tally-iou-v1"` (default): the payload is a signed Tally IOU. Works with any
   *   x402 resource server, including the SDK middlewares.
   * - `"web-bot-auth"`: the payload only commits `{ amount, asset }`; the request's
   *   Web Bot Auth signature (see {@link wrapFetchWithWebBotAuth}) is the commitment.
   *   Needs a resource server that forwards the signed request to Tally (Tally's
   *   `PaywallLayer`); the SDK middlewares do not.
   */
  format?: typeof IOU_FORMAT | typeof WEB_BOT_AUTH_FORMAT;
  /** The clock, Unix seconds (for tests). */
  now?: () => number;
}

/**
 * The x402 client scheme for Tally's `batch-settlement` binding: it answers a
 * `tally:*` offer with a signed Tally IOU (`docs/x402-binding.md`, section 1).
 *
 * Register it for `tally:*` with {@link registerBatchSettlementTallyScheme} (or
 * `client.register("tally:*", scheme)`), so the SDK's hooks are installed too.
 */
export class BatchSettlementTallyScheme implements SchemeNetworkClient {
  readonly scheme = SCHEME;
  readonly schemeHooks: SchemeClientHooks;

  private readonly keyPair: Ed25519KeyPair;
  private readonly assets: TallyAssetTable;
  private readonly validitySeconds: number | undefined;
  private readonly paymentIdFn: ((requirements: PaymentRequirements) => string | undefined) | undefined;
  private readonly now: () => number;
  private readonly format: typeof IOU_FORMAT | typeof WEB_BOT_AUTH_FORMAT;
  // The PaymentRequired resource URL of each selected offer, recorded by the
  // before-creation hook: createPaymentPayload only receives the offer itself.
  private readonly resourceByOffer = new WeakMap<object, string>();

  constructor(options: BatchSettlementTallySchemeOptions) {
    this.keyPair =
      options.signer instanceof Uint8Array || typeof options.signer === "string"
        ? keyPairFromSeed(options.signer)
        : options.signer;
    this.assets = new TallyAssetTable(options.assets);
    if (options.validitySeconds !== undefined) {
      if (
        !Number.isInteger(options.validitySeconds) ||
        options.validitySeconds < 1 ||
        options.validitySeconds > VALIDITY_MAX_SECONDS
      ) {
        throw new Error(`validitySeconds must be an integer in 1..=${VALIDITY_MAX_SECONDS}`);
      }
    }
    this.validitySeconds = options.validitySeconds;
    this.paymentIdFn = options.paymentId;
    this.now = options.now ?? (() => Math.floor(Date.now() / 1000));
    this.format = options.format ?? IOU_FORMAT;
    if (this.format !== IOU_FORMAT && this.format !== WEB_BOT_AUTH_FORMAT) {
      throw new Error(`unknown payment format ${JSON.stringify(this.format)}`);
    }
    this.schemeHooks = {
      onBeforePaymentCreation: (context) => {
        const url = context.paymentRequired.resource?.url;
        if (typeof url === "string") {
          this.resourceByOffer.set(context.selectedRequirements, url);
        }
        return Promise.resolve();
      },
    };
  }

  /** The payer's 32-byte public key. */
  get publicKey(): Uint8Array {
    return this.keyPair.publicKey;
  }

  /**
   * The SDK's default-asset lookup, used for spend controls: USD-pegged assets of the
   * table are default assets (the USD cap applies); others are not.
   */
  findDefaultAsset = (asset: string, network: Network): DefaultAsset | undefined => {
    if (!isTallyNetwork(network)) {
      return undefined;
    }
    const entry = this.assets.get(asset);
    if (!entry?.usdPegged) {
      return undefined;
    }
    return { asset: entry.code, decimals: entry.decimals, symbol: entry.code };
  };

  /**
   * The decimals of an asset in the table, or undefined.
   *
   * @param asset - the asset code
   */
  getAssetDecimals(asset: string): number | undefined {
    return this.assets.get(asset)?.decimals;
  }

  /**
   * Answers an offer: a signed Tally IOU for `requirements` (or, in the
   * `web-bot-auth` format, the committed `{ amount, asset }`).
   */
  createPaymentPayload(
    x402Version: number,
    requirements: PaymentRequirements,
    context?: PaymentPayloadContext,
  ): Promise<PaymentPayloadResult> {
    try {
      return Promise.resolve(this.buildPayload(x402Version, requirements, context));
    } catch (error) {
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }

  private buildPayload(
    x402Version: number,
    requirements: PaymentRequirements,
    context?: PaymentPayloadContext,
  ): PaymentPayloadResult {
    if (x402Version !== 2) {
      throw new Error(`Tally's batch-settlement binding is x402 v2 only, not v${x402Version}`);
    }
    if (requirements.scheme !== SCHEME || !isTallyNetwork(requirements.network)) {
      throw new Error(`not a Tally offer: ${requirements.scheme} on ${requirements.network}`);
    }
    const amount = parseAmount(requirements.amount, "the offer's amount");
    if (context?.maxAmountPerPayment !== undefined && amount > BigInt(context.maxAmountPerPayment)) {
      throw new Error(
        `the offer's amount ${amount} is above the spend cap ${context.maxAmountPerPayment}`,
      );
    }

    const extraResource = requirements.extra?.resource;
    const resource =
      typeof extraResource === "string" ? extraResource : this.resourceByOffer.get(requirements);
    if (resource === undefined) {
      throw new Error(
        "the offer names no resource (no extra.resource and no PaymentRequired resource url): an IOU must be bound to what it pays for",
      );
    }

    // The payment identifier, if any, fixes the nonce (x402-binding.md, section 4).
    let paymentId = this.paymentIdFn?.(requirements);
    let echoId = paymentId !== undefined;
    if (paymentId === undefined) {
      paymentId = paymentIdFromExtensions(context?.extensions);
    }
    if (paymentId === undefined && paymentIdentifierDeclaration(context?.extensions)) {
      paymentId = generatePaymentId();
      echoId = true;
    }
    if (paymentId !== undefined && !isValidPaymentId(paymentId)) {
      throw new Error(`invalid payment identifier ${JSON.stringify(paymentId)}`);
    }
    const nonce = paymentId !== undefined ? nonceFromPaymentId(paymentId) : Uint8Array.from(randomBytes(16));
    const extensions =
      echoId && paymentId !== undefined ? { [PAYMENT_IDENTIFIER]: { info: { id: paymentId } } } : undefined;

    if (this.format === WEB_BOT_AUTH_FORMAT) {
      // The HTTP signature commits; Tally derives the IOU from it (nonce from the
      // payment identifier, or from the signature base).
      return { x402Version: 2, payload: { amount: requirements.amount, asset: requirements.asset }, ...(extensions ? { extensions } : {}) };
    }

    const issuedAt = this.now();
    const window =
      this.validitySeconds ??
      Math.min(Math.max(requirements.maxTimeoutSeconds || 300, 1), VALIDITY_MAX_SECONDS);
    const iou: Iou = {
      network: requirements.network,
      payerKey: this.keyPair.publicKey,
      payee: requirements.payTo,
      asset: requirements.asset,
      amount,
      nonce,
      issuedAt,
      expiresAt: issuedAt + window,
      resource,
    };
    const signature = signIou(iou, this.keyPair);
    return {
      x402Version: 2,
      payload: { ...tallyIouPayload(iou, signature) },
      ...(extensions ? { extensions } : {}),
    };
  }
}
