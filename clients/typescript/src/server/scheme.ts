import type {
  AssetAmount,
  MoneyParser,
  Network,
  PaymentFlowConfig,
  PaymentRequirements,
  Price,
  SchemeNetworkServer,
  SchemePaymentRequiredContext,
  SupportedKind,
} from "@x402/core/types";

import { TallyAssetTable, decimalToSmallestUnits, type TallyAsset } from "../assets.js";
import { IOU_FORMAT, SCHEME, isTallyNetwork } from "../constants.js";
import { isValidAssetCode, isValidPayee, parseAmount } from "../iou.js";

/** The SDK's name for "this scheme has no on-wire asset transfer method". */
const DEFAULT_ASSET_TRANSFER_METHOD = "default";

/** Options of the server scheme. */
export interface BatchSettlementTallyServerOptions {
  /** The deployment's assets and scales (default: USD at scale 6). */
  assets?: readonly TallyAsset[];
  /** The asset of a bare price such as `"0.01"` (default: the first asset). */
  defaultAsset?: string;
  /**
   * Put the request's resource URL in every Tally offer as `extra.resource`
   * (default true). Tally then binds each IOU to the page it buys, and a payment
   * replayed for another resource is refused (`docs/x402-binding.md`, section 2).
   */
  bindResource?: boolean;
}

const MONEY_RE = /^(\$)?\s*([0-9]+(?:\.[0-9]+)?)(?:\s+([A-Za-z0-9]{1,12}))?$/;

/**
 * The x402 resource-server scheme for Tally's `batch-settlement` binding.
 *
 * - Prices: `"$0.01"` (USD), `"0.01"` (the default asset), `"0.25 EUR"`, or an
 *   `AssetAmount` `{ amount: "10000", asset: "USD" }` already in smallest units. The
 *   decimal string is converted with exact integer arithmetic at the asset's scale;
 *   a price finer than one smallest unit is refused, never rounded.
 * - Offers name the request's URL as `extra.resource`, so each IOU pays for one page.
 * - Payment flows: `authorization` (the default: `/verify`, run the handler, `/settle`,
 *   which allows a lower charge set with the SDK's settlement overrides) and `upfront`
 *   (`/settle` before the handler), chosen per route with `extra.paymentFlow`.
 */
export class BatchSettlementTallyScheme implements SchemeNetworkServer {
  readonly scheme = SCHEME;
  readonly defaultAssetTransferMethod = DEFAULT_ASSET_TRANSFER_METHOD;
  readonly paymentFlows: Readonly<Record<string, PaymentFlowConfig>> = {
    [DEFAULT_ASSET_TRANSFER_METHOD]: { supported: ["authorization", "upfront"], default: "authorization" },
  };

  private readonly assets: TallyAssetTable;
  private readonly bindResource: boolean;
  private readonly moneyParsers: MoneyParser[] = [];
  // Offers already given their resource, per PaymentRequired response being built.
  private readonly enriched = new WeakMap<object, WeakSet<object>>();

  constructor(options: BatchSettlementTallyServerOptions = {}) {
    this.assets = new TallyAssetTable(options.assets, options.defaultAsset);
    this.bindResource = options.bindResource ?? true;
  }

  /**
   * Adds a money parser, tried in registration order before the built-in conversion.
   * It receives the price as a decimal string; return null to pass.
   *
   * @param parser - the parser
   */
  registerMoneyParser(parser: MoneyParser): this {
    this.moneyParsers.push(parser);
    return this;
  }

  getAssetDecimals(asset: string, network: Network): number | undefined {
    return isTallyNetwork(network) ? this.assets.get(asset)?.decimals : undefined;
  }

  async parsePrice(price: Price, network: Network): Promise<AssetAmount> {
    if (typeof price === "object" && price !== null) {
      if (!isValidAssetCode(price.asset)) {
        throw new Error(`invalid Tally asset code ${JSON.stringify(price.asset)}`);
      }
      parseAmount(price.amount, "price amount");
      return { amount: price.amount, asset: price.asset, ...(price.extra ? { extra: price.extra } : {}) };
    }

    let text: string;
    if (typeof price === "number") {
      text = String(price);
      if (!Number.isFinite(price) || price < 0 || /e/i.test(text)) {
        throw new Error(`invalid price ${text}: use a decimal string such as "0.01"`);
      }
    } else {
      text = price.trim();
    }
    const match = MONEY_RE.exec(text);
    if (!match) {
      throw new Error(`invalid price ${JSON.stringify(price)}: use "$0.01", "0.01", "0.01 USD" or { amount, asset }`);
    }
    const [, dollar, decimal, code] = match as unknown as [string, string | undefined, string, string | undefined];

    for (const parser of this.moneyParsers) {
      const parsed = await parser(decimal, network);
      if (parsed) {
        return this.parsePrice(parsed, network);
      }
    }

    let asset: TallyAsset | undefined;
    if (code !== undefined) {
      asset = this.assets.get(code.toUpperCase());
      if (!asset) {
        throw new Error(`unknown asset ${code}: add it to the scheme's asset table`);
      }
      if (dollar && !asset.usdPegged) {
        throw new Error(`"$" prices are in US dollars, but ${asset.code} is not USD-pegged`);
      }
    } else if (dollar) {
      asset = this.assets.get("USD") ?? this.assets.list().find((a) => a.usdPegged);
      if (!asset) {
        throw new Error('a "$" price needs a USD-pegged asset in the asset table');
      }
    } else {
      asset = this.assets.defaultAsset;
    }
    return { amount: decimalToSmallestUnits(decimal, asset.decimals).toString(), asset: asset.code };
  }

  enhancePaymentRequirements(
    paymentRequirements: PaymentRequirements,
    _supportedKind: SupportedKind,
    _facilitatorExtensions: string[],
  ): Promise<PaymentRequirements> {
    if (!isValidPayee(paymentRequirements.payTo)) {
      return Promise.reject(
        new Error(`payTo must be a Tally payee id (1..=64 of A-Z a-z 0-9 . _ -), got ${JSON.stringify(paymentRequirements.payTo)}`),
      );
    }
    if (!isValidAssetCode(paymentRequirements.asset)) {
      return Promise.reject(new Error(`invalid Tally asset code ${JSON.stringify(paymentRequirements.asset)}`));
    }
    parseAmount(paymentRequirements.amount, "price amount");
    return Promise.resolve(paymentRequirements);
  }

  /**
   * Names the requested resource in the offer (`extra.resource`). The SDK calls this
   * once per Tally offer of a PaymentRequired response, in order, and sends the
   * enriched offer to the facilitator with the payment, so the IOU is bound to it.
   */
  enrichPaymentRequiredResponse = (ctx: SchemePaymentRequiredContext): Promise<PaymentRequirements[] | void> => {
    if (!this.bindResource) {
      return Promise.resolve();
    }
    const url = ctx.resourceInfo?.url;
    let done = this.enriched.get(ctx.paymentRequiredResponse);
    if (!done) {
      done = new WeakSet();
      this.enriched.set(ctx.paymentRequiredResponse, done);
    }
    const offer = ctx.requirements.find(
      (r) => r.scheme === SCHEME && isTallyNetwork(r.network) && !done.has(r),
    );
    if (!offer) {
      return Promise.resolve();
    }
    done.add(offer);
    if (typeof url === "string" && url.length > 0 && offer.extra?.resource === undefined) {
      offer.extra = { ...(offer.extra ?? {}), resource: url };
    }
    return Promise.resolve(ctx.requirements);
  };

  validateFacilitatorSupport(network: Network, supportedKind: SupportedKind): string | void {
    const formats = supportedKind.extra?.formats;
    if (Array.isArray(formats) && !formats.includes(IOU_FORMAT)) {
      return `the facilitator for ${network} does not accept ${IOU_FORMAT} payments`;
    }
  }
}
