//! The per-IOU result codes.
//!
//! A batch is never rejected as a whole for what one IOU got wrong: every IOU
//! gets its own outcome. The numeric values are part of the wire protocol
//! (`proto/tally/v1/ingest.proto` mirrors them) and must never be reused.

/// What became of one submitted IOU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Outcome {
    /// Durably appended to the ledger; a commitment id is attached.
    Accepted = 1,
    /// Identical to an IOU accepted earlier; the original commitment id is
    /// attached. Idempotent success: nothing new was recorded.
    Duplicate = 2,
    /// Same payer key and nonce as an accepted IOU, different content.
    Conflict = 3,
    /// The signature does not verify under the payer key.
    BadSignature = 4,
    /// No payer has registered this public key.
    UnknownPayer = 5,
    /// The payer is suspended.
    SuspendedPayer = 6,
    /// No payee has this id.
    UnknownPayee = 7,
    /// No asset has this code.
    UnknownAsset = 8,
    /// The asset exists but accepts no new IOUs.
    AssetDisabled = 9,
    /// `expires_at` has passed.
    Expired = 10,
    /// `issued_at` lies further in the future than the allowed clock skew.
    NotYetValid = 11,
    /// `expires_at - issued_at` exceeds the configured maximum validity, or
    /// `expires_at <= issued_at`.
    ValidityTooLong = 12,
    /// The amount is zero.
    InvalidAmount = 13,
    /// Accepting it would take the payer's unsettled total past its limit.
    CreditLimitExceeded = 14,
    /// The IOU names another Tally network.
    WrongNetwork = 15,
    /// A field is missing, too long or of the wrong shape.
    Malformed = 16,
    /// The payer revoked the key that signed it.
    KeyRevoked = 17,
    /// The payee is suspended.
    PayeeSuspended = 18,
}

impl Outcome {
    /// Every outcome, in wire order. Used by metrics and exhaustive tests.
    pub const ALL: [Outcome; 18] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::Conflict,
        Outcome::BadSignature,
        Outcome::UnknownPayer,
        Outcome::SuspendedPayer,
        Outcome::UnknownPayee,
        Outcome::UnknownAsset,
        Outcome::AssetDisabled,
        Outcome::Expired,
        Outcome::NotYetValid,
        Outcome::ValidityTooLong,
        Outcome::InvalidAmount,
        Outcome::CreditLimitExceeded,
        Outcome::WrongNetwork,
        Outcome::Malformed,
        Outcome::KeyRevoked,
        Outcome::PayeeSuspended,
    ];

    /// A stable snake_case name, used in metrics labels, logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Conflict => "conflict",
            Outcome::BadSignature => "bad_signature",
            Outcome::UnknownPayer => "unknown_payer",
            Outcome::SuspendedPayer => "suspended_payer",
            Outcome::UnknownPayee => "unknown_payee",
            Outcome::UnknownAsset => "unknown_asset",
            Outcome::AssetDisabled => "asset_disabled",
            Outcome::Expired => "expired",
            Outcome::NotYetValid => "not_yet_valid",
            Outcome::ValidityTooLong => "validity_too_long",
            Outcome::InvalidAmount => "invalid_amount",
            Outcome::CreditLimitExceeded => "credit_limit_exceeded",
            Outcome::WrongNetwork => "wrong_network",
            Outcome::Malformed => "malformed",
            Outcome::KeyRevoked => "key_revoked",
            Outcome::PayeeSuspended => "payee_suspended",
        }
    }

    /// Whether the IOU is recorded in the ledger (now or earlier).
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Accepted | Outcome::Duplicate)
    }

    /// The inverse of `as u8`.
    pub fn from_u8(value: u8) -> Option<Outcome> {
        Outcome::ALL.iter().copied().find(|o| *o as u8 == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_are_dense_and_round_trip() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as u8 as usize, i + 1);
            assert_eq!(Outcome::from_u8(*outcome as u8), Some(*outcome));
        }
        assert_eq!(Outcome::from_u8(0), None);
        assert_eq!(Outcome::from_u8(Outcome::ALL.len() as u8 + 1), None);
    }
}
