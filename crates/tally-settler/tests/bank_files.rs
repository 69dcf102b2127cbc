//! Bank files against real, independent validators.
//!
//! - Every `pain.001` and `pain.002` written here is validated with `xmllint --schema`
//!   against the official ISO 20022 XSDs in `schemas/iso20022/` (Debian `libxml2-utils`).
//! - NACHA files are checked by two independent Python implementations: `achkit` (its
//!   reconciliation validator: record length, blocking, ABA check digits, entry hashes,
//!   batch and file totals) and `carta-ach` (a positional parser; we compare its entries).
//!
//! A missing tool fails the test with a message pointing at `scripts/test.sh`, which
//! installs them; a validator that is silently skipped would prove nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use quick_xml::Reader;
use quick_xml::events::Event;
use tally_settler::bank::*;
use time::macros::date;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn schema(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/iso20022").join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bank").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Compares `bytes` with a golden fixture; `TALLY_BLESS_GOLDEN=1` rewrites the fixture instead.
fn golden(name: &str, bytes: &[u8]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bank").join(name);
    if std::env::var_os("TALLY_BLESS_GOLDEN").is_some() {
        std::fs::write(&path, bytes).expect("write golden file");
        return;
    }
    assert_eq!(
        String::from_utf8_lossy(bytes),
        String::from_utf8(fixture(name)).unwrap(),
        "{name} changed: if intended, rerun with TALLY_BLESS_GOLDEN=1 and review the diff"
    );
}

fn temp_file(bytes: &[u8], suffix: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(suffix).tempfile().expect("temp file");
    file.write_all(bytes).expect("write temp file");
    file.flush().expect("flush temp file");
    file
}

/// Runs the real `xmllint` and fails the test with its output when the file is invalid.
fn xmllint(xsd: &str, xml: &[u8]) {
    let file = temp_file(xml, ".xml");
    let output = match Command::new("xmllint").arg("--noout").arg("--schema").arg(schema(xsd)).arg(file.path()).output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "xmllint is not installed: run scripts/test.sh (it installs the Debian package libxml2-utils) \
             instead of cargo test alone"
        ),
        Err(e) => panic!("cannot run xmllint: {e}"),
    };
    assert!(
        output.status.success(),
        "xmllint rejected the file against {xsd}:\n{}\n--- file (first 4000 bytes) ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&xml[..xml.len().min(4000)])
    );
}

fn routing(prefix8: &str) -> String {
    let d: Vec<u32> = prefix8.bytes().map(|b| u32::from(b - b'0')).collect();
    let partial = 3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5]);
    format!("{prefix8}{}", (10 - partial % 10) % 10)
}

fn iban_de(account: u64) -> String {
    // German IBAN: DEkk + 8-digit bank code + 10-digit account, check digits computed.
    let bban = format!("37040044{account:010}");
    let numeric = format!("{bban}131400"); // "DE" = 13 14, then "00"
    let remainder = numeric.bytes().fold(0u32, |r, b| (r * 10 + u32::from(b - b'0')) % 97);
    format!("DE{:02}{bban}", 98 - remainder)
}

fn debtor(bic: Option<&str>) -> Iso20022Debtor {
    Iso20022Debtor {
        name: "Tally Treasury GmbH".into(),
        iban: "DE89370400440532013000".into(),
        bic: bic.map(str::to_string),
    }
}

fn transfer(n: usize, bic: Option<&str>) -> CreditTransfer {
    CreditTransfer {
        end_to_end_id: format!("po-42-{n:06}"),
        amount_minor: (n as u128 * 7919) % 250_000 + 1,
        creditor_name: format!("Payee Number {n}"),
        creditor_iban: iban_de(n as u64 + 1),
        creditor_bic: bic.map(str::to_string),
        remittance: format!("Tally epoch 42 payout {n}"),
    }
}

fn eur_file(transfers: usize, bic: Option<&str>) -> Pain001File {
    Pain001File {
        message_id: "TALLY-E42-EUR".into(),
        created_at_ms: 1_740_821_400_250,
        requested_execution_date: date!(2025 - 03 - 03),
        debtor: debtor(bic),
        currency: "EUR".into(),
        currency_minor_units: 2,
        transfers: (0..transfers).map(|n| transfer(n, bic)).collect(),
    }
}

/// Integer minor units from an XML decimal, by string operations only.
fn decimal_to_minor(text: &str, minor_units: u8) -> u128 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    assert!(fraction.len() <= usize::from(minor_units), "too many fraction digits in {text}");
    let padded = format!("{whole}{fraction:0<width$}", width = usize::from(minor_units));
    padded.parse().unwrap_or_else(|_| panic!("not a decimal: {text}"))
}

/// What the test reads back out of a `pain.001` with its own XML pass.
#[derive(Debug, Default)]
struct Pain001Readback {
    group_count: String,
    group_sum: String,
    payment_count: String,
    payment_sum: String,
    amounts: Vec<(String, String)>,
    end_to_end_ids: Vec<String>,
    creditor_names: Vec<String>,
    remittances: Vec<String>,
    service_level: Option<String>,
    debtor_agent_other: Option<String>,
    creditor_agents: usize,
}

fn read_pain001(xml: &[u8]) -> Pain001Readback {
    let mut reader = Reader::from_reader(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut currency = String::new();
    let mut out = Pain001Readback::default();
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                let name = String::from_utf8(e.local_name().as_ref().to_vec()).unwrap();
                if name == "InstdAmt" {
                    let ccy = e.try_get_attribute("Ccy").unwrap().expect("Ccy attribute");
                    currency = String::from_utf8(ccy.value.to_vec()).unwrap();
                }
                if name == "CdtrAgt" {
                    out.creditor_agents += 1;
                }
                stack.push(name);
                text.clear();
            }
            Event::Text(t) => text.push_str(&t.xml10_content().unwrap()),
            Event::GeneralRef(r) => {
                let name = r.decode().unwrap();
                text.push_str(quick_xml::escape::resolve_predefined_entity(&name).expect("predefined entity"));
            }
            Event::End(_) => {
                let path = stack.join("/");
                let value = std::mem::take(&mut text);
                match path.as_str() {
                    "Document/CstmrCdtTrfInitn/GrpHdr/NbOfTxs" => out.group_count = value,
                    "Document/CstmrCdtTrfInitn/GrpHdr/CtrlSum" => out.group_sum = value,
                    "Document/CstmrCdtTrfInitn/PmtInf/NbOfTxs" => out.payment_count = value,
                    "Document/CstmrCdtTrfInitn/PmtInf/CtrlSum" => out.payment_sum = value,
                    "Document/CstmrCdtTrfInitn/PmtInf/PmtTpInf/SvcLvl/Cd" => out.service_level = Some(value),
                    "Document/CstmrCdtTrfInitn/PmtInf/DbtrAgt/FinInstnId/Othr/Id" => {
                        out.debtor_agent_other = Some(value)
                    }
                    "Document/CstmrCdtTrfInitn/PmtInf/CdtTrfTxInf/PmtId/EndToEndId" => out.end_to_end_ids.push(value),
                    "Document/CstmrCdtTrfInitn/PmtInf/CdtTrfTxInf/Amt/InstdAmt" => {
                        out.amounts.push((currency.clone(), value))
                    }
                    "Document/CstmrCdtTrfInitn/PmtInf/CdtTrfTxInf/Cdtr/Nm" => out.creditor_names.push(value),
                    "Document/CstmrCdtTrfInitn/PmtInf/CdtTrfTxInf/RmtInf/Ustrd" => out.remittances.push(value),
                    _ => {}
                }
                stack.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

/// Checks counts and control sums of a written file against its input, by reading back.
fn check_readback(file: &Pain001File, xml: &[u8]) -> Pain001Readback {
    let back = read_pain001(xml);
    let count = file.transfers.len().to_string();
    assert_eq!(back.group_count, count);
    assert_eq!(back.payment_count, count);
    assert_eq!(back.group_sum, back.payment_sum);
    let expected_total: u128 = file.transfers.iter().map(|t| t.amount_minor).sum();
    assert_eq!(decimal_to_minor(&back.group_sum, file.currency_minor_units), expected_total);
    let amounts: Vec<u128> = back
        .amounts
        .iter()
        .map(|(ccy, value)| {
            assert_eq!(ccy, &file.currency);
            decimal_to_minor(value, file.currency_minor_units)
        })
        .collect();
    let expected_amounts: Vec<u128> = file.transfers.iter().map(|t| t.amount_minor).collect();
    assert_eq!(amounts, expected_amounts);
    assert_eq!(amounts.iter().sum::<u128>(), expected_total);
    let ids: Vec<&str> = file.transfers.iter().map(|t| t.end_to_end_id.as_str()).collect();
    assert_eq!(back.end_to_end_ids, ids);
    back
}

fn is_sepa(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/-?:().,'+ ".contains(c)
}

// ---------------------------------------------------------------------------------------
// pain.001
// ---------------------------------------------------------------------------------------

#[test]
fn pain001_eur_sepa_with_bics_is_schema_valid() {
    let file = eur_file(3, Some("COBADEFFXXX"));
    let xml = write_pain001(&file).unwrap();
    xmllint("pain.001.001.09.xsd", &xml);
    let back = check_readback(&file, &xml);
    assert_eq!(back.service_level.as_deref(), Some("SEPA"));
    assert_eq!(back.debtor_agent_other, None);
    assert_eq!(back.creditor_agents, 3);
    let text = String::from_utf8(xml).unwrap();
    assert!(text.contains("<ChrgBr>SLEV</ChrgBr>"));
    assert!(text.contains("<BICFI>COBADEFFXXX</BICFI>"));
    assert!(text.contains("<CreDtTm>2025-03-01T09:30:00.250Z</CreDtTm>"));
}

#[test]
fn pain001_eur_sepa_without_bics_is_schema_valid() {
    let file = eur_file(2, None);
    let xml = write_pain001(&file).unwrap();
    xmllint("pain.001.001.09.xsd", &xml);
    let back = check_readback(&file, &xml);
    assert_eq!(back.debtor_agent_other.as_deref(), Some("NOTPROVIDED"));
    assert_eq!(back.creditor_agents, 0);
}

#[test]
fn pain001_single_and_thousand_transfers_are_schema_valid() {
    for count in [1, 1_000] {
        let file = eur_file(count, if count == 1 { None } else { Some("DEUTDEFF") });
        let xml = write_pain001(&file).unwrap();
        xmllint("pain.001.001.09.xsd", &xml);
        check_readback(&file, &xml);
    }
}

#[test]
fn pain001_non_eur_currencies_are_schema_valid() {
    // GBP (2 minor units), JPY (0), KWD (3): no SEPA service level, charges shared,
    // Unicode names kept (escaped by the writer).
    for (currency, minor_units, amount) in [("GBP", 2u8, 123_456u128), ("JPY", 0, 98_765), ("KWD", 3, 1_234_567)] {
        let file = Pain001File {
            message_id: format!("TALLY-E42-{currency}"),
            created_at_ms: 1_740_821_400_000,
            requested_execution_date: date!(2025 - 03 - 03),
            debtor: Iso20022Debtor {
                name: "Tally Treasury Ltd".into(),
                iban: "GB82WEST12345698765432".into(),
                bic: Some("NWBKGB2L".into()),
            },
            currency: currency.into(),
            currency_minor_units: minor_units,
            transfers: vec![
                CreditTransfer {
                    end_to_end_id: "po-42-a".into(),
                    amount_minor: amount,
                    creditor_name: "Ōsaka Shōten 株式会社 <&> \"quoted\"".into(),
                    creditor_iban: "GB33BUKB20201555555555".into(),
                    creditor_bic: Some("BUKBGB22".into()),
                    remittance: "Payout für Ärger & Co. 💸".into(),
                },
                CreditTransfer {
                    end_to_end_id: "po-42-b".into(),
                    amount_minor: 1,
                    creditor_name: "Kuwait Payee".into(),
                    creditor_iban: "KW81CBKU0000000000001234560101".into(),
                    creditor_bic: None,
                    remittance: String::new(),
                },
            ],
        };
        let xml = write_pain001(&file).unwrap();
        xmllint("pain.001.001.09.xsd", &xml);
        let back = check_readback(&file, &xml);
        assert_eq!(back.service_level, None);
        assert_eq!(back.creditor_names[0], "Ōsaka Shōten 株式会社 <&> \"quoted\"");
        assert_eq!(back.remittances, vec!["Payout für Ärger & Co. 💸".to_string()], "empty remittance is omitted");
        assert!(String::from_utf8(xml).unwrap().contains("<ChrgBr>SHAR</ChrgBr>"));
    }
}

#[test]
fn pain001_eur_text_is_cleaned_to_the_sepa_set_and_length() {
    let mut file = eur_file(4, None);
    file.debtor.name = "Trésorerie Tally S.à r.l. & Cie".into();
    file.transfers[0].creditor_name = "Zoë Ångström-Müller & Søn <ltd> \"q\" 李".into();
    file.transfers[1].creditor_name = format!("{}É", "A".repeat(139));
    file.transfers[2].remittance = "Straße\n\tnumber 5; € 12,50 @home".into();
    file.transfers[3].creditor_name = "   padded   ".into();
    let xml = write_pain001(&file).unwrap();
    xmllint("pain.001.001.09.xsd", &xml);
    let back = check_readback(&file, &xml);
    assert_eq!(back.creditor_names[0], "Zoe Angstrom-Muller + Son .ltd. 'q' .");
    assert_eq!(back.creditor_names[1], "A".repeat(139) + "E");
    assert_eq!(back.creditor_names[3], "padded");
    assert_eq!(back.remittances[2], "Strasse  number 5. . 12,50 .home");
    for text in back.creditor_names.iter().chain(&back.remittances) {
        assert!(text.chars().all(is_sepa), "{text:?} leaves the SEPA character set");
        assert!(text.chars().count() <= 140);
    }
    let text = String::from_utf8(xml).unwrap();
    assert!(text.contains("<Nm>Tresorerie Tally S.a r.l. + Cie</Nm>"));
    // Long text is cut at 140 characters.
    file.transfers[1].creditor_name = "B".repeat(500);
    let back = read_pain001(&write_pain001(&file).unwrap());
    assert_eq!(back.creditor_names[1], "B".repeat(140));
}

#[test]
fn pain001_regeneration_is_byte_identical() {
    let file = eur_file(250, Some("COBADEFFXXX"));
    let first = write_pain001(&file).unwrap();
    let second = write_pain001(&file.clone()).unwrap();
    assert_eq!(first, second);
    // A golden file pins the exact bytes across versions of this code and its dependencies:
    // a rerun after an upgrade must still reproduce a file that may already be at the bank.
    let mut small = eur_file(2, Some("COBADEFFXXX"));
    small.transfers[1].creditor_name = "Zoë & Søn <Ltd>".into();
    golden("pain001_golden.xml", &write_pain001(&small).unwrap());
}

#[test]
fn pain001_refuses_bad_input_with_typed_errors() {
    let mut empty = eur_file(1, None);
    empty.transfers.clear();
    assert_eq!(write_pain001(&empty), Err(BankFileError::Empty));

    let mut too_many = eur_file(1, None);
    too_many.transfers = vec![transfer(1, None); TRANSFERS_PER_FILE_MAX + 1];
    assert!(matches!(write_pain001(&too_many), Err(BankFileError::TooMany { what: "transfers", .. })));

    let mut zero = eur_file(3, None);
    zero.transfers[1].amount_minor = 0;
    assert_eq!(write_pain001(&zero), Err(BankFileError::ZeroAmount { field: "transfers[1].amount_minor".into() }));

    let mut huge = eur_file(1, None);
    huge.transfers[0].amount_minor = 1_000_000_000_000_000_000;
    assert!(matches!(write_pain001(&huge), Err(BankFileError::AmountTooLarge { .. })));
    huge.transfers[0].amount_minor = u128::MAX;
    assert!(matches!(write_pain001(&huge), Err(BankFileError::AmountTooLarge { .. })));

    let mut sum_overflow = eur_file(2, None);
    sum_overflow.transfers[0].amount_minor = 999_999_999_999_999_999;
    sum_overflow.transfers[1].amount_minor = 1;
    assert!(matches!(write_pain001(&sum_overflow), Err(BankFileError::TotalTooLarge { .. })));

    let mut long_id = eur_file(1, None);
    long_id.transfers[0].end_to_end_id = "x".repeat(36);
    assert!(matches!(write_pain001(&long_id), Err(BankFileError::BadLength { len: 36, max: 35, .. })));

    let mut long_msg = eur_file(1, None);
    long_msg.message_id = "M".repeat(36);
    assert!(matches!(write_pain001(&long_msg), Err(BankFileError::BadLength { .. })));

    let mut bad_chars = eur_file(1, None);
    bad_chars.transfers[0].end_to_end_id = "po_42<1>".into();
    assert!(matches!(write_pain001(&bad_chars), Err(BankFileError::InvalidField { .. })));

    let mut bad_iban = eur_file(1, None);
    bad_iban.transfers[0].creditor_iban = "DE89370400440532013001".into();
    assert!(matches!(write_pain001(&bad_iban), Err(BankFileError::BadIban { .. })));

    let mut bad_bic = eur_file(1, Some("COBADEFFXXX"));
    bad_bic.transfers[0].creditor_bic = Some("cobadeff".into());
    assert!(matches!(write_pain001(&bad_bic), Err(BankFileError::InvalidField { .. })));

    let mut eur_minor = eur_file(1, None);
    eur_minor.currency_minor_units = 3;
    assert!(matches!(write_pain001(&eur_minor), Err(BankFileError::InvalidField { .. })));

    let mut bad_currency = eur_file(1, None);
    bad_currency.currency = "eur".into();
    assert!(matches!(write_pain001(&bad_currency), Err(BankFileError::InvalidField { .. })));

    let mut empty_name = eur_file(1, None);
    empty_name.transfers[0].creditor_name = "  \n ".into();
    assert!(matches!(write_pain001(&empty_name), Err(BankFileError::InvalidField { .. })));

    let mut far_future = eur_file(1, None);
    far_future.created_at_ms = u64::MAX;
    assert!(matches!(write_pain001(&far_future), Err(BankFileError::BadDate { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any valid set of transfers reads back with the same amounts, counts and control sum.
    #[test]
    fn pain001_readback_matches_input(
        amounts in prop::collection::vec(1u128..=10_000_000_000_000u128, 1..40),
        minor_units in 0u8..=4,
        names in prop::collection::vec(".{0,160}", 40),
    ) {
        let transfers = amounts
            .iter()
            .enumerate()
            .map(|(n, amount)| CreditTransfer {
                end_to_end_id: format!("p{n}"),
                amount_minor: *amount,
                creditor_name: format!("N{}", names[n]),
                creditor_iban: iban_de(n as u64),
                creditor_bic: None,
                remittance: names[(n + 1) % names.len()].clone(),
            })
            .collect();
        let file = Pain001File {
            message_id: "PROP".into(),
            created_at_ms: 0,
            requested_execution_date: date!(2025 - 01 - 01),
            debtor: debtor(None),
            currency: "USD".into(),
            currency_minor_units: minor_units,
            transfers,
        };
        let xml = write_pain001(&file).unwrap();
        check_readback(&file, &xml);
        let back = read_pain001(&xml);
        for name in &back.creditor_names {
            prop_assert!(name.chars().count() <= 140 && !name.is_empty());
            prop_assert!(!name.chars().any(char::is_control));
        }
    }
}

// ---------------------------------------------------------------------------------------
// NACHA
// ---------------------------------------------------------------------------------------

fn ach_entry(n: usize, prefix8: &str) -> AchCredit {
    AchCredit {
        routing: routing(prefix8),
        account: format!("{:012}", 100_000 + n),
        account_kind: if n.is_multiple_of(3) { AccountKind::Savings } else { AccountKind::Checking },
        amount_cents: (n as u128 * 104_729) % 5_000_000 + 1,
        individual_id: format!("PO42{n:06}"),
        name: format!("Payee {n}"),
    }
}

fn nacha_file(batches: Vec<NachaBatch>) -> NachaFile {
    NachaFile {
        immediate_destination: "091000019".into(),
        immediate_destination_name: "Wells Fargo".into(),
        immediate_origin: "1234567890".into(),
        immediate_origin_name: "Tally Treasury Inc".into(),
        file_id_modifier: 'A',
        created_at_ms: 1_740_821_400_250,
        batches,
    }
}

fn nacha_batch(sec_code: SecCode, entries: Vec<AchCredit>) -> NachaBatch {
    NachaBatch {
        sec_code,
        company_name: "Tally Payouts".into(),
        company_id: "1234567890".into(),
        entry_description: "PAYOUT".into(),
        effective_entry_date: date!(2025 - 03 - 04),
        odfi_routing: "09100001".into(),
        entries,
    }
}

fn sample_nacha() -> NachaFile {
    nacha_file(vec![
        nacha_batch(SecCode::Ppd, (0..5).map(|n| ach_entry(n, "02100002")).collect()),
        nacha_batch(SecCode::Ccd, (5..8).map(|n| ach_entry(n, "01100001")).collect()),
    ])
}

/// Runs `achkit`'s validator and `carta-ach`'s parser on a file; returns carta-ach's
/// entry count and credit sum.
fn python_ach_validators(bytes: &[u8]) -> (u64, u128) {
    let file = temp_file(bytes, ".ach");
    let script = r#"
import sys, json
try:
    import achkit
    from ach.parser import Parser
except ImportError as e:
    print("MISSING", e)
    sys.exit(3)
data = open(sys.argv[1]).read()
result = achkit.validate(data)
if not result["ok"]:
    print(json.dumps(result["errors"]))
    sys.exit(1)
parsed = achkit.parse(data)
carta = Parser(data).as_dict()
entries = [e for b in carta["batches"] for e in b["entries"]]
credits = sum(int(e["entry_detail"]["amount"]) for e in entries)
assert len(parsed["batches"]) == len(carta["batches"])
print(len(entries), credits)
"#;
    let output = match Command::new("python3").arg("-c").arg(script).arg(file.path()).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("python3 is not installed: run scripts/test.sh (it installs python3, achkit and carta-ach)")
        }
        Err(e) => panic!("cannot run python3: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_ne!(
        output.status.code(),
        Some(3),
        "the NACHA validators are not installed ({stdout}): run scripts/test.sh \
         (python3 -m pip install achkit==0.2.0 carta-ach==0.4.5)"
    );
    assert!(
        output.status.success(),
        "achkit/carta-ach rejected the file: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut parts = stdout.split_whitespace();
    let count = parts.next().and_then(|s| s.parse().ok()).expect("entry count");
    let credits = parts.next().and_then(|s| s.parse().ok()).expect("credit total");
    (count, credits)
}

#[test]
fn nacha_records_blocks_and_controls() {
    let file = sample_nacha();
    let bytes = write_nacha(&file).unwrap();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
    assert!(lines.iter().all(|l| l.len() == NACHA_RECORD_CHARS), "every record is 94 characters");
    assert_eq!(bytes.len(), lines.len() * 95);
    assert_eq!(lines.len() % 10, 0, "blocking factor 10");
    // 1 header + 2 × (batch header + control) + 8 entries + 1 file control = 14 → 20 records.
    assert_eq!(lines.len(), 20);
    assert!(lines[14..].iter().all(|l| *l == "9".repeat(94)));

    assert_eq!(&lines[0][..4], "101 ");
    assert_eq!(&lines[0][3..13], " 091000019");
    assert_eq!(&lines[0][13..23], "1234567890");
    assert_eq!(&lines[0][23..33], "2503010930");
    assert_eq!(&lines[0][33..40], "A094101");
    assert_eq!(lines[0][40..63].trim_end(), "WELLS FARGO");
    assert_eq!(lines[0][63..86].trim_end(), "TALLY TREASURY INC");

    assert_eq!(&lines[1][..4], "5220");
    assert_eq!(&lines[1][50..53], "PPD");
    assert_eq!(&lines[1][69..75], "250304");
    assert_eq!(&lines[1][78..94], "1091000010000001");
    assert_eq!(&lines[8][50..53], "CCD");

    // Entry: transaction code, trace number = ODFI + file-wide sequence.
    assert_eq!(&lines[2][..3], "632"); // entry 0 is savings
    assert_eq!(&lines[3][..3], "622");
    assert_eq!(&lines[2][79..94], "091000010000001");
    assert_eq!(&lines[9][79..94], "091000010000006");

    // Batch 1 control: 5 entries, hash 5 × 02100002, credits = sum of the five amounts.
    let credits_1: u128 = (0..5).map(|n| ach_entry(n, "02100002").amount_cents).sum();
    assert_eq!(&lines[7][..4], "8220");
    assert_eq!(&lines[7][4..10], "000005");
    assert_eq!(&lines[7][10..20], format!("{:010}", 5 * 2_100_002));
    assert_eq!(&lines[7][20..32], "000000000000");
    assert_eq!(&lines[7][32..44], format!("{credits_1:012}"));
    // File control.
    let credits: u128 = file.batches.iter().flat_map(|b| &b.entries).map(|e| e.amount_cents).sum();
    assert_eq!(&lines[13][..1], "9");
    assert_eq!(&lines[13][1..7], "000002");
    assert_eq!(&lines[13][7..13], "000002");
    assert_eq!(&lines[13][13..21], "00000008");
    assert_eq!(&lines[13][21..31], format!("{:010}", 5 * 2_100_002 + 3 * 1_100_001));
    assert_eq!(&lines[13][43..55], format!("{credits:012}"));

    let summary = parse_nacha(&bytes).unwrap();
    assert_eq!(summary.total_credit_cents, credits);
    assert_eq!(summary.total_debit_cents, 0);
    assert_eq!(summary.block_count, 2);
    assert_eq!(summary.batch_count, 2);
    assert_eq!(python_ach_validators(&bytes), (8, credits));
}

#[test]
fn nacha_entry_hash_keeps_the_last_ten_digits() {
    // 1,000 entries with routing prefixes near 32,000,000: the sum exceeds 10 digits.
    let entries: Vec<AchCredit> = (0..1_000).map(|n| ach_entry(n, &format!("32{:06}", 999_000 + n % 1_000))).collect();
    let sum: u64 = (0..1_000u64).map(|n| 32_000_000 + 999_000 + n % 1_000).sum();
    assert!(sum >= 10_000_000_000, "the test must overflow the field");
    let file = nacha_file(vec![nacha_batch(SecCode::Ppd, entries)]);
    let bytes = write_nacha(&file).unwrap();
    let summary = parse_nacha(&bytes).unwrap();
    assert_eq!(summary.entry_hash, sum % 10_000_000_000);
    assert_eq!(summary.batches[0].entry_hash, sum % 10_000_000_000);
    let text = std::str::from_utf8(&bytes).unwrap();
    let control = text.lines().find(|l| l.starts_with('9') && !l.starts_with("99")).unwrap();
    assert_eq!(&control[21..31], format!("{:010}", sum % 10_000_000_000));
    let credits: u128 = file.batches[0].entries.iter().map(|e| e.amount_cents).sum();
    assert_eq!(python_ach_validators(&bytes), (1_000, credits));
}

#[test]
fn nacha_round_trips_through_the_parser() {
    let file = sample_nacha();
    let bytes = write_nacha(&file).unwrap();
    assert_eq!(bytes, write_nacha(&file).unwrap(), "deterministic");
    golden("nacha_golden.ach", &bytes);
    let summary = parse_nacha(&bytes).unwrap();
    assert_eq!(summary.immediate_destination, "091000019");
    assert_eq!(summary.immediate_origin, "1234567890");
    assert_eq!(summary.file_id_modifier, 'A');
    assert_eq!(summary.batches.len(), 2);
    for (batch, parsed) in file.batches.iter().zip(&summary.batches) {
        assert_eq!(parsed.sec_code, batch.sec_code.as_str());
        assert_eq!(parsed.service_class, 220);
        assert_eq!(parsed.company_id, batch.company_id);
        assert_eq!(parsed.company_name, "TALLY PAYOUTS");
        assert_eq!(parsed.entry_description, batch.entry_description);
        assert_eq!(parsed.effective_entry_date, batch.effective_entry_date);
        assert_eq!(parsed.odfi_routing, batch.odfi_routing);
        assert_eq!(parsed.entries.len(), batch.entries.len());
        for (entry, got) in batch.entries.iter().zip(&parsed.entries) {
            assert_eq!(got.routing, entry.routing);
            assert_eq!(got.account, entry.account);
            assert_eq!(got.amount_cents, entry.amount_cents);
            assert_eq!(got.individual_id, entry.individual_id);
            assert_eq!(got.name, entry.name.to_uppercase());
            assert_eq!(got.transaction_code, entry.account_kind.credit_transaction_code());
        }
    }
}

#[test]
fn nacha_parser_refuses_tampered_files() {
    let bytes = write_nacha(&sample_nacha()).unwrap();
    // Change one entry's amount (cents digit of record 3): controls no longer agree.
    let mut tampered = bytes.clone();
    let at = 2 * 95 + 38;
    tampered[at] = if tampered[at] == b'9' { b'8' } else { tampered[at] + 1 };
    assert!(matches!(parse_nacha(&tampered), Err(BankFileError::ControlMismatch { .. })));
    // Drop the filler: blocking factor broken.
    let short = &bytes[..bytes.len() - 95];
    assert!(matches!(parse_nacha(short), Err(BankFileError::Malformed { .. })));
    // A record one character short.
    let mut cut = bytes.clone();
    cut.remove(10);
    assert!(matches!(parse_nacha(&cut), Err(BankFileError::Malformed { .. })));
    // Garbage never panics.
    for input in [&b""[..], b"\n", b"1", &[0xff; 95], &bytes[..95]] {
        assert!(parse_nacha(input).is_err());
    }
}

#[test]
fn nacha_refuses_bad_input_with_typed_errors() {
    let mut bad_routing = sample_nacha();
    bad_routing.batches[0].entries[2].routing = "021000022".into();
    assert_eq!(
        write_nacha(&bad_routing),
        Err(BankFileError::BadRoutingNumber {
            field: "batches[0].entries[2].routing".into(),
            value: "021000022".into()
        })
    );
    let mut bad_destination = sample_nacha();
    bad_destination.immediate_destination = "09100001".into();
    assert!(matches!(write_nacha(&bad_destination), Err(BankFileError::BadRoutingNumber { .. })));

    let mut too_big = sample_nacha();
    too_big.batches[0].entries[0].amount_cents = 10_000_000_000;
    assert!(matches!(write_nacha(&too_big), Err(BankFileError::AmountTooLarge { max: 9_999_999_999, .. })));

    let mut zero = sample_nacha();
    zero.batches[1].entries[0].amount_cents = 0;
    assert!(matches!(write_nacha(&zero), Err(BankFileError::ZeroAmount { .. })));

    // 101 entries of 9,999,999,999 cents exceed the 12-digit batch total.
    let mut total = sample_nacha();
    total.batches[0].entries =
        (0..101).map(|n| AchCredit { amount_cents: 9_999_999_999, ..ach_entry(n, "02100002") }).collect();
    assert!(matches!(write_nacha(&total), Err(BankFileError::TotalTooLarge { .. })));

    let mut lower_id = sample_nacha();
    lower_id.batches[0].entries[0].individual_id = "po42".into();
    assert!(matches!(write_nacha(&lower_id), Err(BankFileError::InvalidField { .. })));

    let mut long_id = sample_nacha();
    long_id.batches[0].entries[0].individual_id = "P".repeat(16);
    assert!(matches!(write_nacha(&long_id), Err(BankFileError::BadLength { .. })));

    let mut long_account = sample_nacha();
    long_account.batches[0].entries[0].account = "1".repeat(18);
    assert!(matches!(write_nacha(&long_account), Err(BankFileError::BadLength { .. })));

    let mut company = sample_nacha();
    company.batches[0].company_id = "12345".into();
    assert!(matches!(write_nacha(&company), Err(BankFileError::BadLength { .. })));

    let mut origin = sample_nacha();
    origin.immediate_origin = "123".into();
    assert!(matches!(write_nacha(&origin), Err(BankFileError::InvalidField { .. })));

    let mut empty = sample_nacha();
    empty.batches.clear();
    assert_eq!(write_nacha(&empty), Err(BankFileError::Empty));

    let mut empty_batch = sample_nacha();
    empty_batch.batches[1].entries.clear();
    assert!(matches!(write_nacha(&empty_batch), Err(BankFileError::InvalidField { .. })));

    let mut old = sample_nacha();
    old.batches[0].effective_entry_date = date!(1999 - 12 - 31);
    assert!(matches!(write_nacha(&old), Err(BankFileError::BadDate { .. })));

    let mut too_many = sample_nacha();
    too_many.batches[0].entries = vec![ach_entry(1, "02100002"); ENTRIES_PER_NACHA_FILE_MAX + 1];
    assert!(matches!(write_nacha(&too_many), Err(BankFileError::TooMany { what: "entries", .. })));
}

#[test]
fn nacha_names_are_upper_case_ascii() {
    let mut file = sample_nacha();
    file.batches[0].entries[0].name = "José Müller-Łukasz the Third of Many".into();
    let summary = parse_nacha(&write_nacha(&file).unwrap()).unwrap();
    assert_eq!(summary.batches[0].entries[0].name, "JOSE MULLER-LUKASZ THE");
}

fn arb_entry() -> impl Strategy<Value = AchCredit> {
    (
        "[0-9]{8}",
        "[0-9A-Z]{1,17}",
        prop::bool::ANY,
        1u128..=9_999_999_999u128,
        "[A-Z0-9]{1,15}",
        "[A-Z]([A-Z ]{0,20}[A-Z])?",
    )
        .prop_map(|(prefix, account, savings, amount_cents, individual_id, name)| AchCredit {
            routing: routing(&prefix),
            account,
            account_kind: if savings { AccountKind::Savings } else { AccountKind::Checking },
            amount_cents,
            individual_id,
            name,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any valid generated file parses back to the same entries and totals.
    #[test]
    fn nacha_generated_files_round_trip(
        batches in prop::collection::vec((prop::bool::ANY, prop::collection::vec(arb_entry(), 1..12)), 1..5),
        created_at_ms in 946_684_800_000u64..4_102_444_799_000u64,
        modifier in "[A-Z0-9]",
    ) {
        let file = NachaFile {
            file_id_modifier: modifier.chars().next().unwrap(),
            created_at_ms,
            ..nacha_file(
                batches
                    .into_iter()
                    .map(|(ccd, entries)| nacha_batch(if ccd { SecCode::Ccd } else { SecCode::Ppd }, entries))
                    .collect(),
            )
        };
        let bytes = write_nacha(&file).unwrap();
        prop_assert_eq!(bytes.len() % (95 * 10), 0);
        let summary = parse_nacha(&bytes).unwrap();
        let entries: Vec<&AchCredit> = file.batches.iter().flat_map(|b| &b.entries).collect();
        let parsed: Vec<&NachaEntry> = summary.batches.iter().flat_map(|b| &b.entries).collect();
        prop_assert_eq!(entries.len(), parsed.len());
        for (entry, got) in entries.iter().zip(&parsed) {
            prop_assert_eq!(&got.routing, &entry.routing);
            prop_assert_eq!(&got.account, &entry.account);
            prop_assert_eq!(got.amount_cents, entry.amount_cents);
            prop_assert_eq!(&got.individual_id, &entry.individual_id);
            prop_assert_eq!(&got.name, &entry.name);
        }
        let credits: u128 = entries.iter().map(|e| e.amount_cents).sum();
        prop_assert_eq!(summary.total_credit_cents, credits);
        prop_assert_eq!(summary.entry_addenda_count, entries.len() as u64);
        let hash: u64 = entries.iter().map(|e| e.routing[..8].parse::<u64>().unwrap()).sum::<u64>() % 10_000_000_000;
        prop_assert_eq!(summary.entry_hash, hash);
        let traces: std::collections::BTreeSet<&str> = parsed.iter().map(|e| e.trace_number.as_str()).collect();
        prop_assert_eq!(traces.len(), parsed.len(), "trace numbers are unique");
    }
}

// ---------------------------------------------------------------------------------------
// pain.002
// ---------------------------------------------------------------------------------------

fn decide(t: &CreditTransfer) -> PaymentStatus {
    match t.end_to_end_id.as_bytes().last() {
        Some(b'3') => {
            PaymentStatus::Rejected { reason_code: "AC04".into(), reason_text: "Account closed & gone".into() }
        }
        Some(b'7') => {
            PaymentStatus::Rejected { reason_code: "BANK-SPECIFIC-REASON".into(), reason_text: "Proprietary".into() }
        }
        Some(b'5') => PaymentStatus::Pending,
        _ => PaymentStatus::Accepted,
    }
}

#[test]
fn pain002_written_answers_are_schema_valid_and_parse_back() {
    let original = eur_file(20, None);
    for (version, xsd) in [(Pain002Version::V03, "pain.002.001.03.xsd"), (Pain002Version::V12, "pain.002.001.12.xsd")] {
        let answer = answer_pain001(&original, version, "BANK-ANSWER-1", 1_740_900_000_000, decide);
        assert_eq!(answer.group_status.as_deref(), Some("PART"));
        let xml = write_pain002(&answer).unwrap();
        assert_eq!(xml, write_pain002(&answer).unwrap(), "deterministic");
        xmllint(xsd, &xml);
        let report = parse_pain002(&xml).unwrap();
        assert_eq!(report.message_id, "BANK-ANSWER-1");
        assert_eq!(report.original_message_id, original.message_id);
        assert_eq!(report.original_message_name_id, "pain.001.001.09");
        assert_eq!(report.group_status.as_deref(), Some("PART"));
        assert_eq!(report.transactions, answer.transactions);
        assert_eq!(report.unlisted_status(), None, "PART says nothing about unlisted payouts");
        for t in &original.transfers {
            assert_eq!(report.status_of(&t.end_to_end_id), Some(decide(t)));
        }
    }
}

#[test]
fn pain002_group_level_answers_are_schema_valid() {
    let original = eur_file(3, None);
    for (version, xsd) in [(Pain002Version::V03, "pain.002.001.03.xsd"), (Pain002Version::V12, "pain.002.001.12.xsd")] {
        let file = Pain002File {
            version,
            message_id: "BANK-ANSWER-2".into(),
            created_at_ms: 1_740_900_000_000,
            original_message_id: original.message_id.clone(),
            original_message_name_id: "pain.001.001.09".into(),
            original_payment_info_id: original.message_id.clone(),
            group_status: Some("RJCT".into()),
            group_reason: Some(StatusReason { code: "AM04".into(), text: "Insufficient funds on the treasury".into() }),
            transactions: Vec::new(),
        };
        let xml = write_pain002(&file).unwrap();
        xmllint(xsd, &xml);
        let report = parse_pain002(&xml).unwrap();
        assert!(report.transactions.is_empty());
        let rejected = PaymentStatus::Rejected {
            reason_code: "AM04".into(),
            reason_text: "Insufficient funds on the treasury".into(),
        };
        assert_eq!(report.unlisted_status(), Some(rejected.clone()));
        assert_eq!(report.status_of("po-42-000001"), Some(rejected));
    }
    // All accepted: the simulator says ACCP for the group.
    let answer = answer_pain001(&original, Pain002Version::V03, "BANK-ANSWER-3", 0, |_| PaymentStatus::Accepted);
    assert_eq!(answer.group_status.as_deref(), Some("ACCP"));
    let xml = write_pain002(&answer).unwrap();
    xmllint("pain.002.001.03.xsd", &xml);
    assert_eq!(parse_pain002(&xml).unwrap().unlisted_status(), Some(PaymentStatus::Accepted));
}

#[test]
fn pain002_writer_refuses_codes_outside_the_version() {
    let original = eur_file(1, None);
    let mut answer = answer_pain001(&original, Pain002Version::V03, "BANK-ANSWER-4", 0, |_| PaymentStatus::Accepted);
    answer.transactions[0].status_code = "ACCC".into(); // not in .03's closed list
    assert!(matches!(write_pain002(&answer), Err(BankFileError::InvalidField { .. })));
    answer.version = Pain002Version::V12;
    let xml = write_pain002(&answer).unwrap();
    xmllint("pain.002.001.12.xsd", &xml);
    answer.transactions[0].status_code = "RJCT".into(); // status says Accepted
    assert!(matches!(write_pain002(&answer), Err(BankFileError::InvalidField { .. })));
}

#[test]
fn pain002_fixtures_are_schema_valid() {
    for (name, xsd) in [
        ("pain002_accepted.v03.xml", "pain.002.001.03.xsd"),
        ("pain002_rejected.v03.xml", "pain.002.001.03.xsd"),
        ("pain002_group_rejected.v03.xml", "pain.002.001.03.xsd"),
        ("pain002_pending.v12.xml", "pain.002.001.12.xsd"),
        ("pain002_prefixed.v12.xml", "pain.002.001.12.xsd"),
    ] {
        xmllint(xsd, &fixture(name));
    }
}

#[test]
fn pain002_accepted_fixture() {
    let report = parse_pain002(&fixture("pain002_accepted.v03.xml")).unwrap();
    assert_eq!(report.message_id, "BANK-STS-0001");
    assert_eq!(report.original_message_id, "TALLY-E42-EUR");
    assert_eq!(report.group_status.as_deref(), Some("ACCP"));
    assert_eq!(
        report.transactions,
        vec![
            TransactionStatus {
                end_to_end_id: "po-42-0001".into(),
                status: PaymentStatus::Accepted,
                status_code: "ACSC".into()
            },
            TransactionStatus {
                end_to_end_id: "po-42-0002".into(),
                status: PaymentStatus::Accepted,
                status_code: "ACCP".into()
            },
        ]
    );
}

#[test]
fn pain002_rejected_fixture() {
    let report = parse_pain002(&fixture("pain002_rejected.v03.xml")).unwrap();
    assert_eq!(report.group_status.as_deref(), Some("PART"));
    assert_eq!(report.payment_infos.len(), 1);
    assert_eq!(report.payment_infos[0].original_payment_info_id, "TALLY-E42-EUR");
    assert_eq!(report.payment_infos[0].status.as_deref(), Some("PART"));
    assert_eq!(report.status_of("po-42-0001"), Some(PaymentStatus::Accepted));
    assert_eq!(
        report.status_of("po-42-0002"),
        Some(PaymentStatus::Rejected {
            reason_code: "AC01".into(),
            reason_text: "Account identifier incorrect & unknown (IBAN DE89...)".into()
        })
    );
    assert_eq!(
        report.status_of("po-42-0003"),
        Some(PaymentStatus::Rejected { reason_code: "BANK-LIMIT-EXCEEDED".into(), reason_text: String::new() })
    );
    assert_eq!(report.status_of("po-42-9999"), None, "not listed, and PART says nothing");
}

#[test]
fn pain002_pending_fixture() {
    let report = parse_pain002(&fixture("pain002_pending.v12.xml")).unwrap();
    assert_eq!(report.group_status.as_deref(), Some("RCVD"));
    let statuses: Vec<(&str, &PaymentStatus, &str)> =
        report.transactions.iter().map(|t| (t.end_to_end_id.as_str(), &t.status, t.status_code.as_str())).collect();
    assert_eq!(
        statuses,
        vec![
            ("po-43-0001", &PaymentStatus::Pending, "PDNG"),
            ("po-43-0002", &PaymentStatus::Pending, "ACTC"),
            ("po-43-0003", &PaymentStatus::Accepted, "ACWP"),
        ]
    );
    assert_eq!(report.unlisted_status(), Some(PaymentStatus::Pending));
}

#[test]
fn pain002_group_rejected_fixture_rejects_every_transaction() {
    let report = parse_pain002(&fixture("pain002_group_rejected.v03.xml")).unwrap();
    assert_eq!(report.group_status.as_deref(), Some("RJCT"));
    assert!(report.transactions.is_empty());
    assert!(report.payment_infos.is_empty());
    let rejected =
        PaymentStatus::Rejected { reason_code: "DU01".into(), reason_text: "Duplicate message identification".into() };
    assert_eq!(
        report.group_reason,
        Some(StatusReason { code: "DU01".into(), text: "Duplicate message identification".into() })
    );
    assert_eq!(report.unlisted_status(), Some(rejected.clone()));
    assert_eq!(report.status_of("po-42-0001"), Some(rejected.clone()));
    assert_eq!(report.status_of("any-payout"), Some(rejected));
}

#[test]
fn pain002_prefixed_namespace_and_inherited_status() {
    let report = parse_pain002(&fixture("pain002_prefixed.v12.xml")).unwrap();
    assert_eq!(report.group_status, None);
    let rejected = PaymentStatus::Rejected { reason_code: String::new(), reason_text: String::new() };
    // The transaction has no TxSts: it inherits the block's RJCT (its own reason is empty).
    assert_eq!(report.transactions[0].status_code, "RJCT");
    assert_eq!(report.transactions[0].status, rejected);
    // Unlisted payouts take the single payment-information block's status and reason.
    assert_eq!(
        report.unlisted_status(),
        Some(PaymentStatus::Rejected { reason_code: "AM04".into(), reason_text: "Insufficient funds".into() })
    );
}

#[test]
fn pain002_parser_is_bounded_and_refuses_bad_input() {
    let too_large = vec![b' '; PAIN002_BYTES_MAX + 1];
    assert!(matches!(parse_pain002(&too_large), Err(BankFileError::InputTooLarge { .. })));

    let deep = format!(
        "<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pain.002.001.03\">{}{}</Document>",
        "<a>".repeat(100),
        "</a>".repeat(100)
    );
    assert!(matches!(parse_pain002(deep.as_bytes()), Err(BankFileError::Malformed { .. })));

    let wrong_namespace =
        String::from_utf8(fixture("pain002_accepted.v03.xml")).unwrap().replace("pain.002.001.03", "pain.001.001.09");
    assert!(parse_pain002(wrong_namespace.as_bytes()).is_err());

    let no_e2e = String::from_utf8(fixture("pain002_accepted.v03.xml"))
        .unwrap()
        .replace("<OrgnlEndToEndId>po-42-0001</OrgnlEndToEndId>", "");
    assert!(parse_pain002(no_e2e.as_bytes()).is_err());

    let long_id =
        String::from_utf8(fixture("pain002_accepted.v03.xml")).unwrap().replace("po-42-0001", &"x".repeat(36));
    assert!(parse_pain002(long_id.as_bytes()).is_err());

    let entity = String::from_utf8(fixture("pain002_accepted.v03.xml")).unwrap().replace(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
        "<?xml version=\"1.0\"?><!DOCTYPE d [<!ENTITY x \"y\">]>",
    );
    assert!(parse_pain002(entity.as_bytes()).is_err(), "DTDs are refused");

    let truncated = fixture("pain002_accepted.v03.xml");
    for cut in (0..truncated.len()).step_by(37) {
        assert!(parse_pain002(&truncated[..cut]).is_err(), "cut at {cut}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes never panic the parsers.
    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_pain002(&bytes);
        let _ = parse_nacha(&bytes);
    }
}
