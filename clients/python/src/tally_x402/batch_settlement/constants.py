"""Names of Tally's x402 binding (docs/x402-binding.md)."""

SCHEME_BATCH_SETTLEMENT = "batch-settlement"
NETWORK_PATTERN = "tally:*"
"""The pattern the schemes are registered under: every Tally deployment's network."""
NETWORK_PREFIX = "tally:"
FORMAT_TALLY_IOU = "tally-iou-v1"
