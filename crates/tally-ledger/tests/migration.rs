//! A ledger written by format 1 opens, migrates, and audits clean.
//!
//! `tests/fixtures/ledger-format-1.tar.gz` is a real data directory written
//! by Tally's format 1 (commit 990e600, `tally demo --ious 3000 --crawlers 3
//! --sites 2`): 2,987 IOUs in epoch 1, sealed and settled on the ISO 20022
//! rail (its one payout rejected by the bank and carried forward, a payment
//! file written), epoch 2 open. What these tests prove:
//!
//! - Opened read-only (`tally ledger verify`), it is refused with a message
//!   that says how to migrate it: never misread.
//! - Opened for writing, it migrates once, atomically: `meta` says format 2,
//!   migrated from 1, with a fresh ledger id; old log records keep their
//!   format-1 layout and hash; account and bank-batch records are rewritten
//!   to their format-2 shape; the journal starts with the migration, whose
//!   effects are the whole migrated state.
//! - Everything reads back as before: every IOU, every aggregate, the
//!   epoch's settlement (figures, the rejected payout, the carries).
//! - The audit is clean, and notes the plan that predates the migration.
//! - Life goes on: new IOUs are format-2 records chained after the old ones;
//!   epoch 2 (whose carries came from format 1) is planned, netted again by
//!   the writer and by the audit, and a second open migrates nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tally_core::settlement::{
    BatchLimits, BatchState, Flow, NettingInput, PayoutState, SettlementPolicy, SettlementStatus, cut_batches, net,
};
use tally_core::{Actor, Outcome, PayeeStatus};
use tally_ledger::journal::Action;
use tally_ledger::{
    AdminCommand, AdminReply, AuditOptions, BalanceFilter, FORMAT_CURRENT, Ledger, LedgerOptions, SettlementCommand,
    Writer, WriterConfig, audit,
};

/// Facts of the fixture, from the format-1 engine's own output.
const RECORDS: u64 = 2_987;
/// Σ epoch 1, micro-dollars (the demo's "gross 2.960509").
const EPOCH_1_GROSS: u128 = 2_960_509;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ledger-format-1.tar.gz")
}

/// Unpacks the fixture into a fresh directory; returns it and the ledger's path in it.
fn unpack() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(fixture())
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar runs");
    assert!(status.success(), "unpacking {}", fixture().display());
    let path = dir.path().join("ledger");
    assert!(path.join("CURRENT").exists());
    (dir, path)
}

#[test]
fn a_format_1_ledger_is_refused_read_only_with_a_way_forward() {
    let (_dir, path) = unpack();
    let error = Ledger::open(&path, LedgerOptions { read_only: true, ..LedgerOptions::default() })
        .err()
        .expect("a format-1 ledger is not read as format 2");
    let text = error.to_string();
    assert!(text.contains("format 1") && text.contains("tally serve"), "{text}");
}

#[test]
fn a_format_1_ledger_migrates_and_audits_clean() {
    let (_dir, path) = unpack();
    let ledger = Ledger::open(&path, LedgerOptions::default()).unwrap();
    let meta = *ledger.meta();
    assert_eq!((meta.format, meta.migrated_from), (FORMAT_CURRENT, Some(1)));
    assert_eq!(meta.log_format2_from_seq, RECORDS + 1);
    assert_ne!(meta.ledger_id.0, [0; 16]);

    // The log is as it was: format-1 records, their own hashes.
    let (head, _) = ledger.head().unwrap();
    assert_eq!(head, RECORDS);
    let first = ledger.record(1).unwrap().unwrap();
    assert_eq!(first.charge, None, "a format-1 record keeps its layout");
    assert_eq!(first.charge().unwrap(), first.iou().unwrap().amount, "its charge is its amount");
    let rows = ledger.balances_all(&BalanceFilter { epoch: Some(1), ..Default::default() }, 100).unwrap();
    assert_eq!(rows.iter().map(|r| r.sum).sum::<u128>(), EPOCH_1_GROSS);
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), RECORDS);

    // Accounts in their format-2 shape.
    let payees = ledger.payees().unwrap();
    assert_eq!(payees.len(), 2);
    assert!(payees.iter().all(|p| p.status == PayeeStatus::Active));
    assert!(ledger.payers().unwrap().iter().all(|p| p.revoked_keys.is_empty()));

    // The settlement of epoch 1 reads back: settled, its one payout rejected
    // and carried, with everything it was owed, into epoch 2.
    let settlement = ledger.settlement(1).unwrap().unwrap();
    assert_eq!(settlement.status, SettlementStatus::Settled);
    let payouts = ledger.payouts(1).unwrap();
    assert_eq!(payouts.len(), 1);
    assert!(matches!(payouts[0].state, PayoutState::Rejected(_)), "{:?}", payouts[0].state);
    assert_eq!(ledger.carries_into(2).unwrap().iter().map(|c| c.amount).sum::<u128>(), EPOCH_1_GROSS);
    // The bank batch's state gained the time its file was stamped with: the epoch's seal.
    let batch = &ledger.batches(1).unwrap()[0];
    let sealed_at = ledger.epoch(1).unwrap().unwrap().sealed_at_ms.unwrap();
    match &batch.state {
        BatchState::FileWritten { file_name, created_at_ms, .. } => {
            assert_eq!(file_name, "TALLY-E1-USD-1.xml");
            assert_eq!(*created_at_ms, sealed_at);
        }
        other => panic!("the batch is {other:?}"),
    }

    // The journal starts with the migration.
    let journal = ledger.journal(1, 10).unwrap();
    assert!(matches!(journal[0].body.action, Action::Migrated { from_format: 1, to_format: 2 }));
    assert_eq!((journal[0].body.actor.clone(), journal[0].log_head), (Actor::Engine, RECORDS));

    let report = audit(&ledger, AuditOptions { verify_signatures: true }).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!((report.records, report.signatures_verified), (RECORDS, RECORDS));
    assert!(report.notices.iter().any(|n| n.contains("migrated from ledger format 1")), "{:?}", report.notices);
}

#[test]
fn a_migrated_ledger_carries_on_in_format_2() {
    let (_dir, path) = unpack();
    let ledger = Ledger::open(&path, LedgerOptions::default()).unwrap();
    let ledger_id = ledger.ledger_id();
    let writer = Writer::start(ledger.clone(), WriterConfig::default()).unwrap();
    let w = writer.handle();
    let actor = Actor::admin_token("test");

    // Epoch 2 holds only the carries format 1 left; seal it and plan it with
    // no rail configured: everything carries on to epoch 3.
    assert!(matches!(w.admin_blocking(actor.clone(), AdminCommand::SealEpoch).unwrap(), AdminReply::Sealed { .. }));
    let carries = ledger.carries_into(2).unwrap();
    let policy = SettlementPolicy { fee_bps: 50, assets: BTreeMap::new() };
    let (links, destinations, held) = (BTreeMap::new(), BTreeMap::new(), BTreeSet::new());
    let input = NettingInput {
        ledger_id,
        epoch: 2,
        policy: &policy,
        links: &links,
        destinations: &destinations,
        carries_in: &carries,
        held: &held,
    };
    let plan = net(&input, std::iter::empty::<Flow>()).unwrap();
    let limits = BatchLimits { payouts_per_evm_tx: 10, transfers_per_iso20022_file: 10, transfers_per_nacha_file: 10 };
    let batches = cut_batches(&plan, &ledger_id, limits).unwrap();
    let command = SettlementCommand::RecordPlan { plan: Box::new(plan), batches, policy, limits };
    assert_eq!(w.admin_blocking(actor, AdminCommand::Settlement(command)).unwrap(), AdminReply::Planned { epoch: 2 });
    assert_eq!(ledger.carries_into(3).unwrap().iter().map(|c| c.amount).sum::<u128>(), EPOCH_1_GROSS);

    // A replay of a format-1 IOU is answered from its format-1 record.
    let old = ledger.record(5).unwrap().unwrap();
    let iou = old.iou().unwrap();
    let replay = tally_ledger::AppendItem {
        signed: tally_core::SignedIou { iou: iou.clone(), signature: old.signature },
        evidence: old.evidence.clone(),
        charge: iou.amount,
    };
    let answer = w.append_blocking(vec![replay]).unwrap()[0];
    assert!(matches!(answer.outcome, Outcome::Duplicate | Outcome::Expired), "{answer:?}");
    if answer.outcome == Outcome::Duplicate {
        assert_eq!(answer.commitment.unwrap().seq, 5);
    }

    writer.shutdown();
    let report = audit(&ledger, AuditOptions { verify_signatures: false }).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.plans_renetted, 1, "the plan made after the migration is netted again");
    drop(ledger);

    // A second open migrates nothing.
    let again = Ledger::open(&path, LedgerOptions::default()).unwrap();
    assert_eq!(again.ledger_id(), ledger_id);
    assert!(matches!(again.journal(1, 1).unwrap()[0].body.action, Action::Migrated { .. }));
    assert_eq!(
        again.journal(1, 10_000).unwrap().iter().filter(|e| matches!(e.body.action, Action::Migrated { .. })).count(),
        1
    );
}
