//! ISO 20022 `pain.002` (CustomerPaymentStatusReport): the bank's answer to a `pain.001`.
//!
//! [`parse_pain002`] reads versions `.001.03` (SEPA's usual) through `.001.15`: the
//! elements it needs (`GrpHdr/MsgId`, `OrgnlGrpInfAndSts`, `OrgnlPmtInfAndSts`,
//! `TxInfAndSts`, `StsRsnInf`) have kept their names and places. It is bounded: at most
//! [`PAIN002_BYTES_MAX`] bytes, [`PAIN002_ELEMENTS_MAX`] elements, a fixed nesting depth
//! and field length; DTDs are refused.
//!
//! **Status codes.** Each transaction's code maps to a [`PaymentStatus`]:
//! - `Accepted`: `ACCC`, `ACCP`, `ACFC`, `ACIS`, `ACPD`, `ACSC`, `ACSP`, `ACWC`, `ACWP`.
//! - `Rejected`: `RJCT`, `CANC`, with the first `StsRsnInf/Rsn` code (`Cd` or `Prtry`)
//!   and its `AddtlInf` texts joined by spaces.
//! - `Pending`: `PDNG`, `RCVD`, `ACTC` (technical validation only: the bank has not yet
//!   committed to execute), `PART`, and any code this module does not know (a new code must
//!   never settle or fail a payout by guess). The raw code is kept in
//!   [`TransactionStatus::status_code`].
//!
//! **Group-level answers.** A bank may answer for the whole message: `GrpSts = RJCT` with a
//! reason and no `TxInfAndSts` at all means every transaction of the original message was
//! rejected. The report then has `group_status == Some("RJCT")`, an empty `transactions`
//! list, and [`PaymentStatusReport::unlisted_status`] returns the `Rejected` status that
//! applies to every payout not listed individually. The same holds for a single
//! `OrgnlPmtInfAndSts/PmtInfSts` (Tally writes one payment-information block per file).
//! [`PaymentStatusReport::status_of`] combines both levels for one EndToEndId.

use quick_xml::Reader;
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesStart, Event};

use super::pain001::{check_identifier, close, leaf, open};
use super::text::xml_text;
use super::{BankFileError, CreditTransfer, Pain001File, TRANSFERS_PER_FILE_MAX, check_len, invalid, iso_datetime};

/// Largest `pain.002` accepted (a report on 100,000 transactions is ~40 MB).
pub const PAIN002_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most elements read from one report.
pub const PAIN002_ELEMENTS_MAX: usize = 4_000_000;
/// Deepest element nesting accepted (the schema needs about 12).
const DEPTH_MAX: usize = 64;
/// Longest text of one element kept while parsing (the schema's longest is 140).
const TEXT_CHARS_MAX: usize = 1024;
/// `Max105Text` of `AddtlInf`.
const ADDITIONAL_INFO_CHARS_MAX: usize = 105;
/// Most `AddtlInf` texts joined into one reason text.
const ADDITIONAL_INFOS_PER_REASON_MAX: usize = 8;
/// Most payment-information blocks in one report.
const PAYMENT_INFOS_PER_REPORT_MAX: usize = 1024;
/// `Max35Text`.
const ID_CHARS_MAX: usize = 35;
/// Status and reason codes are at most 4 characters (`ExternalStatusReason1Code`).
const CODE_CHARS_MAX: usize = 4;
const NAMESPACE_PREFIX: &str = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.";
const ROOT: [&str; 2] = ["Document", "CstmrPmtStsRpt"];

/// What happened to one payout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentStatus {
    /// The bank accepted the payment (`ACCP`, `ACSC`, `ACSP`, `ACWC`, `ACCC`, ...).
    Accepted,
    /// The bank will not pay it. `reason_code` is an ISO external code such as `AC01`
    /// (incorrect account number) or `AM04` (insufficient funds), or a proprietary code;
    /// empty when the bank gave none.
    Rejected { reason_code: String, reason_text: String },
    /// Not final yet (`PDNG`, `RCVD`, `ACTC`, unknown codes).
    Pending,
}

impl PaymentStatus {
    /// Classifies a status code (see the module documentation), with the reason used when
    /// the code is a rejection.
    pub fn from_code(code: &str, reason: Option<&StatusReason>) -> PaymentStatus {
        match code {
            "ACCC" | "ACCP" | "ACFC" | "ACIS" | "ACPD" | "ACSC" | "ACSP" | "ACWC" | "ACWP" => PaymentStatus::Accepted,
            "RJCT" | "CANC" => PaymentStatus::Rejected {
                reason_code: reason.map(|r| r.code.clone()).unwrap_or_default(),
                reason_text: reason.map(|r| r.text.clone()).unwrap_or_default(),
            },
            _ => PaymentStatus::Pending,
        }
    }
}

/// A status reason: the first `StsRsnInf/Rsn` code and its `AddtlInf` text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusReason {
    pub code: String,
    pub text: String,
}

/// The status of one payout, found by its EndToEndId (the Tally payout id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionStatus {
    pub end_to_end_id: String,
    pub status: PaymentStatus,
    /// The code as the bank wrote it (`TxSts`, or the inherited payment-information or
    /// group status when the transaction had none).
    pub status_code: String,
}

impl TransactionStatus {
    pub fn accepted(end_to_end_id: &str) -> Self {
        TransactionStatus {
            end_to_end_id: end_to_end_id.to_string(),
            status: PaymentStatus::Accepted,
            status_code: "ACSC".to_string(),
        }
    }

    pub fn rejected(end_to_end_id: &str, reason_code: &str, reason_text: &str) -> Self {
        TransactionStatus {
            end_to_end_id: end_to_end_id.to_string(),
            status: PaymentStatus::Rejected {
                reason_code: reason_code.to_string(),
                reason_text: reason_text.to_string(),
            },
            status_code: "RJCT".to_string(),
        }
    }

    pub fn pending(end_to_end_id: &str) -> Self {
        TransactionStatus {
            end_to_end_id: end_to_end_id.to_string(),
            status: PaymentStatus::Pending,
            status_code: "PDNG".to_string(),
        }
    }
}

/// `OrgnlPmtInfAndSts`: the status of one payment-information block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentInfoStatus {
    pub original_payment_info_id: String,
    pub status: Option<String>,
    pub reason: Option<StatusReason>,
}

/// A parsed `pain.002`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentStatusReport {
    /// This report's `GrpHdr/MsgId`.
    pub message_id: String,
    /// `OrgnlMsgId`: the `pain.001` message id this answers.
    pub original_message_id: String,
    /// `OrgnlMsgNmId`, e.g. `pain.001.001.09`.
    pub original_message_name_id: String,
    /// `GrpSts` (`ACCP`, `RJCT`, `PART`, `PDNG`, ...); `None` when absent.
    pub group_status: Option<String>,
    /// The group's first status reason, if any.
    pub group_reason: Option<StatusReason>,
    /// Every `OrgnlPmtInfAndSts` block, in document order.
    pub payment_infos: Vec<PaymentInfoStatus>,
    /// Every `TxInfAndSts`, in document order (a payout may appear more than once if the
    /// bank reports several steps; the last one is the latest).
    pub transactions: Vec<TransactionStatus>,
}

impl PaymentStatusReport {
    /// The status that applies to every transaction of the original message that is not
    /// listed in `transactions`, when the report states one: the group status unless it is
    /// absent or `PART`, otherwise the status shared by every payment-information block.
    /// `None` when the report says nothing about unlisted transactions.
    pub fn unlisted_status(&self) -> Option<PaymentStatus> {
        if let Some(code) = self.group_status.as_deref()
            && code != "PART"
        {
            return Some(PaymentStatus::from_code(code, self.group_reason.as_ref()));
        }
        let first = self.payment_infos.first()?;
        let code = first.status.as_deref()?;
        if code == "PART" || self.payment_infos.iter().any(|p| p.status.as_deref() != Some(code)) {
            return None;
        }
        Some(PaymentStatus::from_code(code, first.reason.as_ref()))
    }

    /// The status of one payout: its last `TxInfAndSts` if listed, else
    /// [`unlisted_status`](Self::unlisted_status).
    pub fn status_of(&self, end_to_end_id: &str) -> Option<PaymentStatus> {
        match self.transactions.iter().rev().find(|t| t.end_to_end_id == end_to_end_id) {
            Some(t) => Some(t.status.clone()),
            None => self.unlisted_status(),
        }
    }
}

/// Which `pain.002` schema [`write_pain002`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pain002Version {
    /// `pain.002.001.03` (closed code lists, the SEPA 2009 rulebook version).
    V03,
    /// `pain.002.001.12` (external code lists, answers `pain.001.001.09`+ at many banks).
    V12,
}

impl Pain002Version {
    pub fn namespace(self) -> &'static str {
        match self {
            Pain002Version::V03 => "urn:iso:std:iso:20022:tech:xsd:pain.002.001.03",
            Pain002Version::V12 => "urn:iso:std:iso:20022:tech:xsd:pain.002.001.12",
        }
    }
}

/// A status report to write (the bank side, for tests and the demo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pain002File {
    pub version: Pain002Version,
    pub message_id: String,
    pub created_at_ms: u64,
    pub original_message_id: String,
    /// e.g. `pain.001.001.09`.
    pub original_message_name_id: String,
    /// Written as `OrgnlPmtInfId` when there are transactions (Tally uses the message id).
    pub original_payment_info_id: String,
    pub group_status: Option<String>,
    pub group_reason: Option<StatusReason>,
    pub transactions: Vec<TransactionStatus>,
}

/// A bank simulator: answers `original` with one status per transfer chosen by `decide`.
/// The group status is `ACCP` when all are accepted, `RJCT` when all are rejected, `PART`
/// when some are rejected, otherwise `PDNG`.
pub fn answer_pain001(
    original: &Pain001File,
    version: Pain002Version,
    message_id: &str,
    created_at_ms: u64,
    decide: impl Fn(&CreditTransfer) -> PaymentStatus,
) -> Pain002File {
    let transactions: Vec<TransactionStatus> = original
        .transfers
        .iter()
        .map(|t| {
            let status = decide(t);
            let status_code = match status {
                PaymentStatus::Accepted => "ACSC",
                PaymentStatus::Rejected { .. } => "RJCT",
                PaymentStatus::Pending => "PDNG",
            };
            TransactionStatus { end_to_end_id: t.end_to_end_id.clone(), status, status_code: status_code.to_string() }
        })
        .collect();
    let rejected = transactions.iter().filter(|t| matches!(t.status, PaymentStatus::Rejected { .. })).count();
    let accepted = transactions.iter().filter(|t| t.status == PaymentStatus::Accepted).count();
    let group_status = if accepted == transactions.len() {
        "ACCP"
    } else if rejected == transactions.len() {
        "RJCT"
    } else if rejected > 0 {
        "PART"
    } else {
        "PDNG"
    };
    Pain002File {
        version,
        message_id: message_id.to_string(),
        created_at_ms,
        original_message_id: original.message_id.clone(),
        original_message_name_id: "pain.001.001.09".to_string(),
        original_payment_info_id: original.message_id.clone(),
        group_status: Some(group_status.to_string()),
        group_reason: None,
        transactions,
    }
}

/// Writes a `pain.002` of `file.version`. Validates codes against that version's lists
/// (`.03` has closed enumerations) and that each transaction's `status` agrees with its
/// `status_code`. Deterministic.
pub fn write_pain002(file: &Pain002File) -> Result<Vec<u8>, BankFileError> {
    if file.transactions.len() > TRANSFERS_PER_FILE_MAX {
        return Err(BankFileError::TooMany {
            what: "transactions",
            count: file.transactions.len(),
            max: TRANSFERS_PER_FILE_MAX,
        });
    }
    check_identifier("message_id", &file.message_id)?;
    check_identifier("original_message_id", &file.original_message_id)?;
    check_identifier("original_message_name_id", &file.original_message_name_id)?;
    check_identifier("original_payment_info_id", &file.original_payment_info_id)?;
    let created = iso_datetime(file.created_at_ms, "created_at_ms")?;
    if let Some(code) = &file.group_status {
        check_status_code(file.version, "group_status", code, true)?;
    }
    if let Some(reason) = &file.group_reason {
        check_len("group_reason.code", &reason.code, 1, ID_CHARS_MAX)?;
    }
    for (index, t) in file.transactions.iter().enumerate() {
        check_identifier(&format!("transactions[{index}].end_to_end_id"), &t.end_to_end_id)?;
        check_status_code(file.version, &format!("transactions[{index}].status_code"), &t.status_code, false)?;
        let derived = PaymentStatus::from_code(&t.status_code, None);
        if std::mem::discriminant(&derived) != std::mem::discriminant(&t.status) {
            return Err(invalid(&format!("transactions[{index}].status"), "does not match status_code"));
        }
        if let PaymentStatus::Rejected { reason_code, .. } = &t.status
            && !reason_code.is_empty()
        {
            check_len(&format!("transactions[{index}].reason_code"), reason_code, 1, ID_CHARS_MAX)?;
        }
    }

    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.write_event(Event::Start(BytesStart::new("Document").with_attributes([("xmlns", file.version.namespace())])))?;
    open(&mut w, "CstmrPmtStsRpt")?;
    open(&mut w, "GrpHdr")?;
    leaf(&mut w, "MsgId", &file.message_id)?;
    leaf(&mut w, "CreDtTm", &created)?;
    close(&mut w, "GrpHdr")?;
    open(&mut w, "OrgnlGrpInfAndSts")?;
    leaf(&mut w, "OrgnlMsgId", &file.original_message_id)?;
    leaf(&mut w, "OrgnlMsgNmId", &file.original_message_name_id)?;
    if let Some(code) = &file.group_status {
        leaf(&mut w, "GrpSts", code)?;
    }
    if let Some(reason) = &file.group_reason {
        write_reason(&mut w, &reason.code, &reason.text)?;
    }
    close(&mut w, "OrgnlGrpInfAndSts")?;
    if !file.transactions.is_empty() {
        open(&mut w, "OrgnlPmtInfAndSts")?;
        leaf(&mut w, "OrgnlPmtInfId", &file.original_payment_info_id)?;
        for t in &file.transactions {
            open(&mut w, "TxInfAndSts")?;
            leaf(&mut w, "OrgnlEndToEndId", &t.end_to_end_id)?;
            leaf(&mut w, "TxSts", &t.status_code)?;
            if let PaymentStatus::Rejected { reason_code, reason_text } = &t.status
                && !(reason_code.is_empty() && reason_text.is_empty())
            {
                write_reason(&mut w, reason_code, reason_text)?;
            }
            close(&mut w, "TxInfAndSts")?;
        }
        close(&mut w, "OrgnlPmtInfAndSts")?;
    }
    close(&mut w, "CstmrPmtStsRpt")?;
    close(&mut w, "Document")?;
    let mut bytes = w.into_inner();
    bytes.push(b'\n');
    Ok(bytes)
}

/// `StsRsnInf`: `Rsn/Cd` for a code of 1..=4 upper-case letters or digits, else
/// `Rsn/Prtry`; `AddtlInf` cut to 105 characters.
fn write_reason(w: &mut Writer<Vec<u8>>, code: &str, text: &str) -> Result<(), BankFileError> {
    open(w, "StsRsnInf")?;
    if !code.is_empty() {
        open(w, "Rsn")?;
        let external = code.chars().count() <= CODE_CHARS_MAX
            && code.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        leaf(w, if external { "Cd" } else { "Prtry" }, code)?;
        close(w, "Rsn")?;
    }
    let info = xml_text(text, ADDITIONAL_INFO_CHARS_MAX);
    if !info.is_empty() {
        leaf(w, "AddtlInf", &info)?;
    }
    close(w, "StsRsnInf")
}

fn check_status_code(version: Pain002Version, field: &str, code: &str, group: bool) -> Result<(), BankFileError> {
    check_len(field, code, 1, CODE_CHARS_MAX)?;
    if !code.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(invalid(field, "status codes are upper-case letters"));
    }
    if version == Pain002Version::V03 {
        let individual = ["ACTC", "RJCT", "PDNG", "ACCP", "ACSP", "ACSC", "ACWC"];
        let allowed = individual.contains(&code) || (group && (code == "RCVD" || code == "PART"));
        if !allowed {
            return Err(invalid(field, "not in pain.002.001.03's status code list"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

fn malformed(position: u64, reason: impl Into<String>) -> BankFileError {
    BankFileError::Malformed { format: "pain.002", position, reason: reason.into() }
}

/// Transaction fields collected between `<TxInfAndSts>` and `</TxInfAndSts>`.
#[derive(Default)]
struct TxBuilder {
    end_to_end_id: Option<String>,
    status_code: Option<String>,
    reason: Option<StatusReason>,
}

/// Reason fields collected inside one `StsRsnInf` scope (group, payment info or transaction).
#[derive(Default)]
struct ReasonBuilder {
    code: Option<String>,
    infos: Vec<String>,
}

impl ReasonBuilder {
    fn take(&mut self) -> Option<StatusReason> {
        let code = self.code.take();
        let infos = std::mem::take(&mut self.infos);
        if code.is_none() && infos.is_empty() {
            return None;
        }
        Some(StatusReason { code: code.unwrap_or_default(), text: infos.join(" ") })
    }

    /// Records one leaf of a `StsRsnInf`: its reason code (`Cd` or `Prtry`) and up to
    /// [`ADDITIONAL_INFOS_PER_REASON_MAX`] `AddtlInf` texts.
    fn element(&mut self, name: &str, text: &str) {
        match name {
            "Cd" | "Prtry" if self.code.is_none() => self.code = Some(text.to_string()),
            "AddtlInf" if self.infos.len() < ADDITIONAL_INFOS_PER_REASON_MAX => self.infos.push(text.to_string()),
            _ => {}
        }
    }
}

/// Where in the report the parser is, relative to `Document/CstmrPmtStsRpt`.
fn rel(stack: &[String]) -> Option<Vec<&str>> {
    if stack.len() < 2 || stack[0] != ROOT[0] || stack[1] != ROOT[1] {
        return None;
    }
    Some(stack[2..].iter().map(String::as_str).collect())
}

/// Parses a `pain.002.001.*` status report. See the module documentation for the status
/// mapping and the meaning of a group-level rejection.
pub fn parse_pain002(xml: &[u8]) -> Result<PaymentStatusReport, BankFileError> {
    if xml.len() > PAIN002_BYTES_MAX {
        return Err(BankFileError::InputTooLarge { bytes: xml.len(), max: PAIN002_BYTES_MAX });
    }
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().check_end_names = true;

    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut elements: usize = 0;
    let mut message_id: Option<String> = None;
    let mut original_message_id: Option<String> = None;
    let mut original_message_name_id = String::new();
    let mut group_status: Option<String> = None;
    let mut group_reason = ReasonBuilder::default();
    let mut group_reason_done: Option<StatusReason> = None;
    let mut payment_infos: Vec<PaymentInfoStatus> = Vec::new();
    let mut pmt_reason = ReasonBuilder::default();
    let mut pmt_reason_done: Option<StatusReason> = None;
    let mut transactions: Vec<(TxBuilder, usize)> = Vec::new();
    let mut tx: Option<TxBuilder> = None;
    let mut tx_reason = ReasonBuilder::default();
    let mut seen_root = false;

    loop {
        let position = reader.buffer_position();
        let event = reader.read_event().map_err(|e| malformed(position, e.to_string()))?;
        match event {
            Event::Start(start) => {
                elements += 1;
                if elements > PAIN002_ELEMENTS_MAX {
                    return Err(BankFileError::TooMany {
                        what: "elements",
                        count: elements,
                        max: PAIN002_ELEMENTS_MAX,
                    });
                }
                if stack.len() >= DEPTH_MAX {
                    return Err(malformed(position, "elements nested too deeply"));
                }
                let name = std::str::from_utf8(start.local_name().into_inner())
                    .map_err(|_| malformed(position, "element name is not UTF-8"))?
                    .to_string();
                if stack.is_empty() {
                    if seen_root {
                        return Err(malformed(position, "more than one root element"));
                    }
                    seen_root = true;
                    check_root(&start, &name, position)?;
                }
                stack.push(name);
                text.clear();
                if let Some(path) = rel(&stack) {
                    match path.as_slice() {
                        ["OrgnlPmtInfAndSts"] => {
                            if payment_infos.len() >= PAYMENT_INFOS_PER_REPORT_MAX {
                                return Err(BankFileError::TooMany {
                                    what: "payment information blocks",
                                    count: payment_infos.len() + 1,
                                    max: PAYMENT_INFOS_PER_REPORT_MAX,
                                });
                            }
                            payment_infos.push(PaymentInfoStatus {
                                original_payment_info_id: String::new(),
                                status: None,
                                reason: None,
                            });
                        }
                        ["OrgnlPmtInfAndSts", "TxInfAndSts"] => {
                            if transactions.len() >= TRANSFERS_PER_FILE_MAX {
                                return Err(BankFileError::TooMany {
                                    what: "transactions",
                                    count: transactions.len() + 1,
                                    max: TRANSFERS_PER_FILE_MAX,
                                });
                            }
                            tx = Some(TxBuilder::default());
                        }
                        _ => {}
                    }
                }
            }
            Event::Empty(_) => {
                elements += 1;
                if elements > PAIN002_ELEMENTS_MAX {
                    return Err(BankFileError::TooMany {
                        what: "elements",
                        count: elements,
                        max: PAIN002_ELEMENTS_MAX,
                    });
                }
                if stack.is_empty() {
                    return Err(malformed(position, "the root element is empty"));
                }
            }
            Event::Text(t) => {
                let decoded = t.xml10_content().map_err(|e| malformed(position, e.to_string()))?;
                push_text(&mut text, &decoded, position)?;
            }
            Event::CData(t) => {
                let decoded = t.decode().map_err(|e| malformed(position, e.to_string()))?;
                push_text(&mut text, &decoded, position)?;
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| malformed(position, e.to_string()))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(|e| malformed(position, e.to_string()))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| malformed(position, format!("unknown entity &{name};")))?
                            .to_string()
                    }
                };
                push_text(&mut text, &resolved, position)?;
            }
            Event::End(_) => {
                let value = text.trim().to_string();
                text.clear();
                if let Some(path) = rel(&stack) {
                    match path.as_slice() {
                        ["GrpHdr", "MsgId"] => message_id = Some(id(value, position)?),
                        ["OrgnlGrpInfAndSts", "OrgnlMsgId"] => original_message_id = Some(id(value, position)?),
                        ["OrgnlGrpInfAndSts", "OrgnlMsgNmId"] => original_message_name_id = id(value, position)?,
                        ["OrgnlGrpInfAndSts", "GrpSts"] => group_status = Some(code(value, position)?),
                        ["OrgnlGrpInfAndSts", "StsRsnInf", "Rsn", leafname] => {
                            group_reason.element(leafname, &reason_code(value, position)?)
                        }
                        ["OrgnlGrpInfAndSts", "StsRsnInf", "AddtlInf"] => group_reason.element("AddtlInf", &value),
                        ["OrgnlGrpInfAndSts", "StsRsnInf"] => {
                            if group_reason_done.is_none() {
                                group_reason_done = group_reason.take();
                            }
                            group_reason = ReasonBuilder::default();
                        }
                        ["OrgnlPmtInfAndSts", "OrgnlPmtInfId"] => {
                            if let Some(p) = payment_infos.last_mut() {
                                p.original_payment_info_id = id(value, position)?;
                            }
                        }
                        ["OrgnlPmtInfAndSts", "PmtInfSts"] => {
                            if let Some(p) = payment_infos.last_mut() {
                                p.status = Some(code(value, position)?);
                            }
                        }
                        ["OrgnlPmtInfAndSts", "StsRsnInf", "Rsn", leafname] => {
                            pmt_reason.element(leafname, &reason_code(value, position)?)
                        }
                        ["OrgnlPmtInfAndSts", "StsRsnInf", "AddtlInf"] => pmt_reason.element("AddtlInf", &value),
                        ["OrgnlPmtInfAndSts", "StsRsnInf"] => {
                            if pmt_reason_done.is_none() {
                                pmt_reason_done = pmt_reason.take();
                            }
                            pmt_reason = ReasonBuilder::default();
                        }
                        ["OrgnlPmtInfAndSts"] => {
                            if let Some(p) = payment_infos.last_mut() {
                                p.reason = pmt_reason_done.take();
                            }
                        }
                        ["OrgnlPmtInfAndSts", "TxInfAndSts", "OrgnlEndToEndId"] => {
                            if let Some(t) = tx.as_mut() {
                                t.end_to_end_id = Some(id(value, position)?);
                            }
                        }
                        ["OrgnlPmtInfAndSts", "TxInfAndSts", "TxSts"] => {
                            if let Some(t) = tx.as_mut() {
                                t.status_code = Some(code(value, position)?);
                            }
                        }
                        ["OrgnlPmtInfAndSts", "TxInfAndSts", "StsRsnInf", "Rsn", leafname] => {
                            tx_reason.element(leafname, &reason_code(value, position)?)
                        }
                        ["OrgnlPmtInfAndSts", "TxInfAndSts", "StsRsnInf", "AddtlInf"] => {
                            tx_reason.element("AddtlInf", &value)
                        }
                        ["OrgnlPmtInfAndSts", "TxInfAndSts", "StsRsnInf"] => {
                            if let Some(t) = tx.as_mut()
                                && t.reason.is_none()
                            {
                                t.reason = tx_reason.take();
                            }
                            tx_reason = ReasonBuilder::default();
                        }
                        ["OrgnlPmtInfAndSts", "TxInfAndSts"] => {
                            if let Some(t) = tx.take() {
                                transactions.push((t, payment_infos.len().saturating_sub(1)));
                            }
                        }
                        _ => {}
                    }
                }
                stack.pop();
            }
            Event::DocType(_) => return Err(malformed(position, "DTDs are not accepted")),
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !seen_root || !stack.is_empty() {
        return Err(malformed(xml.len() as u64, "document is incomplete"));
    }
    let message_id = message_id.ok_or_else(|| malformed(0, "missing GrpHdr/MsgId"))?;
    let original_message_id =
        original_message_id.ok_or_else(|| malformed(0, "missing OrgnlGrpInfAndSts/OrgnlMsgId"))?;

    let mut resolved = Vec::with_capacity(transactions.len());
    for (t, payment_info_index) in transactions {
        let end_to_end_id =
            t.end_to_end_id.ok_or_else(|| malformed(0, "TxInfAndSts without OrgnlEndToEndId cannot be mapped"))?;
        // A transaction without TxSts inherits its block's status, then the group's.
        let inherited = payment_infos.get(payment_info_index).and_then(|p| p.status.clone()).or(group_status.clone());
        let status_code = t.status_code.or(inherited).unwrap_or_default();
        let status = PaymentStatus::from_code(&status_code, t.reason.as_ref());
        resolved.push(TransactionStatus { end_to_end_id, status, status_code });
    }
    Ok(PaymentStatusReport {
        message_id,
        original_message_id,
        original_message_name_id,
        group_status,
        group_reason: group_reason_done,
        payment_infos,
        transactions: resolved,
    })
}

/// The root must be `Document` in a `pain.002.001.*` namespace (default or prefixed).
fn check_root(start: &BytesStart, name: &str, position: u64) -> Result<(), BankFileError> {
    if name != ROOT[0] {
        return Err(malformed(position, format!("root element is {name}, expected Document")));
    }
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| malformed(position, e.to_string()))?;
        if attribute.key.as_ref().starts_with(b"xmlns")
            && let Ok(value) = std::str::from_utf8(&attribute.value)
            && value.starts_with(NAMESPACE_PREFIX)
        {
            return Ok(());
        }
    }
    Err(malformed(position, "Document is not in a pain.002.001 namespace"))
}

fn push_text(text: &mut String, more: &str, position: u64) -> Result<(), BankFileError> {
    if text.chars().count() + more.chars().count() > TEXT_CHARS_MAX {
        return Err(malformed(position, "element text too long"));
    }
    text.push_str(more);
    Ok(())
}

fn id(value: String, position: u64) -> Result<String, BankFileError> {
    let len = value.chars().count();
    if len == 0 || len > ID_CHARS_MAX {
        return Err(malformed(position, format!("identifier of {len} characters (1..=35 allowed)")));
    }
    Ok(value)
}

fn code(value: String, position: u64) -> Result<String, BankFileError> {
    let len = value.chars().count();
    if len == 0 || len > CODE_CHARS_MAX {
        return Err(malformed(position, format!("status code of {len} characters (1..=4 allowed)")));
    }
    Ok(value)
}

/// `Rsn/Cd` is at most 4 characters, `Rsn/Prtry` at most 35.
fn reason_code(value: String, position: u64) -> Result<String, BankFileError> {
    id(value, position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_classify() {
        assert_eq!(PaymentStatus::from_code("ACSC", None), PaymentStatus::Accepted);
        assert_eq!(PaymentStatus::from_code("ACTC", None), PaymentStatus::Pending);
        assert_eq!(PaymentStatus::from_code("ZZZZ", None), PaymentStatus::Pending);
        let reason = StatusReason { code: "AC01".into(), text: "bad account".into() };
        assert_eq!(
            PaymentStatus::from_code("RJCT", Some(&reason)),
            PaymentStatus::Rejected { reason_code: "AC01".into(), reason_text: "bad account".into() }
        );
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        for input in [&b""[..], b"<", b"<Document/>", b"<a></b>", b"\xff\xfe", b"<!DOCTYPE x><x/>", b"<Document>"] {
            assert!(parse_pain002(input).is_err(), "{input:?}");
        }
    }
}
