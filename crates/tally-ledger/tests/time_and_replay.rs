//! Time and the replay window, against a real RocksDB with a controlled clock.
//!
//! What these tests prove:
//!
//! - **No clock step reopens replay.** An IOU accepted once is never accepted
//!   again, whatever the clock does: stepped forward past expiry plus the
//!   retention margin, a compaction run (the pruning filter), then stepped
//!   back. Either the nonce is still kept (nothing was recorded while the
//!   clock was ahead, so the pruning horizon did not move) and the resubmission
//!   is a `DUPLICATE`, or it was pruned (something was recorded at the
//!   forward time, which became the ledger's durable time mark) and the
//!   writer, judging by `max(clock, time mark)`, refuses it as `EXPIRED`.
//!   (The defect: the filter pruned by the wall clock while the writer judged
//!   expiry by its clock of the moment, so the same IOU was accepted twice.)
//! - **A late retry is told what happened.** Resubmitting an accepted IOU
//!   after its `expires_at`, while its nonce is kept, is answered `DUPLICATE`
//!   with the original commitment and charge, not `EXPIRED` (the client would
//!   conclude it was not charged).
//! - **The time mark survives a restart** (it is derived from what is
//!   durable), and records' times never go back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::{Signer, SigningKey};
use tally_core::{Actor, Asset, Iou, Outcome, Payee, SignedIou};
use tally_ledger::{AdminCommand, AppendItem, AuditOptions, Ledger, LedgerOptions, Writer, WriterConfig, audit};

const NOW_S: u64 = 1_800_000_000;
/// The IOU's validity: accepted at `NOW_S`, expired from `NOW_S + VALIDITY_S`.
const VALIDITY_S: u64 = 600;
/// The ledger's default retention margin.
const MARGIN_S: u64 = 3_600;

struct Fixture {
    dir: tempfile::TempDir,
    clock_ms: Arc<AtomicU64>,
    ledger: Ledger,
    writer: Writer,
}

fn clock(at: &Arc<AtomicU64>) -> tally_ledger::Clock {
    let at = at.clone();
    Arc::new(move || at.load(Ordering::SeqCst))
}

fn open(dir: &std::path::Path, clock_ms: &Arc<AtomicU64>) -> (Ledger, Writer) {
    let ledger = Ledger::open(dir, LedgerOptions { clock: clock(clock_ms), ..LedgerOptions::default() }).unwrap();
    let writer =
        Writer::start(ledger.clone(), WriterConfig { clock: clock(clock_ms), ..WriterConfig::default() }).unwrap();
    (ledger, writer)
}

fn actor() -> Actor {
    Actor::admin_token("test")
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock_ms = Arc::new(AtomicU64::new(NOW_S * 1000));
        let (ledger, writer) = open(dir.path(), &clock_ms);
        let f = Fixture { dir, clock_ms, ledger, writer };
        let w = f.writer.handle();
        w.admin_blocking(actor(), AdminCommand::UpsertAsset(Asset::new("USD", 6, true).unwrap())).unwrap();
        w.admin_blocking(
            actor(),
            AdminCommand::RegisterPayer {
                id: "crawler".into(),
                display_name: "crawler".into(),
                keys: vec![signer().verifying_key().to_bytes()],
                credit_limits: vec![("USD".into(), 1_000_000)],
            },
        )
        .unwrap();
        w.admin_blocking(actor(), AdminCommand::RegisterPayee(Payee::new("site.example", "Site", ""))).unwrap();
        f
    }

    fn set_clock_s(&self, s: u64) {
        self.clock_ms.store(s * 1000, Ordering::SeqCst);
    }

    fn submit(&self, item: AppendItem) -> tally_ledger::AppendResult {
        self.writer.handle().append_blocking(vec![item]).unwrap()[0]
    }

    /// An admin change: a journal entry at the writer's time, which becomes the time mark.
    fn record_something(&self) {
        let usd = AdminCommand::UpsertAsset(Asset::new("USD", 6, true).unwrap());
        self.writer.handle().admin_blocking(actor(), usd).unwrap();
    }

    fn head_seq(&self) -> u64 {
        self.ledger.head().unwrap().0
    }

    fn owed(&self) -> u128 {
        self.ledger.unsettled_owed(Some("crawler")).unwrap().values().sum()
    }

    fn restart(self) -> Fixture {
        let Fixture { dir, clock_ms, ledger, writer } = self;
        writer.shutdown();
        drop(ledger);
        let (ledger, writer) = open(dir.path(), &clock_ms);
        Fixture { dir, clock_ms, ledger, writer }
    }
}

fn signer() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The one IOU these tests replay: issued at `NOW_S`, valid for `VALIDITY_S`, charged `charge`.
fn the_iou(charge: u64) -> AppendItem {
    let iou = Iou {
        network: "tally:test".into(),
        payer_key: signer().verifying_key().to_bytes(),
        payee: "site.example".into(),
        asset: "USD".into(),
        amount: 1_500,
        nonce: [42; 16],
        issued_at_s: NOW_S,
        expires_at_s: NOW_S + VALIDITY_S,
        resource: "https://site.example/article".into(),
    };
    let bytes = iou.signing_bytes();
    let signature = signer().sign(&bytes).to_bytes();
    AppendItem { signed: SignedIou { iou, signature }, evidence: bytes, charge }
}

#[test]
fn a_clock_stepped_forward_then_back_never_accepts_an_iou_twice() {
    // Forward, compact, back, with nothing recorded while the clock was ahead.
    let f = Fixture::new();
    let first = f.submit(the_iou(1_500));
    assert_eq!(first.outcome, Outcome::Accepted);
    let (seq, owed) = (f.head_seq(), f.owed());
    f.set_clock_s(NOW_S + VALIDITY_S + MARGIN_S + 60);
    f.ledger.compact();
    f.set_clock_s(NOW_S + 10);
    let again = f.submit(the_iou(1_500));
    assert_eq!(again.outcome, Outcome::Duplicate, "the nonce is still kept: the original is answered");
    assert_eq!(again.commitment, first.commitment);
    assert_eq!((f.head_seq(), f.owed()), (seq, owed), "nothing was charged twice");

    // Forward, record something there (the time mark moves), compact, back.
    f.set_clock_s(NOW_S + VALIDITY_S + MARGIN_S + 60);
    f.record_something();
    f.ledger.compact();
    let key = signer().verifying_key().to_bytes();
    assert!(!f.ledger.nonce_known(&key, &[42; 16]).unwrap(), "pruned below the durable time mark");
    f.set_clock_s(NOW_S + 10);
    let after_prune = f.submit(the_iou(1_500));
    assert_eq!(after_prune.outcome, Outcome::Expired, "judged by the time mark, not the stepped-back clock");
    assert_eq!((f.head_seq(), f.owed()), (seq, owed), "nothing was charged twice");
    // And a new IOU signed for the real time is judged by the mark too: the
    // ledger never accepts anything it would call expired by a time it recorded.
    assert_eq!(f.writer.handle().time_mark_ms() / 1000, NOW_S + VALIDITY_S + MARGIN_S + 60);

    let report = audit(&f.ledger, AuditOptions { verify_signatures: true }).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.nonces_pruned, 1, "a legal pruning, by the ledger's own time");
}

#[test]
fn the_time_mark_survives_a_restart_and_keeps_judging_expiry() {
    let f = Fixture::new();
    assert_eq!(f.submit(the_iou(1_500)).outcome, Outcome::Accepted);
    f.set_clock_s(NOW_S + VALIDITY_S + MARGIN_S + 60);
    f.record_something();
    f.ledger.compact();
    // The clock goes back while the engine is down.
    f.set_clock_s(NOW_S + 10);
    let f = f.restart();
    assert_eq!(f.writer.handle().time_mark_ms() / 1000, NOW_S + VALIDITY_S + MARGIN_S + 60, "rebuilt from disk");
    // Compacting again after the restart prunes nothing new, and the IOU stays refused.
    f.ledger.compact();
    assert_eq!(f.submit(the_iou(1_500)).outcome, Outcome::Expired);
    assert_eq!(f.ledger.head().unwrap().0, 1);
    // Records are never stamped before the mark, even with the clock behind it.
    f.record_something();
    let last = f.ledger.journal_head().unwrap();
    assert!(last.at_ms >= (NOW_S + VALIDITY_S + MARGIN_S + 60) * 1000, "{last:?}");
}

#[test]
fn a_late_retry_of_an_accepted_iou_is_a_duplicate_with_its_original_charge() {
    let f = Fixture::new();
    // The payee charged less than the client committed (dynamic pricing).
    let first = f.submit(the_iou(700));
    assert_eq!((first.outcome, first.charge), (Outcome::Accepted, 700));
    // After its expiry, inside the retention margin: the original is answered.
    f.set_clock_s(NOW_S + VALIDITY_S + 5);
    f.record_something();
    let late = f.submit(the_iou(700));
    assert_eq!(late.outcome, Outcome::Duplicate, "a late retry is told it was charged");
    assert_eq!((late.commitment, late.epoch, late.charge), (first.commitment, first.epoch, 700));
    // A retry asking another charge is still the same IOU: the original charge stands.
    let other_charge = f.submit(the_iou(1_500));
    assert_eq!((other_charge.outcome, other_charge.charge), (Outcome::Duplicate, 700));
    assert_eq!(f.owed(), 700);
    // The same nonce with different content is a conflict, expired or not.
    let mut different = the_iou(700);
    different.signed.iou.amount = 1_499;
    different.evidence = different.signed.iou.signing_bytes();
    different.signed.signature = signer().sign(&different.evidence).to_bytes();
    assert_eq!(f.submit(different).outcome, Outcome::Conflict);
}

#[test]
fn charges_are_bounded_by_what_the_client_committed() {
    let f = Fixture::new();
    for (charge, outcome) in [(0, Outcome::InvalidAmount), (1_501, Outcome::InvalidAmount), (1_500, Outcome::Accepted)]
    {
        assert_eq!(f.submit(the_iou(charge)).outcome, outcome, "charge {charge}");
    }
    let record = f.ledger.record(1).unwrap().unwrap();
    assert_eq!((record.charge, record.charge().unwrap()), (Some(1_500), 1_500));
}
