// Shared parts of Tally's x402 `batch-settlement` binding. The SDK plugins live in
// the `./client`, `./server` and `./facilitator` entry points.
export {
  IOU_FORMAT,
  PAYMENT_IDENTIFIER,
  SCHEME,
  TALLY_NETWORK_PATTERN,
  U64_MAX,
  VALIDITY_MAX_SECONDS,
  WEB_BOT_AUTH_FORMAT,
  isTallyNetwork,
} from "./constants.js";
export {
  bytesToHex,
  generateKeyPair,
  hexToBytes,
  keyPairFromSeed,
  verifyEd25519,
  type Ed25519KeyPair,
} from "./ed25519.js";
export {
  iouFromJson,
  iouSigningBytes,
  iouToJson,
  isValidAssetCode,
  isValidNetwork,
  isValidPayee,
  parseAmount,
  signIou,
  tallyIouPayload,
  validateIou,
  verifyIou,
  type Iou,
  type IouJson,
  type TallyIouPayload,
} from "./iou.js";
export {
  DEFAULT_TALLY_ASSETS,
  TallyAssetTable,
  decimalToSmallestUnits,
  smallestUnitsToDecimal,
  type TallyAsset,
} from "./assets.js";
export { generatePaymentId, isValidPaymentId, nonceFromPaymentId, paymentIdFromExtensions } from "./paymentId.js";
