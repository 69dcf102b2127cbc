//! # Bank rails: the payment files Tally hands to a bank, and the answers it reads back
//!
//! In the credit-backed model Tally pays payees out of a treasury account. For fiat payouts
//! that means a file, uploaded to the treasury's bank (EBICS, SFTP, a portal); there is no
//! API call that moves the money. This module writes those files and parses the bank's
//! answers. Everything here is a pure function from values to bytes (or back): no clock, no
//! file I/O, no network. The settlement driver owns the I/O and writes each file atomically
//! (temporary file, fsync, rename).
//!
//! ## The files
//!
//! - **ISO 20022 `pain.001.001.09`** ([`write_pain001`]), "customer credit transfer
//!   initiation": SEPA credit transfers in EUR, and the same message for other currencies
//!   where the bank accepts ISO 20022 (most do). One group header, one payment
//!   information block (debtor = the treasury account), one `CdtTrfTxInf` per payout. Every
//!   file the test suite writes is checked against the official XSD with `xmllint`.
//! - **NACHA** ([`write_nacha`]): US ACH credits, PPD (to consumers) and CCD (to companies),
//!   94-character records blocked by ten. [`parse_nacha`] reads a file back and re-derives
//!   every count, hash and total from the entries, refusing a file whose control records
//!   disagree.
//! - **ISO 20022 `pain.002`** ([`parse_pain002`]), "customer payment status report": the
//!   bank's answer to a `pain.001`, per transaction (accepted, rejected with a reason,
//!   pending) or for the whole message at once. Versions `.001.03` and `.001.12` are
//!   written by [`write_pain002`] (a bank simulator for tests and the demo) and parsed;
//!   the parser reads any `pain.002.001.*` that uses the common elements.
//!
//! ## How the settlement driver uses them
//!
//! 1. **One file per settlement epoch and currency.** After an epoch is sealed and netted,
//!    the payouts of one currency become one [`Pain001File`] (or one [`NachaFile`] for
//!    USD over ACH). The message id is derived from the epoch and currency, so it is
//!    stable.
//! 2. **EndToEndId = the Tally payout id.** Each [`CreditTransfer::end_to_end_id`] is the
//!    payout's id; banks carry it through to the payee's statement and back in status
//!    reports. In NACHA the payout id (prefix, ≤ 15 characters) is the individual
//!    identification number, and the trace number is derived from the entry's position.
//! 3. **Deterministic bytes.** The same input gives byte-identical output: the creation
//!    time is an input ([`Pain001File::created_at_ms`]), text is transliterated by a fixed
//!    table, and nothing depends on hash-map order or the locale. After a crash the driver
//!    regenerates the file from the persisted settlement state and gets exactly the bytes
//!    it may already have uploaded, so a retry can be recognised (same hash) rather than
//!    paying twice.
//! 4. **Status reports map back by EndToEndId.** [`parse_pain002`] gives a
//!    [`PaymentStatusReport`]; [`PaymentStatusReport::status_of`] answers for one payout id,
//!    falling back to a group-level (or payment-information-level) status when the bank
//!    answered for the whole message. A group-level `RJCT` with no per-transaction entries
//!    means *every* transaction of the original message was rejected: `group_status ==
//!    Some("RJCT")`, `transactions` empty, and [`PaymentStatusReport::unlisted_status`]
//!    returns [`PaymentStatus::Rejected`] with the group's reason.
//!
//! ## Rules shared by every writer
//!
//! - Amounts are integers in minor units (`u128` in the API), converted with checked
//!   arithmetic and formatted as decimals by string operations; never floats.
//! - Identifiers (message id, EndToEndId, NACHA ids, account numbers) are validated and
//!   refused when wrong; they are never silently altered, because the driver must find them
//!   again. Free text (names, remittance) is cleaned deterministically: transliterated to
//!   the allowed character set and truncated to the field's length.
//! - Every collection is bounded by a named constant; bad input is a [`BankFileError`],
//!   never a panic.

mod nacha;
mod pain001;
mod pain002;
mod text;

pub use nacha::{
    AccountKind, AchCredit, BATCHES_PER_NACHA_FILE_MAX, ENTRIES_PER_NACHA_FILE_MAX, NACHA_RECORD_CHARS, NachaBatch,
    NachaBatchSummary, NachaEntry, NachaFile, NachaSummary, SecCode, aba_routing_is_valid, parse_nacha, write_nacha,
};
pub use pain001::{
    CURRENCY_MINOR_UNITS_MAX, CreditTransfer, Iso20022Debtor, PAIN001_NAMESPACE, Pain001File, TRANSFERS_PER_FILE_MAX,
    iban_is_valid, write_pain001,
};
pub use pain002::{
    PAIN002_BYTES_MAX, PAIN002_ELEMENTS_MAX, Pain002File, Pain002Version, PaymentInfoStatus, PaymentStatus,
    PaymentStatusReport, StatusReason, TransactionStatus, answer_pain001, parse_pain002, write_pain002,
};

/// Everything that can go wrong writing or reading a bank file. Each variant names the
/// field (with its index, e.g. `transfers[3].creditor_iban`) so an operator can fix the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BankFileError {
    /// A payment file must carry at least one payment.
    #[error("the file has no payments")]
    Empty,
    /// More items than the named bound allows.
    #[error("{what}: {count} exceeds the maximum of {max}")]
    TooMany { what: &'static str, count: usize, max: usize },
    /// A payment of zero is refused (it is a bug upstream, not a payout).
    #[error("{field}: amount must be greater than zero")]
    ZeroAmount { field: String },
    /// One amount does not fit the format's digits.
    #[error("{field}: amount {amount} does not fit the format (maximum {max})")]
    AmountTooLarge { field: String, amount: u128, max: u128 },
    /// A sum of amounts does not fit the format's control-total digits.
    #[error("{field}: total does not fit the format (maximum {max})")]
    TotalTooLarge { field: String, max: u128 },
    /// A text or identifier has a length outside the allowed range (in characters).
    #[error("{field}: length {len} outside {min}..={max}")]
    BadLength { field: String, len: usize, min: usize, max: usize },
    /// A field holds characters or a shape the format does not allow.
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: &'static str },
    /// A routing number fails the ABA 3-7-1 check digit.
    #[error("{field}: routing number {value} fails the ABA check digit")]
    BadRoutingNumber { field: String, value: String },
    /// An IBAN fails its shape or ISO 13616 mod-97 check.
    #[error("{field}: {value:?} is not a valid IBAN")]
    BadIban { field: String, value: String },
    /// A timestamp or date cannot be represented in the format.
    #[error("{field}: date or time out of the format's range")]
    BadDate { field: String },
    /// Input to a parser is larger than its bound.
    #[error("input of {bytes} bytes exceeds the maximum of {max}")]
    InputTooLarge { bytes: usize, max: usize },
    /// Input to a parser is not a well-formed file of the expected kind.
    #[error("malformed {format} at {position}: {reason}")]
    Malformed { format: &'static str, position: u64, reason: String },
    /// A control record (count, hash, total) disagrees with the contents.
    #[error("{what}: control record says {declared}, contents give {computed}")]
    ControlMismatch { what: String, declared: String, computed: String },
    /// Writing XML failed (only possible through an internal bug: the sink is a `Vec`).
    #[error("xml writer: {0}")]
    Xml(String),
}

impl From<std::io::Error> for BankFileError {
    fn from(error: std::io::Error) -> Self {
        BankFileError::Xml(error.to_string())
    }
}

/// Formats an integer amount in minor units as a decimal string with exactly
/// `minor_units` fraction digits (`12345`, 2 → `"123.45"`; `5`, 0 → `"5"`). Pure string
/// arithmetic: no floats.
pub(crate) fn format_minor_units(amount: u128, minor_units: u8) -> String {
    let digits = amount.to_string();
    let minor = usize::from(minor_units);
    if minor == 0 {
        return digits;
    }
    let padded =
        if digits.len() <= minor { format!("{}{}", "0".repeat(minor + 1 - digits.len()), digits) } else { digits };
    let split = padded.len() - minor;
    format!("{}.{}", &padded[..split], &padded[split..])
}

/// Milliseconds since the Unix epoch as a UTC date-time, years 1970..=9999 only.
pub(crate) fn utc_datetime(created_at_ms: u64, field: &str) -> Result<time::OffsetDateTime, BankFileError> {
    let nanos = i128::from(created_at_ms).checked_mul(1_000_000).ok_or_else(|| bad_date(field))?;
    let datetime = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| bad_date(field))?;
    if datetime.year() > 9999 {
        return Err(bad_date(field));
    }
    Ok(datetime)
}

/// ISO 8601 UTC with milliseconds, e.g. `2025-03-01T09:30:00.250Z` (valid `xs:dateTime`).
pub(crate) fn iso_datetime(created_at_ms: u64, field: &str) -> Result<String, BankFileError> {
    let t = utc_datetime(created_at_ms, field)?;
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    ))
}

pub(crate) fn bad_date(field: &str) -> BankFileError {
    BankFileError::BadDate { field: field.to_string() }
}

pub(crate) fn invalid(field: &str, reason: &'static str) -> BankFileError {
    BankFileError::InvalidField { field: field.to_string(), reason }
}

/// Checks a length in characters against `min..=max`.
pub(crate) fn check_len(field: &str, value: &str, min: usize, max: usize) -> Result<(), BankFileError> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(BankFileError::BadLength { field: field.to_string(), len, min, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_format_without_floats() {
        assert_eq!(format_minor_units(0, 2), "0.00");
        assert_eq!(format_minor_units(5, 2), "0.05");
        assert_eq!(format_minor_units(12345, 2), "123.45");
        assert_eq!(format_minor_units(100, 2), "1.00");
        assert_eq!(format_minor_units(7, 0), "7");
        assert_eq!(format_minor_units(1, 4), "0.0001");
        assert_eq!(format_minor_units(999_999_999_999_999_999, 2), "9999999999999999.99");
        assert_eq!(format_minor_units(u128::MAX, 3).len(), u128::MAX.to_string().len() + 1);
    }

    #[test]
    fn datetimes_are_utc_with_milliseconds() {
        assert_eq!(iso_datetime(0, "t").unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_datetime(1_740_821_400_250, "t").unwrap(), "2025-03-01T09:30:00.250Z");
        assert!(iso_datetime(u64::MAX, "t").is_err());
        assert!(iso_datetime(253_402_300_800_000, "t").is_err());
        assert!(iso_datetime(253_402_300_799_999, "t").is_ok());
    }
}
