//! NACHA (US ACH) credit files: writer and an independent parser/validator.
//!
//! Layout (every record exactly 94 characters, then `\n`):
//!
//! | type | record | notes |
//! |---|---|---|
//! | `1` | file header | priority `01`, destination ` ` + 9-digit routing, origin (10), date/time (UTC from `created_at_ms`), record size `094`, blocking factor `10`, format `1` |
//! | `5` | batch header | service class `220` (credits only), SEC code `PPD`/`CCD`, effective entry date, originator status `1`, ODFI (8), batch number |
//! | `6` | entry detail | transaction code `22` (checking) / `32` (savings), receiving DFI (8) + check digit, account (17), amount in cents (10), id (15), name (22), trace = ODFI (8) + sequence (7) |
//! | `8` | batch control | entry/addenda count, entry hash, debit total `0`, credit total, company id, ODFI, batch number |
//! | `9` | file control | batch count, block count, entry/addenda count, entry hash, totals |
//! | `9…9` | filler | to a multiple of 10 records |
//!
//! The entry hash is the sum of the 8-digit receiving-DFI prefixes, keeping the last 10
//! digits. Trace sequence numbers run from 1 across the whole file, so trace numbers are
//! unique within it and derived from position only (deterministic).

use super::text::ach_text;
use super::{BankFileError, bad_date, invalid, utc_datetime};

/// Characters per record, without the line feed.
pub const NACHA_RECORD_CHARS: usize = 94;
/// Records per block.
const RECORDS_PER_BLOCK: usize = 10;
/// Entries in one file, across its batches (well inside the 8-digit entry count).
pub const ENTRIES_PER_NACHA_FILE_MAX: usize = 100_000;
/// Batches in one file (well inside the 6-digit batch count and 7-digit batch number).
pub const BATCHES_PER_NACHA_FILE_MAX: usize = 10_000;
/// Input bound for [`parse_nacha`]: header, control and a batch header/control per batch,
/// every entry with one addenda, padded to a block. Anything larger is refused unread.
const PARSE_RECORDS_MAX: usize =
    2 + 2 * BATCHES_PER_NACHA_FILE_MAX + 2 * ENTRIES_PER_NACHA_FILE_MAX + RECORDS_PER_BLOCK;
/// One entry's amount field: 10 digits of cents.
const AMOUNT_CENTS_MAX: u128 = 9_999_999_999;
/// Control totals: 12 digits of cents.
const TOTAL_CENTS_MAX: u128 = 999_999_999_999;
/// Entry hash keeps the last 10 digits.
const ENTRY_HASH_MODULUS: u64 = 10_000_000_000;
/// Field widths (characters).
const DFI_ACCOUNT_CHARS_MAX: usize = 17;
const INDIVIDUAL_ID_CHARS_MAX: usize = 15;
const INDIVIDUAL_NAME_CHARS_MAX: usize = 22;
const COMPANY_NAME_CHARS_MAX: usize = 16;
const COMPANY_ID_CHARS: usize = 10;
const ENTRY_DESCRIPTION_CHARS_MAX: usize = 10;
const IMMEDIATE_NAME_CHARS_MAX: usize = 23;
const IMMEDIATE_ORIGIN_CHARS: usize = 10;
const SERVICE_CLASS_CREDITS_ONLY: u16 = 220;

/// Standard Entry Class of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecCode {
    /// Prearranged Payment and Deposit: credits to consumers' accounts.
    Ppd,
    /// Corporate Credit or Debit: credits to companies' accounts.
    Ccd,
}

impl SecCode {
    pub fn as_str(self) -> &'static str {
        match self {
            SecCode::Ppd => "PPD",
            SecCode::Ccd => "CCD",
        }
    }
}

/// The receiver's account type, which picks the credit transaction code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountKind {
    /// Transaction code 22 (automated deposit to checking).
    Checking,
    /// Transaction code 32 (automated deposit to savings).
    Savings,
}

impl AccountKind {
    pub fn credit_transaction_code(self) -> u8 {
        match self {
            AccountKind::Checking => 22,
            AccountKind::Savings => 32,
        }
    }
}

/// One ACH file for one settlement epoch (USD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NachaFile {
    /// 9-digit routing number of the receiving point (usually the ODFI), check digit valid.
    pub immediate_destination: String,
    /// Up to 23 characters (cleaned, upper-cased).
    pub immediate_destination_name: String,
    /// Exactly 10 characters, e.g. `" 123456789"` or `"1234567890"` (digits, letters, spaces).
    pub immediate_origin: String,
    /// Up to 23 characters (cleaned, upper-cased).
    pub immediate_origin_name: String,
    /// `A`-`Z` or `0`-`9`; distinguishes files created the same day.
    pub file_id_modifier: char,
    /// File creation date and time (UTC), milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// At least one batch.
    pub batches: Vec<NachaBatch>,
}

/// One batch: one SEC code, one company, one effective date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NachaBatch {
    pub sec_code: SecCode,
    /// Up to 16 characters (cleaned, upper-cased).
    pub company_name: String,
    /// Exactly 10 characters (upper-case letters, digits, spaces, `-`), e.g. `"1234567890"`.
    pub company_id: String,
    /// 1..=10 characters shown on the receiver's statement, e.g. `"PAYOUT"`.
    pub entry_description: String,
    /// Years 2000..=2099 (the record has two-digit years).
    pub effective_entry_date: time::Date,
    /// First 8 digits of the originating DFI's routing number.
    pub odfi_routing: String,
    /// At least one entry.
    pub entries: Vec<AchCredit>,
}

/// One credit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AchCredit {
    /// 9 digits including the ABA check digit.
    pub routing: String,
    /// 1..=17 characters: digits, upper-case letters, `-`.
    pub account: String,
    pub account_kind: AccountKind,
    /// 1..=9_999_999_999 cents.
    pub amount_cents: u128,
    /// 1..=15 characters (upper-case letters, digits, space, `-`): the Tally payout id prefix.
    pub individual_id: String,
    /// Receiver name, up to 22 characters after cleaning (upper-cased, transliterated).
    pub name: String,
}

/// What [`parse_nacha`] read, with every control value re-derived from the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NachaSummary {
    /// Positions 4-13 of the file header, trimmed (the 9-digit routing).
    pub immediate_destination: String,
    /// Positions 14-23 of the file header, as written (10 characters).
    pub immediate_origin: String,
    pub file_id_modifier: char,
    /// `YYMMDD` and `HHMM` from the file header.
    pub creation_date: String,
    pub creation_time: String,
    pub batches: Vec<NachaBatchSummary>,
    pub batch_count: u64,
    pub block_count: u64,
    pub entry_addenda_count: u64,
    pub entry_hash: u64,
    pub total_debit_cents: u128,
    pub total_credit_cents: u128,
}

/// One parsed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NachaBatchSummary {
    pub batch_number: u32,
    pub service_class: u16,
    /// The SEC code as written (`PPD`, `CCD`, or any other three characters).
    pub sec_code: String,
    pub company_name: String,
    pub company_id: String,
    pub entry_description: String,
    pub effective_entry_date: time::Date,
    pub odfi_routing: String,
    pub entries: Vec<NachaEntry>,
    pub entry_addenda_count: u64,
    pub entry_hash: u64,
    pub total_debit_cents: u128,
    pub total_credit_cents: u128,
}

/// One parsed entry detail record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NachaEntry {
    pub transaction_code: u8,
    /// 9 digits: receiving DFI (8) + check digit.
    pub routing: String,
    pub account: String,
    pub amount_cents: u128,
    pub individual_id: String,
    pub name: String,
    pub trace_number: String,
    pub addenda_count: u32,
}

/// ABA routing check digits (3-7-1): shared with registration-time checks.
pub use tally_core::destination::aba_routing_is_valid;

/// Writes `file` as NACHA text: records of 94 characters each followed by `\n`, padded
/// with `9` records to a multiple of 10. Deterministic.
pub fn write_nacha(file: &NachaFile) -> Result<Vec<u8>, BankFileError> {
    if file.batches.is_empty() {
        return Err(BankFileError::Empty);
    }
    if file.batches.len() > BATCHES_PER_NACHA_FILE_MAX {
        return Err(BankFileError::TooMany {
            what: "batches",
            count: file.batches.len(),
            max: BATCHES_PER_NACHA_FILE_MAX,
        });
    }
    let entries_total: usize = file.batches.iter().map(|b| b.entries.len()).sum();
    if entries_total > ENTRIES_PER_NACHA_FILE_MAX {
        return Err(BankFileError::TooMany { what: "entries", count: entries_total, max: ENTRIES_PER_NACHA_FILE_MAX });
    }
    check_routing("immediate_destination", &file.immediate_destination)?;
    if file.immediate_origin.chars().count() != IMMEDIATE_ORIGIN_CHARS
        || !file.immediate_origin.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == ' ')
    {
        return Err(invalid("immediate_origin", "must be exactly 10 upper-case letters, digits or spaces"));
    }
    if !(file.file_id_modifier.is_ascii_uppercase() || file.file_id_modifier.is_ascii_digit()) {
        return Err(invalid("file_id_modifier", "must be A-Z or 0-9"));
    }
    let created = utc_datetime(file.created_at_ms, "created_at_ms")?;
    if !(2000..=2099).contains(&created.year()) {
        return Err(bad_date("created_at_ms"));
    }

    let record_count_estimate = 2 + 2 * file.batches.len() + entries_total + RECORDS_PER_BLOCK;
    let mut out = Vec::with_capacity(record_count_estimate * (NACHA_RECORD_CHARS + 1));
    let mut records: usize = 0;

    let mut header = String::with_capacity(NACHA_RECORD_CHARS);
    header.push_str("101 ");
    header.push_str(&file.immediate_destination);
    header.push_str(&file.immediate_origin);
    header.push_str(&yymmdd(created.date())?);
    header.push_str(&format!("{:02}{:02}", created.hour(), created.minute()));
    header.push(file.file_id_modifier);
    header.push_str("094101");
    push_alpha(&mut header, &ach_text(&file.immediate_destination_name, IMMEDIATE_NAME_CHARS_MAX), 23);
    push_alpha(&mut header, &ach_text(&file.immediate_origin_name, IMMEDIATE_NAME_CHARS_MAX), 23);
    push_alpha(&mut header, "", 8);
    emit(&mut out, &mut records, &header)?;

    let mut file_hash: u64 = 0;
    let mut file_credit: u128 = 0;
    let mut file_entries: u64 = 0;
    let mut trace_sequence: u64 = 0;
    for (batch_index, batch) in file.batches.iter().enumerate() {
        let field = |name: &str| format!("batches[{batch_index}].{name}");
        if batch.entries.is_empty() {
            return Err(invalid(&field("entries"), "a batch needs at least one entry"));
        }
        let company_name = ach_text(&batch.company_name, COMPANY_NAME_CHARS_MAX);
        if company_name.is_empty() {
            return Err(invalid(&field("company_name"), "empty after cleaning"));
        }
        check_ach_id(&field("company_id"), &batch.company_id, COMPANY_ID_CHARS, COMPANY_ID_CHARS)?;
        check_ach_id(&field("entry_description"), &batch.entry_description, 1, ENTRY_DESCRIPTION_CHARS_MAX)?;
        if batch.odfi_routing.len() != 8 || !batch.odfi_routing.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(&field("odfi_routing"), "must be the first 8 digits of the ODFI's routing number"));
        }
        if !(2000..=2099).contains(&batch.effective_entry_date.year()) {
            return Err(bad_date(&field("effective_entry_date")));
        }
        let batch_number = batch_index + 1;

        let mut line = String::with_capacity(NACHA_RECORD_CHARS);
        line.push('5');
        line.push_str(&SERVICE_CLASS_CREDITS_ONLY.to_string());
        push_alpha(&mut line, &company_name, 16);
        push_alpha(&mut line, "", 20);
        line.push_str(&batch.company_id);
        line.push_str(batch.sec_code.as_str());
        push_alpha(&mut line, &batch.entry_description, 10);
        push_alpha(&mut line, "", 6);
        line.push_str(&yymmdd(batch.effective_entry_date)?);
        push_alpha(&mut line, "", 3);
        line.push('1');
        line.push_str(&batch.odfi_routing);
        push_number(&mut line, batch_number as u128, 7, &field("batch_number"))?;
        emit(&mut out, &mut records, &line)?;

        let mut batch_hash: u64 = 0;
        let mut batch_credit: u128 = 0;
        for (entry_index, entry) in batch.entries.iter().enumerate() {
            let field = |name: &str| format!("batches[{batch_index}].entries[{entry_index}].{name}");
            check_routing(&field("routing"), &entry.routing)?;
            check_account(&field("account"), &entry.account)?;
            if entry.amount_cents == 0 {
                return Err(BankFileError::ZeroAmount { field: field("amount_cents") });
            }
            if entry.amount_cents > AMOUNT_CENTS_MAX {
                return Err(BankFileError::AmountTooLarge {
                    field: field("amount_cents"),
                    amount: entry.amount_cents,
                    max: AMOUNT_CENTS_MAX,
                });
            }
            check_ach_id(&field("individual_id"), &entry.individual_id, 1, INDIVIDUAL_ID_CHARS_MAX)?;
            let name = ach_text(&entry.name, INDIVIDUAL_NAME_CHARS_MAX);
            if name.is_empty() {
                return Err(invalid(&field("name"), "empty after cleaning"));
            }
            batch_credit = batch_credit
                .checked_add(entry.amount_cents)
                .filter(|total| *total <= TOTAL_CENTS_MAX)
                .ok_or_else(|| BankFileError::TotalTooLarge { field: field("amount_cents"), max: TOTAL_CENTS_MAX })?;
            batch_hash = (batch_hash + routing_prefix(&entry.routing)) % ENTRY_HASH_MODULUS;
            trace_sequence += 1;

            let mut line = String::with_capacity(NACHA_RECORD_CHARS);
            line.push('6');
            line.push_str(&entry.account_kind.credit_transaction_code().to_string());
            line.push_str(&entry.routing);
            push_alpha(&mut line, &entry.account, 17);
            push_number(&mut line, entry.amount_cents, 10, &field("amount_cents"))?;
            push_alpha(&mut line, &entry.individual_id, 15);
            push_alpha(&mut line, &name, 22);
            push_alpha(&mut line, "", 2);
            line.push('0');
            line.push_str(&batch.odfi_routing);
            push_number(&mut line, u128::from(trace_sequence), 7, &field("trace_number"))?;
            emit(&mut out, &mut records, &line)?;
        }
        let batch_entries = batch.entries.len() as u64;

        let mut line = String::with_capacity(NACHA_RECORD_CHARS);
        line.push('8');
        line.push_str(&SERVICE_CLASS_CREDITS_ONLY.to_string());
        push_number(&mut line, u128::from(batch_entries), 6, &field("entry_count"))?;
        push_number(&mut line, u128::from(batch_hash), 10, &field("entry_hash"))?;
        push_number(&mut line, 0, 12, &field("total_debit"))?;
        push_number(&mut line, batch_credit, 12, &field("total_credit"))?;
        line.push_str(&batch.company_id);
        push_alpha(&mut line, "", 19);
        push_alpha(&mut line, "", 6);
        line.push_str(&batch.odfi_routing);
        push_number(&mut line, batch_number as u128, 7, &field("batch_number"))?;
        emit(&mut out, &mut records, &line)?;

        file_hash = (file_hash + batch_hash) % ENTRY_HASH_MODULUS;
        file_credit =
            file_credit.checked_add(batch_credit).filter(|total| *total <= TOTAL_CENTS_MAX).ok_or_else(|| {
                BankFileError::TotalTooLarge { field: "file total credit".to_string(), max: TOTAL_CENTS_MAX }
            })?;
        file_entries += batch_entries;
    }

    // The file control record is one more record; blocks count it and the filler.
    let records_with_control = records + 1;
    let block_count = records_with_control.div_ceil(RECORDS_PER_BLOCK);
    let mut line = String::with_capacity(NACHA_RECORD_CHARS);
    line.push('9');
    push_number(&mut line, file.batches.len() as u128, 6, "batch_count")?;
    push_number(&mut line, block_count as u128, 6, "block_count")?;
    push_number(&mut line, u128::from(file_entries), 8, "entry_count")?;
    push_number(&mut line, u128::from(file_hash), 10, "entry_hash")?;
    push_number(&mut line, 0, 12, "total_debit")?;
    push_number(&mut line, file_credit, 12, "total_credit")?;
    push_alpha(&mut line, "", 39);
    emit(&mut out, &mut records, &line)?;

    let filler = "9".repeat(NACHA_RECORD_CHARS);
    while !records.is_multiple_of(RECORDS_PER_BLOCK) {
        emit(&mut out, &mut records, &filler)?;
    }
    Ok(out)
}

fn check_routing(field: &str, routing: &str) -> Result<(), BankFileError> {
    if !aba_routing_is_valid(routing) {
        return Err(BankFileError::BadRoutingNumber { field: field.to_string(), value: routing.to_string() });
    }
    Ok(())
}

/// Identifier fields are validated, never altered: upper-case letters, digits, space, `-`.
fn check_ach_id(field: &str, value: &str, min: usize, max: usize) -> Result<(), BankFileError> {
    super::check_len(field, value, min, max)?;
    if !value.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == ' ' || c == '-') {
        return Err(invalid(field, "only upper-case letters, digits, spaces and '-'"));
    }
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be blank"));
    }
    Ok(())
}

fn check_account(field: &str, account: &str) -> Result<(), BankFileError> {
    super::check_len(field, account, 1, DFI_ACCOUNT_CHARS_MAX)?;
    if !account.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-') {
        return Err(invalid(field, "only digits, upper-case letters and '-'"));
    }
    Ok(())
}

/// The 8-digit receiving DFI identification of a validated routing number.
fn routing_prefix(routing: &str) -> u64 {
    routing.bytes().take(8).fold(0u64, |acc, d| acc * 10 + u64::from(d.wrapping_sub(b'0') % 10))
}

fn yymmdd(date: time::Date) -> Result<String, BankFileError> {
    let year = date.year();
    if !(2000..=2099).contains(&year) {
        return Err(bad_date("date"));
    }
    Ok(format!("{:02}{:02}{:02}", year - 2000, u8::from(date.month()), date.day()))
}

/// Left-justified, space-padded to `width`; `value` is ASCII and at most `width` long.
fn push_alpha(line: &mut String, value: &str, width: usize) {
    let taken: String = value.chars().take(width).collect();
    let len = taken.chars().count();
    line.push_str(&taken);
    line.extend(std::iter::repeat_n(' ', width - len));
}

/// Right-justified, zero-padded to `width`; refuses a value with more digits.
fn push_number(line: &mut String, value: u128, width: usize, field: &str) -> Result<(), BankFileError> {
    let digits = value.to_string();
    if digits.len() > width {
        return Err(BankFileError::TotalTooLarge { field: field.to_string(), max: 10u128.pow(width as u32) - 1 });
    }
    line.extend(std::iter::repeat_n('0', width - digits.len()));
    line.push_str(&digits);
    Ok(())
}

/// Appends one record and its line feed; checks its length (an internal invariant, reported
/// as an error rather than a panic).
fn emit(out: &mut Vec<u8>, records: &mut usize, line: &str) -> Result<(), BankFileError> {
    if line.len() != NACHA_RECORD_CHARS || !line.is_ascii() {
        return Err(invalid("record", "internal error: record is not 94 ASCII characters"));
    }
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
    *records += 1;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

fn malformed(record: usize, reason: impl Into<String>) -> BankFileError {
    BankFileError::Malformed { format: "NACHA", position: record as u64 + 1, reason: reason.into() }
}

fn mismatch(what: String, declared: impl ToString, computed: impl ToString) -> BankFileError {
    BankFileError::ControlMismatch { what, declared: declared.to_string(), computed: computed.to_string() }
}

/// A numeric field at `start..end` (0-based, end exclusive) of a 94-character ASCII record.
fn num(line: &str, start: usize, end: usize, record: usize, name: &str) -> Result<u128, BankFileError> {
    let s = &line[start..end];
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(record, format!("{name} is not numeric: {s:?}")));
    }
    s.parse::<u128>().map_err(|_| malformed(record, format!("{name} is not numeric: {s:?}")))
}

fn date_yymmdd(line: &str, start: usize, record: usize, name: &str) -> Result<time::Date, BankFileError> {
    let yy = num(line, start, start + 2, record, name)?;
    let mm = num(line, start + 2, start + 4, record, name)?;
    let dd = num(line, start + 4, start + 6, record, name)?;
    let month = time::Month::try_from(mm as u8).map_err(|_| malformed(record, format!("{name}: bad month")))?;
    time::Date::from_calendar_date(2000 + yy as i32, month, dd as u8)
        .map_err(|_| malformed(record, format!("{name}: not a date")))
}

/// Parses a NACHA file and re-derives every control value (counts, entry hashes, totals,
/// block count) from the records, refusing the file when a control record disagrees.
/// Accepts `\n` or `\r\n` line ends; addenda (`7`) records are counted, not interpreted.
pub fn parse_nacha(bytes: &[u8]) -> Result<NachaSummary, BankFileError> {
    let bytes_max = PARSE_RECORDS_MAX * (NACHA_RECORD_CHARS + 2);
    if bytes.len() > bytes_max {
        return Err(BankFileError::InputTooLarge { bytes: bytes.len(), max: bytes_max });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| malformed(0, "not ASCII"))?;
    if !text.is_ascii() {
        return Err(malformed(0, "not ASCII"));
    }
    let body = text.strip_suffix('\n').ok_or_else(|| malformed(0, "the last record must end with a line feed"))?;
    let lines: Vec<&str> = body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    if lines.len() > PARSE_RECORDS_MAX {
        return Err(BankFileError::TooMany { what: "records", count: lines.len(), max: PARSE_RECORDS_MAX });
    }
    for (i, line) in lines.iter().enumerate() {
        if line.len() != NACHA_RECORD_CHARS {
            return Err(malformed(i, format!("record has {} characters, expected 94", line.len())));
        }
    }
    if !lines.len().is_multiple_of(RECORDS_PER_BLOCK) {
        return Err(malformed(lines.len(), format!("{} records is not a multiple of 10", lines.len())));
    }

    let header = lines.first().ok_or_else(|| malformed(0, "empty file"))?;
    if !header.starts_with("101") {
        return Err(malformed(0, "the first record must be a file header starting with 101"));
    }
    if &header[34..40] != "094101" {
        return Err(malformed(0, "record size must be 094, blocking factor 10, format code 1"));
    }
    let mut summary = NachaSummary {
        immediate_destination: header[3..13].trim().to_string(),
        immediate_origin: header[13..23].to_string(),
        file_id_modifier: char::from(header.as_bytes()[33]),
        creation_date: header[23..29].to_string(),
        creation_time: header[29..33].to_string(),
        batches: Vec::new(),
        batch_count: 0,
        block_count: (lines.len() / RECORDS_PER_BLOCK) as u64,
        entry_addenda_count: 0,
        entry_hash: 0,
        total_debit_cents: 0,
        total_credit_cents: 0,
    };

    let mut i = 1;
    let mut file_control_at = None;
    while i < lines.len() {
        let line = lines[i];
        match &line[..1] {
            "5" => {
                let batch = parse_batch(&lines, &mut i)?;
                summary.entry_addenda_count += batch.entry_addenda_count;
                summary.entry_hash = (summary.entry_hash + batch.entry_hash) % ENTRY_HASH_MODULUS;
                summary.total_debit_cents += batch.total_debit_cents;
                summary.total_credit_cents += batch.total_credit_cents;
                summary.batches.push(batch);
                if summary.batches.len() > BATCHES_PER_NACHA_FILE_MAX {
                    return Err(BankFileError::TooMany {
                        what: "batches",
                        count: summary.batches.len(),
                        max: BATCHES_PER_NACHA_FILE_MAX,
                    });
                }
            }
            "9" => {
                file_control_at = Some(i);
                break;
            }
            other => return Err(malformed(i, format!("unexpected record type {other:?} between batches"))),
        }
    }
    let control_at = file_control_at.ok_or_else(|| malformed(lines.len(), "no file control record"))?;
    let filler = "9".repeat(NACHA_RECORD_CHARS);
    for (offset, line) in lines[control_at + 1..].iter().enumerate() {
        if *line != filler {
            return Err(malformed(control_at + 1 + offset, "only filler records may follow the file control"));
        }
    }
    if control_at + 1 + RECORDS_PER_BLOCK <= lines.len() {
        return Err(malformed(control_at + 1, "a whole block of filler records"));
    }
    let control = lines[control_at];
    summary.batch_count = summary.batches.len() as u64;
    let declared_batches = num(control, 1, 7, control_at, "batch count")?;
    if declared_batches != u128::from(summary.batch_count) {
        return Err(mismatch("file batch count".into(), declared_batches, summary.batch_count));
    }
    let declared_blocks = num(control, 7, 13, control_at, "block count")?;
    if declared_blocks != u128::from(summary.block_count) {
        return Err(mismatch("file block count".into(), declared_blocks, summary.block_count));
    }
    let declared_count = num(control, 13, 21, control_at, "entry/addenda count")?;
    if declared_count != u128::from(summary.entry_addenda_count) {
        return Err(mismatch("file entry/addenda count".into(), declared_count, summary.entry_addenda_count));
    }
    let declared_hash = num(control, 21, 31, control_at, "entry hash")?;
    if declared_hash != u128::from(summary.entry_hash) {
        return Err(mismatch("file entry hash".into(), declared_hash, summary.entry_hash));
    }
    let declared_debit = num(control, 31, 43, control_at, "total debit")?;
    if declared_debit != summary.total_debit_cents {
        return Err(mismatch("file total debit".into(), declared_debit, summary.total_debit_cents));
    }
    let declared_credit = num(control, 43, 55, control_at, "total credit")?;
    if declared_credit != summary.total_credit_cents {
        return Err(mismatch("file total credit".into(), declared_credit, summary.total_credit_cents));
    }
    Ok(summary)
}

/// Parses the batch whose header is `lines[*i]`, leaving `*i` after its control record.
fn parse_batch(lines: &[&str], i: &mut usize) -> Result<NachaBatchSummary, BankFileError> {
    let at = *i;
    let header = lines[at];
    let service_class = num(header, 1, 4, at, "service class")? as u16;
    if !matches!(service_class, 200 | 220 | 225) {
        return Err(malformed(at, format!("service class {service_class} is not 200, 220 or 225")));
    }
    let mut batch = NachaBatchSummary {
        batch_number: num(header, 87, 94, at, "batch number")? as u32,
        service_class,
        sec_code: header[50..53].to_string(),
        company_name: header[4..20].trim_end().to_string(),
        company_id: header[40..50].to_string(),
        entry_description: header[53..63].trim_end().to_string(),
        effective_entry_date: date_yymmdd(header, 69, at, "effective entry date")?,
        odfi_routing: header[79..87].to_string(),
        entries: Vec::new(),
        entry_addenda_count: 0,
        entry_hash: 0,
        total_debit_cents: 0,
        total_credit_cents: 0,
    };
    *i += 1;
    loop {
        let Some(line) = lines.get(*i) else {
            return Err(malformed(*i, "batch without a batch control record"));
        };
        let at = *i;
        match &line[..1] {
            "6" => {
                let transaction_code = num(line, 1, 3, at, "transaction code")? as u8;
                let routing = line[3..12].to_string();
                if !routing.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(malformed(at, "receiving DFI is not numeric"));
                }
                let amount_cents = num(line, 29, 39, at, "amount")?;
                match transaction_code % 10 {
                    2 | 3 => batch.total_credit_cents += amount_cents,
                    7 | 8 => batch.total_debit_cents += amount_cents,
                    4 | 9 => {} // prenotes and zero-dollar entries carry no money
                    _ => return Err(malformed(at, format!("transaction code {transaction_code} is not supported"))),
                }
                if service_class == SERVICE_CLASS_CREDITS_ONLY && matches!(transaction_code % 10, 7 | 8) {
                    return Err(malformed(at, "debit entry in a credits-only (220) batch"));
                }
                batch.entry_hash = (batch.entry_hash + routing_prefix(&routing)) % ENTRY_HASH_MODULUS;
                batch.entry_addenda_count += 1;
                batch.entries.push(NachaEntry {
                    transaction_code,
                    routing,
                    account: line[12..29].trim_end().to_string(),
                    amount_cents,
                    individual_id: line[39..54].trim_end().to_string(),
                    name: line[54..76].trim_end().to_string(),
                    trace_number: line[79..94].to_string(),
                    addenda_count: 0,
                });
                if batch.entries.len() > ENTRIES_PER_NACHA_FILE_MAX {
                    return Err(BankFileError::TooMany {
                        what: "entries",
                        count: batch.entries.len(),
                        max: ENTRIES_PER_NACHA_FILE_MAX,
                    });
                }
            }
            "7" => {
                let entry = batch.entries.last_mut().ok_or_else(|| malformed(at, "addenda before any entry"))?;
                entry.addenda_count += 1;
                batch.entry_addenda_count += 1;
            }
            "8" => {
                let what = |name: &str| format!("batch {} {name}", batch.batch_number);
                let declared_class = num(line, 1, 4, at, "service class")?;
                if declared_class != u128::from(service_class) {
                    return Err(mismatch(what("service class"), declared_class, service_class));
                }
                let declared_count = num(line, 4, 10, at, "entry/addenda count")?;
                if declared_count != u128::from(batch.entry_addenda_count) {
                    return Err(mismatch(what("entry/addenda count"), declared_count, batch.entry_addenda_count));
                }
                let declared_hash = num(line, 10, 20, at, "entry hash")?;
                if declared_hash != u128::from(batch.entry_hash) {
                    return Err(mismatch(what("entry hash"), declared_hash, batch.entry_hash));
                }
                let declared_debit = num(line, 20, 32, at, "total debit")?;
                if declared_debit != batch.total_debit_cents {
                    return Err(mismatch(what("total debit"), declared_debit, batch.total_debit_cents));
                }
                let declared_credit = num(line, 32, 44, at, "total credit")?;
                if declared_credit != batch.total_credit_cents {
                    return Err(mismatch(what("total credit"), declared_credit, batch.total_credit_cents));
                }
                if line[44..54] != batch.company_id {
                    return Err(mismatch(what("company id"), &line[44..54], &batch.company_id));
                }
                if line[79..87] != batch.odfi_routing {
                    return Err(mismatch(what("ODFI"), &line[79..87], &batch.odfi_routing));
                }
                let declared_number = num(line, 87, 94, at, "batch number")?;
                if declared_number != u128::from(batch.batch_number) {
                    return Err(mismatch(what("batch number"), declared_number, batch.batch_number));
                }
                *i += 1;
                return Ok(batch);
            }
            other => return Err(malformed(at, format!("unexpected record type {other:?} inside a batch"))),
        }
        *i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_helpers() {
        let mut s = String::new();
        push_alpha(&mut s, "AB", 4);
        push_number(&mut s, 42, 5, "n").unwrap();
        assert_eq!(s, "AB  00042");
        assert!(push_number(&mut s, 123_456, 5, "n").is_err());
        assert_eq!(routing_prefix("021000021"), 2_100_002);
    }
}
