//! ISO 20022 `pain.001.001.09` (CustomerCreditTransferInitiationV09) writer.
//!
//! One file = one group header + one payment information block (the treasury account as
//! debtor) + one `CdtTrfTxInf` per payout. In EUR the file is a SEPA credit transfer:
//! `SvcLvl/Cd = SEPA`, charge bearer `SLEV`, every text in the SEPA character set. In any
//! other currency the same message is written without the SEPA service level and with
//! charge bearer `SHAR` (the usual choice for non-SEPA transfers; `SLEV` needs a service
//! level). The layout follows the order of `schemas/iso20022/pain.001.001.09.xsd`, and
//! the test suite validates generated files against it with `xmllint`.

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

use super::text::{is_sepa_char, sepa_text, xml_text};
use super::{BankFileError, check_len, format_minor_units, invalid, iso_datetime};

/// The XML namespace of the message written here.
pub const PAIN001_NAMESPACE: &str = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09";
/// Transfers in one file. Banks commonly cap files near this; more payouts take more files.
pub const TRANSFERS_PER_FILE_MAX: usize = 100_000;
/// ISO 4217 currencies have 0 to 4 minor units.
pub const CURRENCY_MINOR_UNITS_MAX: u8 = 4;
/// `Max35Text`: message, payment-information and end-to-end ids.
const ID_CHARS_MAX: usize = 35;
/// `Max140Text`: names and unstructured remittance.
const TEXT_CHARS_MAX: usize = 140;
/// Amounts and control sums are `totalDigits 18` in the XSD: integers in minor units must
/// stay below 10^18 so the decimal has at most 18 digits.
const AMOUNT_MINOR_LIMIT: u128 = 1_000_000_000_000_000_000;
/// Indentation of the written XML (deterministic, readable).
const INDENT_SPACES: usize = 2;

/// One credit transfer file: one settlement epoch, one currency, one debtor account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pain001File {
    /// `GrpHdr/MsgId` and `PmtInfId`: 1..=35 characters of the SEPA identifier set, stable
    /// for an (epoch, currency) so a regenerated file is identical.
    pub message_id: String,
    /// `CreDtTm`, milliseconds since the Unix epoch (an input: no clock is read here).
    pub created_at_ms: u64,
    /// `ReqdExctnDt/Dt`.
    pub requested_execution_date: time::Date,
    /// The treasury account paying out.
    pub debtor: Iso20022Debtor,
    /// ISO 4217 code, three upper-case letters (`EUR` makes the file SEPA).
    pub currency: String,
    /// Minor units of `currency` (2 for EUR, 0 for JPY). Must be 2 for EUR.
    pub currency_minor_units: u8,
    /// The payouts, written in this order.
    pub transfers: Vec<CreditTransfer>,
}

/// The debtor (treasury) account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iso20022Debtor {
    /// Account holder name (cleaned and cut to 140 characters).
    pub name: String,
    /// IBAN, upper case, no spaces, valid mod-97.
    pub iban: String,
    /// BIC of the debtor's bank; without it `DbtrAgt` says `NOTPROVIDED` (allowed in SEPA).
    pub bic: Option<String>,
}

/// One payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditTransfer {
    /// `EndToEndId`: the Tally payout id, 1..=35 characters of the SEPA identifier set.
    pub end_to_end_id: String,
    /// Amount in minor units of the file's currency; > 0 and < 10^18.
    pub amount_minor: u128,
    /// Payee name (cleaned and cut to 140 characters).
    pub creditor_name: String,
    /// Payee IBAN, upper case, no spaces, valid mod-97.
    pub creditor_iban: String,
    /// Payee's bank; optional in SEPA (the IBAN identifies it).
    pub creditor_bic: Option<String>,
    /// Unstructured remittance (cleaned and cut to 140 characters; omitted when empty).
    pub remittance: String,
}

/// Validated, cleaned values of one transfer, ready to write.
struct CleanTransfer<'a> {
    end_to_end_id: &'a str,
    amount: String,
    creditor_name: String,
    creditor_iban: &'a str,
    creditor_bic: Option<&'a str>,
    remittance: String,
}

/// Writes `file` as `pain.001.001.09` XML (UTF-8, two-space indentation, trailing newline).
/// Deterministic: the same `file` always gives the same bytes.
pub fn write_pain001(file: &Pain001File) -> Result<Vec<u8>, BankFileError> {
    if file.transfers.is_empty() {
        return Err(BankFileError::Empty);
    }
    if file.transfers.len() > TRANSFERS_PER_FILE_MAX {
        return Err(BankFileError::TooMany {
            what: "transfers",
            count: file.transfers.len(),
            max: TRANSFERS_PER_FILE_MAX,
        });
    }
    check_identifier("message_id", &file.message_id)?;
    check_currency(&file.currency, file.currency_minor_units)?;
    let sepa = file.currency == "EUR";
    let clean = |input: &str| if sepa { sepa_text(input, TEXT_CHARS_MAX) } else { xml_text(input, TEXT_CHARS_MAX) };

    let debtor_name = clean(&file.debtor.name);
    if debtor_name.is_empty() {
        return Err(invalid("debtor.name", "empty after cleaning"));
    }
    check_iban("debtor.iban", &file.debtor.iban)?;
    if let Some(bic) = &file.debtor.bic {
        check_bic("debtor.bic", bic)?;
    }
    let created = iso_datetime(file.created_at_ms, "created_at_ms")?;
    let execution_date = iso_date(file.requested_execution_date)?;

    let mut transfers = Vec::with_capacity(file.transfers.len());
    let mut total: u128 = 0;
    for (index, transfer) in file.transfers.iter().enumerate() {
        let field = |name: &str| format!("transfers[{index}].{name}");
        check_identifier(&field("end_to_end_id"), &transfer.end_to_end_id)?;
        if transfer.amount_minor == 0 {
            return Err(BankFileError::ZeroAmount { field: field("amount_minor") });
        }
        if transfer.amount_minor >= AMOUNT_MINOR_LIMIT {
            return Err(BankFileError::AmountTooLarge {
                field: field("amount_minor"),
                amount: transfer.amount_minor,
                max: AMOUNT_MINOR_LIMIT - 1,
            });
        }
        total = total.checked_add(transfer.amount_minor).filter(|sum| *sum < AMOUNT_MINOR_LIMIT).ok_or_else(|| {
            BankFileError::TotalTooLarge { field: "CtrlSum".to_string(), max: AMOUNT_MINOR_LIMIT - 1 }
        })?;
        let creditor_name = clean(&transfer.creditor_name);
        if creditor_name.is_empty() {
            return Err(invalid(&field("creditor_name"), "empty after cleaning"));
        }
        check_iban(&field("creditor_iban"), &transfer.creditor_iban)?;
        if let Some(bic) = &transfer.creditor_bic {
            check_bic(&field("creditor_bic"), bic)?;
        }
        transfers.push(CleanTransfer {
            end_to_end_id: &transfer.end_to_end_id,
            amount: format_minor_units(transfer.amount_minor, file.currency_minor_units),
            creditor_name,
            creditor_iban: &transfer.creditor_iban,
            creditor_bic: transfer.creditor_bic.as_deref(),
            remittance: clean(&transfer.remittance),
        });
    }
    let count = transfers.len().to_string();
    let control_sum = format_minor_units(total, file.currency_minor_units);

    let mut w = Writer::new_with_indent(Vec::new(), b' ', INDENT_SPACES);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.write_event(Event::Start(BytesStart::new("Document").with_attributes([("xmlns", PAIN001_NAMESPACE)])))?;
    open(&mut w, "CstmrCdtTrfInitn")?;

    open(&mut w, "GrpHdr")?;
    leaf(&mut w, "MsgId", &file.message_id)?;
    leaf(&mut w, "CreDtTm", &created)?;
    leaf(&mut w, "NbOfTxs", &count)?;
    leaf(&mut w, "CtrlSum", &control_sum)?;
    open(&mut w, "InitgPty")?;
    leaf(&mut w, "Nm", &debtor_name)?;
    close(&mut w, "InitgPty")?;
    close(&mut w, "GrpHdr")?;

    open(&mut w, "PmtInf")?;
    leaf(&mut w, "PmtInfId", &file.message_id)?;
    leaf(&mut w, "PmtMtd", "TRF")?;
    leaf(&mut w, "NbOfTxs", &count)?;
    leaf(&mut w, "CtrlSum", &control_sum)?;
    if sepa {
        open(&mut w, "PmtTpInf")?;
        open(&mut w, "SvcLvl")?;
        leaf(&mut w, "Cd", "SEPA")?;
        close(&mut w, "SvcLvl")?;
        close(&mut w, "PmtTpInf")?;
    }
    open(&mut w, "ReqdExctnDt")?;
    leaf(&mut w, "Dt", &execution_date)?;
    close(&mut w, "ReqdExctnDt")?;
    open(&mut w, "Dbtr")?;
    leaf(&mut w, "Nm", &debtor_name)?;
    close(&mut w, "Dbtr")?;
    account(&mut w, "DbtrAcct", &file.debtor.iban)?;
    open(&mut w, "DbtrAgt")?;
    open(&mut w, "FinInstnId")?;
    match &file.debtor.bic {
        Some(bic) => leaf(&mut w, "BICFI", bic)?,
        None => {
            open(&mut w, "Othr")?;
            leaf(&mut w, "Id", "NOTPROVIDED")?;
            close(&mut w, "Othr")?;
        }
    }
    close(&mut w, "FinInstnId")?;
    close(&mut w, "DbtrAgt")?;
    leaf(&mut w, "ChrgBr", if sepa { "SLEV" } else { "SHAR" })?;

    for transfer in &transfers {
        open(&mut w, "CdtTrfTxInf")?;
        open(&mut w, "PmtId")?;
        leaf(&mut w, "EndToEndId", transfer.end_to_end_id)?;
        close(&mut w, "PmtId")?;
        open(&mut w, "Amt")?;
        w.write_event(Event::Start(BytesStart::new("InstdAmt").with_attributes([("Ccy", file.currency.as_str())])))?;
        w.write_event(Event::Text(BytesText::new(&transfer.amount)))?;
        close(&mut w, "InstdAmt")?;
        close(&mut w, "Amt")?;
        if let Some(bic) = transfer.creditor_bic {
            open(&mut w, "CdtrAgt")?;
            open(&mut w, "FinInstnId")?;
            leaf(&mut w, "BICFI", bic)?;
            close(&mut w, "FinInstnId")?;
            close(&mut w, "CdtrAgt")?;
        }
        open(&mut w, "Cdtr")?;
        leaf(&mut w, "Nm", &transfer.creditor_name)?;
        close(&mut w, "Cdtr")?;
        account(&mut w, "CdtrAcct", transfer.creditor_iban)?;
        if !transfer.remittance.is_empty() {
            open(&mut w, "RmtInf")?;
            leaf(&mut w, "Ustrd", &transfer.remittance)?;
            close(&mut w, "RmtInf")?;
        }
        close(&mut w, "CdtTrfTxInf")?;
    }
    close(&mut w, "PmtInf")?;
    close(&mut w, "CstmrCdtTrfInitn")?;
    close(&mut w, "Document")?;
    let mut bytes = w.into_inner();
    bytes.push(b'\n');
    Ok(bytes)
}

pub(crate) fn open(w: &mut Writer<Vec<u8>>, name: &str) -> Result<(), BankFileError> {
    w.write_event(Event::Start(BytesStart::new(name)))?;
    Ok(())
}

pub(crate) fn close(w: &mut Writer<Vec<u8>>, name: &str) -> Result<(), BankFileError> {
    w.write_event(Event::End(BytesEnd::new(name)))?;
    Ok(())
}

/// `<name>text</name>`, with `text` escaped by the writer.
pub(crate) fn leaf(w: &mut Writer<Vec<u8>>, name: &str, text: &str) -> Result<(), BankFileError> {
    w.create_element(name).write_text_content(BytesText::new(text))?;
    Ok(())
}

fn account(w: &mut Writer<Vec<u8>>, name: &str, iban: &str) -> Result<(), BankFileError> {
    open(w, name)?;
    open(w, "Id")?;
    leaf(w, "IBAN", iban)?;
    close(w, "Id")?;
    close(w, name)
}

/// `YYYY-MM-DD`, years 1..=9999 only (`xs:date` with four digits, no sign).
fn iso_date(date: time::Date) -> Result<String, BankFileError> {
    if !(1..=9999).contains(&date.year()) {
        return Err(super::bad_date("requested_execution_date"));
    }
    Ok(format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day()))
}

/// A SEPA identifier (EPC restricted `Max35Text`): 1..=35 characters of the SEPA set, not
/// starting or ending with `/` and without `//`. Applied in every currency: Tally ids fit.
pub(crate) fn check_identifier(field: &str, id: &str) -> Result<(), BankFileError> {
    check_len(field, id, 1, ID_CHARS_MAX)?;
    if !id.chars().all(is_sepa_char) {
        return Err(invalid(field, "characters outside the SEPA identifier set"));
    }
    if id.starts_with('/') || id.ends_with('/') || id.contains("//") || id.starts_with(' ') || id.ends_with(' ') {
        return Err(invalid(field, "must not start or end with '/' or a space, nor contain '//'"));
    }
    Ok(())
}

fn check_currency(currency: &str, minor_units: u8) -> Result<(), BankFileError> {
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid("currency", "must be three upper-case letters (ISO 4217)"));
    }
    if minor_units > CURRENCY_MINOR_UNITS_MAX {
        return Err(invalid("currency_minor_units", "ISO 4217 currencies have at most 4 minor units"));
    }
    if currency == "EUR" && minor_units != 2 {
        return Err(invalid("currency_minor_units", "EUR has 2 minor units"));
    }
    Ok(())
}

/// `BICFIDec2014Identifier`: `[A-Z0-9]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?`.
fn check_bic(field: &str, bic: &str) -> Result<(), BankFileError> {
    let b = bic.as_bytes();
    let upper_alnum = |c: &u8| c.is_ascii_uppercase() || c.is_ascii_digit();
    let shape = (b.len() == 8 || b.len() == 11)
        && b[..4].iter().all(upper_alnum)
        && b[4..6].iter().all(u8::is_ascii_uppercase)
        && b[6..].iter().all(upper_alnum);
    if !shape {
        return Err(invalid(field, "not a BIC (8 or 11 upper-case letters and digits)"));
    }
    Ok(())
}

fn check_iban(field: &str, iban: &str) -> Result<(), BankFileError> {
    if !iban_is_valid(iban) {
        return Err(BankFileError::BadIban { field: field.to_string(), value: iban.to_string() });
    }
    Ok(())
}

/// ISO 13616 IBAN check: shared with registration-time checks.
pub use tally_core::destination::iban_is_valid;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_bics() {
        assert!(check_identifier("id", "TALLY-E42-EUR").is_ok());
        assert!(check_identifier("id", "").is_err());
        assert!(check_identifier("id", &"a".repeat(36)).is_err());
        assert!(check_identifier("id", "a//b").is_err());
        assert!(check_identifier("id", "/ab").is_err());
        assert!(check_identifier("id", "a_b").is_err());
        assert!(check_bic("b", "COBADEFFXXX").is_ok());
        assert!(check_bic("b", "COBADEFF").is_ok());
        assert!(check_bic("b", "COBADEF").is_err());
        assert!(check_bic("b", "COBA1EFF").is_err());
        assert!(check_bic("b", "cobadeff").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(iso_date(time::macros::date!(2025 - 03 - 07)).unwrap(), "2025-03-07");
    }
}
