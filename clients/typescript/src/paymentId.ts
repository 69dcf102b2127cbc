import { createHash, randomUUID } from "node:crypto";

import { PAYMENT_IDENTIFIER } from "./constants.js";

const PAYMENT_ID_RE = /^[A-Za-z0-9_-]{16,128}$/;
const PAYMENT_ID_TAG = Buffer.from("tally-payment-id-v1", "ascii");

/** True when `id` is a valid x402 payment identifier: 16 to 128 of `A-Z a-z 0-9 - _`. */
export function isValidPaymentId(id: unknown): id is string {
  return typeof id === "string" && PAYMENT_ID_RE.test(id);
}

/** A fresh payment identifier (`pay_` and 32 random hex digits). */
export function generatePaymentId(): string {
  return `pay_${randomUUID().replace(/-/g, "")}`;
}

/**
 * The IOU nonce a payment identifier stands for (`docs/x402-binding.md`, section 4):
 * the first 16 bytes of `SHA-256("tally-payment-id-v1" ‖ id)`.
 */
export function nonceFromPaymentId(id: string): Uint8Array {
  if (!isValidPaymentId(id)) {
    throw new Error(
      `invalid payment identifier ${JSON.stringify(id)}: 16 to 128 characters of A-Z a-z 0-9 - _`,
    );
  }
  const digest = createHash("sha256").update(PAYMENT_ID_TAG).update(id, "ascii").digest();
  return Uint8Array.from(digest.subarray(0, 16));
}

/** The `payment-identifier` declaration in an extensions map, when it is an object. */
export function paymentIdentifierDeclaration(
  extensions: Record<string, unknown> | undefined,
): { info?: Record<string, unknown>; required?: unknown } | undefined {
  const value = extensions?.[PAYMENT_IDENTIFIER];
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    return undefined;
  }
  return value;
}

/** The `info.id` of a `payment-identifier` extension, when there is one. */
export function paymentIdFromExtensions(extensions: Record<string, unknown> | undefined): string | undefined {
  const info = paymentIdentifierDeclaration(extensions)?.info;
  if (info === null || typeof info !== "object") {
    return undefined;
  }
  const id = info.id;
  return typeof id === "string" ? id : undefined;
}
