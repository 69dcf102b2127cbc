/** The x402 scheme Tally implements. */
export const SCHEME = "batch-settlement";

/** The network pattern every Tally deployment matches (`tally:mainnet`, `tally:test`, …). */
export const TALLY_NETWORK_PATTERN = "tally:*" as const;

/** The payload format of a Tally IOU (`docs/x402-binding.md`, section 1). */
export const IOU_FORMAT = "tally-iou-v1";

/** The payload format of a Web Bot Auth payment (`docs/x402-binding.md`, section 1). */
export const WEB_BOT_AUTH_FORMAT = "web-bot-auth";

/** The x402 `payment-identifier` extension key. */
export const PAYMENT_IDENTIFIER = "payment-identifier";

/** The largest value of a u64, the upper bound of an IOU amount. */
export const U64_MAX = (1n << 64n) - 1n;

/** Tally's default longest validity window, `validity_max_s` (`docs/iou-format.md`, section 4). */
export const VALIDITY_MAX_SECONDS = 86_400;

/** True when `network` is a Tally network id (`tally:…`). */
export function isTallyNetwork(network: string): boolean {
  return network.startsWith("tally:") && network.length > "tally:".length;
}
