import { U64_MAX } from "./constants.js";
import { isValidAssetCode } from "./iou.js";

/**
 * An asset a Tally deployment has registered. `decimals` is its scale
 * (`tally asset register USD --scale 6`): the decimal places between its smallest
 * unit and its display unit.
 */
export interface TallyAsset {
  /** The asset code, 1 to 12 bytes of `A-Z 0-9` (`USD`, `EUR`, `USDC`). */
  code: string;
  /** The asset's scale. Must equal the deployment's. */
  decimals: number;
  /**
   * Whether one display unit is worth one US dollar. The SDK client's USD spend cap
   * (`spendControls.maxAmountPerPayment`) applies to these; other assets need an
   * `allowedAssets` entry.
   */
  usdPegged?: boolean;
}

/**
 * The default asset table: USD at scale 6 (micro-dollars), as Tally's demo registers it.
 * Pass your own table when your deployment uses other assets or scales.
 */
export const DEFAULT_TALLY_ASSETS: readonly TallyAsset[] = Object.freeze([
  Object.freeze({ code: "USD", decimals: 6, usdPegged: true }),
]);

/** A lookup of asset codes to their scales. */
export class TallyAssetTable {
  private readonly byCode = new Map<string, TallyAsset>();
  /** The asset of a bare price like `"$0.01"` or `"0.01"`. */
  readonly defaultAsset: TallyAsset;

  /**
   * @param assets - the deployment's assets (default: USD at scale 6)
   * @param defaultAsset - the code bare prices are in (default: the first asset)
   */
  constructor(assets: readonly TallyAsset[] = DEFAULT_TALLY_ASSETS, defaultAsset?: string) {
    if (assets.length === 0) {
      throw new Error("the asset table needs at least one asset");
    }
    for (const asset of assets) {
      if (!isValidAssetCode(asset.code)) {
        throw new Error(`invalid asset code ${JSON.stringify(asset.code)}: 1 to 12 of A-Z 0-9`);
      }
      if (!Number.isInteger(asset.decimals) || asset.decimals < 0 || asset.decimals > 18) {
        throw new Error(`asset ${asset.code}: decimals must be an integer in 0..=18`);
      }
      if (this.byCode.has(asset.code)) {
        throw new Error(`asset ${asset.code} is listed twice`);
      }
      this.byCode.set(asset.code, { ...asset });
    }
    const chosen = this.byCode.get(defaultAsset ?? assets[0]!.code);
    if (!chosen) {
      throw new Error(`default asset ${String(defaultAsset)} is not in the table`);
    }
    this.defaultAsset = chosen;
  }

  /** The asset with this code, or undefined. */
  get(code: string): TallyAsset | undefined {
    return this.byCode.get(code);
  }

  /** Every asset in the table. */
  list(): TallyAsset[] {
    return [...this.byCode.values()];
  }
}

const DECIMAL_RE = /^(0|[1-9][0-9]*)(?:\.([0-9]+))?$/;

/**
 * Converts a decimal display amount (`"0.01"`) to smallest units at `decimals`, with
 * exact integer arithmetic. Refuses signs, exponents, more fractional digits than the
 * scale holds (no silent rounding), zero, and anything above 2^64-1.
 */
export function decimalToSmallestUnits(decimal: string, decimals: number): bigint {
  const match = DECIMAL_RE.exec(decimal);
  if (!match) {
    throw new Error(`invalid decimal amount ${JSON.stringify(decimal)}`);
  }
  const whole = match[1]!;
  const fraction = (match[2] ?? "").replace(/0+$/, "");
  if (fraction.length > decimals) {
    throw new Error(
      `${decimal} has more decimal places than the asset's scale (${decimals}); it is not a whole number of smallest units`,
    );
  }
  const units = BigInt(whole) * 10n ** BigInt(decimals) + BigInt(fraction.padEnd(decimals, "0") || "0");
  if (units < 1n) {
    throw new Error("a price must be at least one smallest unit");
  }
  if (units > U64_MAX) {
    throw new Error(`${decimal} is above the largest amount an IOU can carry`);
  }
  return units;
}

/** Formats smallest units as a decimal display amount (`1500` at scale 6 is `"0.0015"`). */
export function smallestUnitsToDecimal(units: bigint, decimals: number): string {
  if (units < 0n) {
    throw new Error("negative amount");
  }
  const scale = 10n ** BigInt(decimals);
  const whole = units / scale;
  const fraction = (units % scale).toString().padStart(decimals, "0").replace(/0+$/, "");
  return fraction ? `${whole}.${fraction}` : whole.toString();
}
