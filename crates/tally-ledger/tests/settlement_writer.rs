//! Settlement's persisted state machine, driven through the single writer
//! against a real RocksDB in a temporary directory.
//!
//! What these tests prove:
//!
//! - `RecordPlan` refuses every malformed or out-of-order plan (open epoch,
//!   epochs out of order, a second plan, payouts in no batch or two, batches
//!   of another rail or asset or out of order, carries to the wrong epoch,
//!   stale carries) with a typed error, and a refused plan writes nothing.
//! - A recorded plan reads back exactly (settlement, payouts and the payout
//!   index, bills, batches, carries); a plan without payouts is settled at once.
//! - Batch transitions follow `BatchState::may_become`; a mined EVM batch
//!   settles its payouts with the transaction hash and adds its gas; a written
//!   file submits its payouts; repeats are no-ops; failures flag the epoch and
//!   a later success clears the flag.
//! - Bank verdicts settle or reject submitted payouts exactly once; a rejection
//!   carries amount plus fee into the first unplanned epoch, and a plan built
//!   before that carry appeared is refused as stale.
//! - A bill holds its payer's credit until it is paid, and the writer rebuilds
//!   exactly that exposure from disk after a restart.
//! - Everything settlement wrote reads back identically after a restart, and
//!   steps queued into one group commit see each other's writes.
//! - `LinkPayer` checks the payee and persists the link.
//! - A property: whatever sequence of batch updates, bank verdicts and status
//!   changes arrives, `batches_open`, `payouts_open` and `Settled` agree with
//!   the batch and payout records, and a refused step changes nothing.
//!
//! The last section holds regression tests for defects found while writing
//! these (batch states of the wrong rail, a plan racing its epoch's IOUs,
//! link changes moving credit held by open bills), all fixed.
//!
//! No sleeps: commands that must share one group commit are queued while the
//! writer is parked inside its clock, then released together.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use tally_core::settlement::{
    AssetPolicy, BatchRecord, BatchState, Bill, BillRecord, Carry, CarryReason, EpochSettlement, Flow, NettingInput,
    Party, Payout, PayoutRecord, PayoutState, RailBatch, SettlementPlan, SettlementPolicy, SettlementStatus, bill_id,
    net, payout_id,
};
use tally_core::{Asset, Iou, Outcome, Payee, PayoutDestination, Rail, SignedIou};
use tally_ledger::{
    AdminCommand, AdminError, AdminReply, AppendItem, AppendResult, BalanceFilter, Clock, Ledger, LedgerOptions,
    SettlementCommand, Writer, WriterConfig, WriterHandle,
};

const NOW_S: u64 = 1_800_000_000;
const USD: &str = "USD";
const EUR: &str = "EUR";
/// `bot-a` may owe this much USD; `bot-b` a thousand times more.
const LIMIT_A: u128 = 1_000;
const LIMIT_B: u128 = 1_000_000;

// ---------------------------------------------------------------------------
// Fixture: a ledger, a writer, a controllable clock and a gate that parks
// the writer at the start of its next group commit.

#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    parked: AtomicBool,
}

struct Fixture {
    dir: tempfile::TempDir,
    clock_ms: Arc<AtomicU64>,
    gate: Arc<Gate>,
    nonce: AtomicU64,
    ledger: Ledger,
    writer: Writer,
}

fn plain_clock(at: &Arc<AtomicU64>) -> Clock {
    let at = at.clone();
    Arc::new(move || at.load(Ordering::SeqCst))
}

/// The writer's clock: while the gate is armed, the writer waits inside it
/// (after it has drained its queue into a group, before it applies any of it).
fn gated_clock(at: &Arc<AtomicU64>, gate: &Arc<Gate>) -> Clock {
    let (at, gate) = (at.clone(), gate.clone());
    Arc::new(move || {
        if gate.armed.load(Ordering::SeqCst) {
            gate.parked.store(true, Ordering::SeqCst);
            while gate.armed.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
        at.load(Ordering::SeqCst)
    })
}

fn open(dir: &std::path::Path, clock_ms: &Arc<AtomicU64>, gate: &Arc<Gate>) -> (Ledger, Writer) {
    let ledger = Ledger::open(dir, LedgerOptions { clock: plain_clock(clock_ms), ..LedgerOptions::default() }).unwrap();
    let writer =
        Writer::start(ledger.clone(), WriterConfig { clock: gated_clock(clock_ms, gate), ..WriterConfig::default() })
            .unwrap();
    (ledger, writer)
}

fn signer(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock_ms = Arc::new(AtomicU64::new(NOW_S * 1000));
        let gate = Arc::new(Gate::default());
        let (ledger, writer) = open(dir.path(), &clock_ms, &gate);
        let f = Fixture { dir, clock_ms, gate, nonce: AtomicU64::new(1), ledger, writer };
        f.admin(AdminCommand::UpsertAsset(Asset::new(USD, 6, true).unwrap())).unwrap();
        f.admin(AdminCommand::UpsertAsset(Asset::new(EUR, 2, true).unwrap())).unwrap();
        for (id, seed, limit) in [("bot-a", 1u8, LIMIT_A), ("bot-b", 2, LIMIT_B)] {
            f.admin(AdminCommand::RegisterPayer {
                id: id.into(),
                display_name: id.into(),
                keys: vec![signer(seed).verifying_key().to_bytes()],
                credit_limits: vec![(USD.into(), limit)],
            })
            .unwrap();
        }
        for id in ["site-a", "site-b", "site-c"] {
            f.admin(AdminCommand::RegisterPayee(Payee {
                id: id.into(),
                display_name: id.into(),
                payout_destination: String::new(),
            }))
            .unwrap();
        }
        f
    }

    /// Stops the writer, closes the ledger, opens both again: the writer's
    /// state is rebuilt from disk by `State::load`.
    fn restart(self) -> Fixture {
        let Fixture { dir, clock_ms, gate, nonce, ledger, writer } = self;
        writer.shutdown();
        drop(ledger);
        let (ledger, writer) = open(dir.path(), &clock_ms, &gate);
        Fixture { dir, clock_ms, gate, nonce, ledger, writer }
    }

    fn w(&self) -> WriterHandle {
        self.writer.handle()
    }

    fn admin(&self, command: AdminCommand) -> Result<AdminReply, AdminError> {
        self.w().admin_blocking(command)
    }

    fn settle(&self, command: SettlementCommand) -> Result<AdminReply, AdminError> {
        self.admin(AdminCommand::Settlement(command))
    }

    fn record(&self, plan: &SettlementPlan, batches: &[RailBatch]) -> Result<AdminReply, AdminError> {
        self.settle(SettlementCommand::RecordPlan { plan: Box::new(plan.clone()), batches: batches.to_vec() })
    }

    fn update(&self, epoch: u64, index: u32, state: BatchState) -> Result<AdminReply, AdminError> {
        self.settle(SettlementCommand::UpdateBatch { epoch, index, state })
    }

    fn bank(&self, payout_id: &str, verdict: Result<&str, &str>) -> Result<AdminReply, AdminError> {
        let verdict = verdict.map(str::to_owned).map_err(str::to_owned);
        self.settle(SettlementCommand::RecordBankStatus { payout_id: payout_id.into(), verdict })
    }

    fn set_status(&self, epoch: u64, status: SettlementStatus) -> Result<AdminReply, AdminError> {
        self.settle(SettlementCommand::SetStatus { epoch, status })
    }

    /// Seals the open epoch; returns the sealed epoch's number.
    fn seal(&self) -> u64 {
        match self.admin(AdminCommand::SealEpoch).unwrap() {
            AdminReply::Sealed { sealed, .. } => sealed.epoch,
            other => panic!("seal answered {other:?}"),
        }
    }

    /// A fresh IOU from payer `seed` (1: bot-a, 2: bot-b) to `payee`, in USD.
    fn iou(&self, seed: u8, payee: &str, amount: u64) -> AppendItem {
        let key = signer(seed);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.nonce.fetch_add(1, Ordering::SeqCst).to_be_bytes());
        let iou = Iou {
            network: "tally:test".into(),
            payer_key: key.verifying_key().to_bytes(),
            payee: payee.into(),
            asset: USD.into(),
            amount,
            nonce,
            issued_at_s: NOW_S,
            expires_at_s: NOW_S + 600,
            resource: format!("https://{payee}/{amount}"),
        };
        let signing_bytes = iou.signing_bytes();
        let signature = key.sign(&signing_bytes).to_bytes();
        AppendItem { signed: SignedIou { iou, signature }, evidence: signing_bytes }
    }

    fn pay(&self, seed: u8, payee: &str, amount: u64) -> AppendResult {
        self.w().append_blocking(vec![self.iou(seed, payee, amount)]).unwrap()[0]
    }

    fn advance_ms(&self, ms: u64) -> u64 {
        self.clock_ms.fetch_add(ms, Ordering::SeqCst) + ms
    }

    fn settlement(&self, epoch: u64) -> EpochSettlement {
        self.ledger.settlement(epoch).unwrap().unwrap_or_else(|| panic!("epoch {epoch} has a settlement record"))
    }

    fn payout_state(&self, id: &str) -> PayoutState {
        self.ledger.payout(id).unwrap().unwrap_or_else(|| panic!("payout {id} exists")).state
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(&self.ledger)
    }

    /// The netting the settler would do for `epoch`, from the ledger's own
    /// aggregates and carries, with USD on `rail`.
    fn net_epoch(&self, epoch: u64, rail: Rail, destinations: &[(&str, PayoutDestination)]) -> SettlementPlan {
        let policy = SettlementPolicy {
            fee_bps: 100,
            assets: BTreeMap::from([(USD.to_owned(), AssetPolicy { rail, payout_min: 50, payable_multiple: 1 })]),
        };
        let links: BTreeMap<String, String> = self
            .ledger
            .payers()
            .unwrap()
            .into_iter()
            .filter_map(|p| p.settles_with.map(|payee| (p.id, payee)))
            .collect();
        let destinations: BTreeMap<String, PayoutDestination> =
            destinations.iter().map(|(id, d)| ((*id).to_owned(), d.clone())).collect();
        let carries = self.ledger.carries_into(epoch).unwrap();
        let rows = self.ledger.balances(&BalanceFilter { epoch: Some(epoch), ..Default::default() }, 10_000).unwrap();
        let input =
            NettingInput { epoch, policy: &policy, links: &links, destinations: &destinations, carries_in: &carries };
        net(
            &input,
            rows.iter().map(|r| Flow { payer: &r.payer, payee: &r.payee, asset: &r.asset, sum: r.sum, count: r.count }),
        )
        .unwrap()
    }

    /// Parks the writer at the start of its next group. Returns the pending
    /// command that made it start that group.
    fn park_writer(&self) -> Pending<Result<AdminReply, AdminError>> {
        self.gate.parked.store(false, Ordering::SeqCst);
        self.gate.armed.store(true, Ordering::SeqCst);
        let w = self.w();
        let first = enqueue(async move { w.admin(AdminCommand::UpsertAsset(Asset::new(USD, 6, true).unwrap())).await });
        while !self.gate.parked.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        assert_eq!(self.w().queue_depth(), 0, "the parked group took the only queued command");
        first
    }

    /// Lets the parked writer go: everything queued meanwhile forms its next group.
    fn release_writer(&self) {
        self.gate.armed.store(false, Ordering::SeqCst);
    }

    fn enqueue_settle(&self, command: SettlementCommand) -> Pending<Result<AdminReply, AdminError>> {
        let w = self.w();
        enqueue(async move { w.admin(AdminCommand::Settlement(command)).await })
    }

    fn enqueue_admin(&self, command: AdminCommand) -> Pending<Result<AdminReply, AdminError>> {
        let w = self.w();
        enqueue(async move { w.admin(command).await })
    }
}

type Pending<T> = Pin<Box<dyn Future<Output = T>>>;

/// Polls a writer call once: that puts its command in the writer's queue
/// (the queue has room) and leaves it waiting for the reply.
fn enqueue<T>(future: impl Future<Output = T> + 'static) -> Pending<T> {
    let mut future: Pending<T> = Box::pin(future);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(future.as_mut().poll(&mut cx).is_pending(), "nothing is answered while the writer is parked");
    future
}

/// Waits for a queued call's reply.
fn finish<T>(mut future: Pending<T>) -> T {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::yield_now();
    }
}

/// Every settlement record of epochs 0..=5, and the planned-through mark.
#[derive(Debug, PartialEq)]
struct Snapshot {
    planned_through: u64,
    settlements: Vec<EpochSettlement>,
    payouts: Vec<Vec<PayoutRecord>>,
    bills: Vec<Vec<BillRecord>>,
    batches: Vec<Vec<BatchRecord>>,
    carries: Vec<Vec<Carry>>,
    by_id: Vec<Option<PayoutRecord>>,
}

fn snapshot(ledger: &Ledger) -> Snapshot {
    let epochs = 0..=5u64;
    let payouts: Vec<Vec<PayoutRecord>> = epochs.clone().map(|e| ledger.payouts(e).unwrap()).collect();
    let by_id = payouts.iter().flatten().map(|p| ledger.payout(&p.payout.id).unwrap()).collect();
    Snapshot {
        planned_through: ledger.planned_through().unwrap(),
        settlements: ledger.settlements().unwrap(),
        payouts,
        bills: epochs.clone().map(|e| ledger.bills(e).unwrap()).collect(),
        batches: epochs.clone().map(|e| ledger.batches(e).unwrap()).collect(),
        carries: epochs.map(|e| ledger.carries_into(e).unwrap()).collect(),
        by_id,
    }
}

/// What `payer` owes in USD according to the disk: what `State::load` rebuilds.
fn disk_owed(f: &Fixture, payer: &str) -> u128 {
    f.ledger.unsettled_owed(Some(payer)).unwrap().get(&(payer.to_owned(), USD.to_owned())).copied().unwrap_or(0)
}

/// The live writer holds exactly the exposure the disk implies: exactly the
/// room left under the limit is accepted, and not one unit more. (Uses up
/// that room.)
#[track_caller]
fn assert_live_exposure_matches_disk(f: &Fixture, seed: u8, payer: &str, limit: u128) {
    let owed = disk_owed(f, payer);
    assert!(owed <= limit, "{payer} owes {owed} on disk, over its limit of {limit}");
    let room = u64::try_from(limit - owed).unwrap();
    if room > 0 {
        let fill = f.pay(seed, "site-c", room).outcome;
        assert_eq!(
            fill,
            Outcome::Accepted,
            "{payer} owes {owed} of {limit} on disk, yet the writer refused {room} more"
        );
    }
    let over = f.pay(seed, "site-c", 1).outcome;
    assert_eq!(
        over,
        Outcome::CreditLimitExceeded,
        "{payer} owed {owed} of {limit} on disk before {room} more; the writer accepted one unit beyond the limit"
    );
}

// ---------------------------------------------------------------------------
// Plan builders.

fn evm_destination(payee: &str) -> PayoutDestination {
    PayoutDestination::Evm { address: [payee.bytes().last().unwrap_or(0); 20] }
}

fn iban() -> PayoutDestination {
    PayoutDestination::Iban { iban: "DE89370400440532013000".into(), bic: None }
}

fn payout(epoch: u64, payee: &str, asset: &str, rail: Rail, amount: u128, fee: u128) -> Payout {
    Payout {
        id: payout_id(epoch, payee, asset, rail),
        epoch,
        payee: payee.into(),
        asset: asset.into(),
        rail,
        destination: if rail == Rail::Evm { evm_destination(payee) } else { iban() },
        net_credit: amount + fee,
        fee,
        amount,
        iou_count: 1,
    }
}

fn bill(epoch: u64, payer: &str, asset: &str, amount: u128) -> Bill {
    let party = Party::Payer(payer.into());
    Bill { id: bill_id(epoch, &party, asset), epoch, party, asset: asset.into(), amount, iou_count: 1 }
}

fn carry(epoch_to: u64, payee: &str, amount: u128) -> Carry {
    Carry {
        epoch_to,
        payee: payee.into(),
        asset: USD.into(),
        amount,
        reason: CarryReason::BelowMinimum,
        source: format!("carry:{}:{payee}:{USD}:below-minimum", epoch_to - 1),
    }
}

fn plan(
    epoch: u64,
    mut payouts: Vec<Payout>,
    mut bills: Vec<Bill>,
    mut carries_out: Vec<Carry>,
    carries_in: &[&str],
) -> SettlementPlan {
    payouts.sort_by(|a, b| a.id.cmp(&b.id));
    bills.sort_by(|a, b| a.id.cmp(&b.id));
    carries_out.sort_by(|a, b| a.source.cmp(&b.source));
    let mut carries_in: Vec<String> = carries_in.iter().map(|s| (*s).to_owned()).collect();
    carries_in.sort();
    SettlementPlan { epoch, fee_bps: 100, payouts, bills, carries_out, carries_in, figures: vec![] }
}

fn batch(epoch: u64, index: u32, rail: Rail, asset: &str, payouts: &[&Payout]) -> RailBatch {
    RailBatch {
        epoch,
        index,
        id: format!("batch-{epoch}-{index}"),
        rail,
        asset: asset.into(),
        payout_ids: payouts.iter().map(|p| p.id.clone()).collect(),
    }
}

/// One batch per payout, in the plan's payout order (how the settler batches
/// when a transaction or file holds one payout).
fn batches_of(plan: &SettlementPlan) -> Vec<RailBatch> {
    plan.payouts.iter().enumerate().map(|(i, p)| batch(plan.epoch, i as u32, p.rail, &p.asset, &[p])).collect()
}

fn prepared(n: u8) -> BatchState {
    BatchState::EvmPrepared { nonce: u64::from(n), tx_hash: [n; 32], raw_tx: vec![n; 8], signed_for: String::new() }
}

fn mined(n: u8, gas_used: u64) -> BatchState {
    BatchState::EvmMined { tx_hash: [n; 32], block_number: 1_000 + u64::from(n), gas_used }
}

fn tx_reference(n: u8) -> String {
    format!("0x{}", hex::encode([n; 32]))
}

fn file_prepared(n: u8) -> BatchState {
    BatchState::FilePrepared { file_name: format!("pain001-{n}.xml"), sha256: [n; 32] }
}

fn file_written(n: u8) -> BatchState {
    BatchState::FileWritten { file_name: format!("pain001-{n}.xml"), sha256: [n; 32] }
}

#[track_caller]
fn assert_invalid(result: Result<AdminReply, AdminError>, needle: &str) {
    match result {
        Err(AdminError::Invalid(message)) => {
            assert!(message.contains(needle), "the refusal {message:?} should mention {needle:?}")
        }
        other => panic!("expected Invalid mentioning {needle:?}, got {other:?}"),
    }
}

const DONE: Result<AdminReply, AdminError> = Ok(AdminReply::Done);
const CHANGED: Result<AdminReply, AdminError> = Ok(AdminReply::BankStatus { changed: true });
const UNCHANGED: Result<AdminReply, AdminError> = Ok(AdminReply::BankStatus { changed: false });

fn planned(epoch: u64) -> Result<AdminReply, AdminError> {
    Ok(AdminReply::Planned { epoch })
}

// ---------------------------------------------------------------------------
// 1. Refusals.

#[test]
fn refused_plans_write_nothing() {
    let f = Fixture::new();
    assert_eq!(f.pay(1, "site-a", 100).outcome, Outcome::Accepted);
    let p_a = payout(1, "site-a", USD, Rail::Evm, 90, 1);
    let p_b = payout(1, "site-b", USD, Rail::Evm, 50, 0);
    let p_eur = payout(1, "site-c", EUR, Rail::Iso20022, 70, 0);
    let good_batches = vec![batch(1, 0, Rail::Evm, USD, &[&p_a, &p_b]), batch(1, 1, Rail::Iso20022, EUR, &[&p_eur])];
    let payouts = vec![p_a.clone(), p_b.clone(), p_eur.clone()];
    let good = plan(1, payouts.clone(), vec![bill(1, "bot-a", USD, 100)], vec![carry(2, "site-c", 5)], &[]);
    let empty = f.snapshot();
    assert_eq!(empty.planned_through, 0);
    let nothing_written = |f: &Fixture, case: &str| {
        assert_eq!(f.snapshot(), empty, "{case}: a refused plan wrote something");
        assert!(f.ledger.settlement(1).unwrap().is_none(), "{case}");
        for p in &payouts {
            assert!(f.ledger.payout(&p.id).unwrap().is_none(), "{case}: payout index written");
        }
    };

    // Epoch 1 is open.
    assert_invalid(f.record(&good, &good_batches), "not sealed");
    nothing_written(&f, "open epoch");

    assert_eq!(f.seal(), 1);
    assert_eq!(f.seal(), 2);
    // Epoch 2 is sealed, but epoch 1 comes first.
    assert_invalid(f.record(&plan(2, vec![], vec![], vec![], &[]), &[]), "planned in order");
    nothing_written(&f, "out of order");
    // Epoch 3 is open.
    assert_invalid(f.record(&plan(3, vec![], vec![], vec![], &[]), &[]), "not sealed");

    let b0 = batch(1, 0, Rail::Evm, USD, &[&p_a, &p_b]);
    let b1 = batch(1, 1, Rail::Iso20022, EUR, &[&p_eur]);
    let mut other_epoch_payout = p_b.clone();
    other_epoch_payout.epoch = 2;
    let without_eur = plan(1, vec![p_a.clone(), p_b.clone()], vec![], vec![], &[]);
    let cases: Vec<(&str, SettlementPlan, Vec<RailBatch>, &str)> = vec![
        ("payout in no batch", good.clone(), vec![b0.clone()], "in no batch"),
        (
            "payout in two batches",
            good.clone(),
            vec![b0.clone(), b1.clone(), batch(1, 2, Rail::Evm, USD, &[&p_a])],
            "in two batches",
        ),
        (
            "payout twice in one batch",
            good.clone(),
            vec![batch(1, 0, Rail::Evm, USD, &[&p_a, &p_b, &p_a]), b1.clone()],
            "in two batches",
        ),
        (
            "batch of the wrong rail",
            good.clone(),
            vec![b0.clone(), batch(1, 1, Rail::Evm, EUR, &[&p_eur])],
            "another rail",
        ),
        (
            "batch of the wrong asset",
            good.clone(),
            vec![b0.clone(), batch(1, 1, Rail::Iso20022, USD, &[&p_eur])],
            "another rail",
        ),
        ("batches out of order", good.clone(), vec![b1.clone(), b0.clone()], "malformed"),
        ("batch index skips", good.clone(), vec![b0.clone(), batch(1, 2, Rail::Iso20022, EUR, &[&p_eur])], "malformed"),
        (
            "batch of another epoch",
            good.clone(),
            vec![b0.clone(), batch(2, 1, Rail::Iso20022, EUR, &[&p_eur])],
            "malformed",
        ),
        ("empty batch", good.clone(), vec![b0.clone(), b1.clone(), batch(1, 2, Rail::Evm, USD, &[])], "malformed"),
        ("batch names an unknown payout", without_eur, vec![b0.clone(), b1.clone()], "does not have"),
        (
            "payout of another epoch",
            plan(1, vec![p_a.clone(), other_epoch_payout, p_eur.clone()], vec![], vec![], &[]),
            good_batches.clone(),
            "payout",
        ),
        (
            "carry beyond the next epoch",
            plan(1, payouts.clone(), vec![], vec![carry(3, "site-c", 5)], &[]),
            good_batches.clone(),
            "next epoch",
        ),
        (
            "carry into the same epoch",
            plan(1, payouts.clone(), vec![], vec![carry(1, "site-c", 5)], &[]),
            good_batches.clone(),
            "next epoch",
        ),
        (
            "stale carries in",
            plan(1, payouts.clone(), vec![], vec![], &["carry:0:site-a:USD:below-minimum"]),
            good_batches.clone(),
            "carries",
        ),
    ];
    for (case, plan, batches, needle) in cases {
        match f.record(&plan, &batches) {
            Err(AdminError::Invalid(message)) => {
                assert!(message.contains(needle), "{case}: {message:?} should mention {needle:?}")
            }
            other => panic!("{case}: expected Invalid, got {other:?}"),
        }
        nothing_written(&f, case);
    }

    // The good plan is recorded; a second plan of the same epoch is not.
    assert_eq!(f.record(&good, &good_batches), planned(1));
    let recorded = f.snapshot();
    assert_eq!(recorded.planned_through, 1);
    assert!(matches!(f.record(&good, &good_batches), Err(AdminError::AlreadyExists(_))));
    let different = plan(1, vec![], vec![], vec![], &[]);
    assert!(matches!(f.record(&different, &[]), Err(AdminError::AlreadyExists(_))));
    assert_eq!(f.snapshot(), recorded, "a refused second plan changed the first");

    // Epoch 2 must consume the carry epoch 1 sent it.
    assert_invalid(f.record(&plan(2, vec![], vec![], vec![], &[]), &[]), "carries");
    assert_eq!(f.snapshot(), recorded);
    let source = "carry:1:site-c:USD:below-minimum";
    assert_eq!(f.record(&plan(2, vec![], vec![], vec![carry(3, "site-c", 5)], &[source]), &[]), planned(2));
    assert_eq!(f.ledger.planned_through().unwrap(), 2);
}

// ---------------------------------------------------------------------------
// 2. A recorded plan.

#[test]
fn a_recorded_plan_reads_back_exactly() {
    let f = Fixture::new();
    for (seed, payee, amount) in
        [(1, "site-a", 600), (2, "site-a", 400), (2, "site-b", 80), (2, "site-b", 1), (2, "site-c", 250)]
    {
        assert_eq!(f.pay(seed, payee, amount).outcome, Outcome::Accepted);
    }
    f.seal();
    let plan1 =
        f.net_epoch(1, Rail::Evm, &[("site-a", evm_destination("site-a")), ("site-b", evm_destination("site-b"))]);
    // site-a: 1,000 less a 1% fee; site-b: 81 (fee rounds to 0); site-c has
    // no destination, so its 250 carries.
    let paid: Vec<(&str, u128, u128)> = plan1.payouts.iter().map(|p| (p.payee.as_str(), p.amount, p.fee)).collect();
    assert_eq!(paid.len(), 2);
    assert!(paid.contains(&("site-a", 990, 10)) && paid.contains(&("site-b", 81, 0)), "{paid:?}");
    assert_eq!(plan1.bills.len(), 2);
    assert_eq!(plan1.carries_out.len(), 1);
    let batches = batches_of(&plan1);
    assert_eq!(batches.len(), 2);

    let planned_at = f.advance_ms(1_234);
    assert_eq!(f.record(&plan1, &batches), planned(1));

    let expected = EpochSettlement {
        epoch: 1,
        status: SettlementStatus::Planned,
        fee_bps: 100,
        planned_at_ms: planned_at,
        updated_at_ms: planned_at,
        figures: plan1.figures.clone(),
        payout_count: 2,
        bill_count: 2,
        batch_count: 2,
        batches_open: 2,
        payouts_open: 2,
        gas_used: 0,
        rejected: vec![],
    };
    assert_eq!(f.settlement(1), expected);
    assert_eq!(f.ledger.settlements().unwrap(), vec![expected]);
    assert_eq!(f.ledger.planned_through().unwrap(), 1);
    let payouts: Vec<PayoutRecord> = plan1
        .payouts
        .iter()
        .enumerate()
        .map(|(i, p)| PayoutRecord { payout: p.clone(), batch_index: i as u32, state: PayoutState::Planned })
        .collect();
    assert_eq!(f.ledger.payouts(1).unwrap(), payouts);
    for record in &payouts {
        assert_eq!(f.ledger.payout(&record.payout.id).unwrap().as_ref(), Some(record));
    }
    assert_eq!(f.ledger.payout("Pnot-a-payout").unwrap(), None);
    assert_eq!(f.ledger.payout(&payout_id(2, "site-a", USD, Rail::Evm)).unwrap(), None);
    // Unlinked payers' bills hold their own credit.
    let holders = |party: &Party| match party {
        Party::Payer(payer) => vec![payer.clone()],
        Party::Payee(_) => vec![],
    };
    let bills: Vec<BillRecord> = plan1
        .bills
        .iter()
        .map(|b| BillRecord { bill: b.clone(), paid_at_ms: None, holders: holders(&b.party) })
        .collect();
    assert_eq!(f.ledger.bills(1).unwrap(), bills);
    let amounts: Vec<(Party, u128)> = bills.iter().map(|b| (b.bill.party.clone(), b.bill.amount)).collect();
    assert!(amounts.contains(&(Party::Payer("bot-a".into()), 600)), "{amounts:?}");
    assert!(amounts.contains(&(Party::Payer("bot-b".into()), 731)), "{amounts:?}");
    let batch_records: Vec<BatchRecord> =
        batches.iter().map(|b| BatchRecord { batch: b.clone(), state: BatchState::Planned }).collect();
    assert_eq!(f.ledger.batches(1).unwrap(), batch_records);
    assert_eq!(f.ledger.carries_into(2).unwrap(), plan1.carries_out);
    assert_eq!(plan1.carries_out[0].amount, 250);
    assert_eq!(plan1.carries_out[0].reason, CarryReason::NoDestination);
    // Nothing leaks into other epochs.
    assert!(f.ledger.payouts(2).unwrap().is_empty() && f.ledger.bills(0).unwrap().is_empty());
    assert!(f.ledger.carries_into(1).unwrap().is_empty() && f.ledger.carries_into(3).unwrap().is_empty());

    // Epoch 2 has no IOUs; its only credit is the carry, still without a
    // destination: no payouts, so the plan is settled as it is recorded.
    f.seal();
    let plan2 = f.net_epoch(2, Rail::Evm, &[]);
    assert!(plan2.payouts.is_empty() && plan2.bills.is_empty());
    assert_eq!(plan2.carries_in, vec!["carry:1:site-c:USD:no-destination".to_owned()]);
    assert_eq!(f.record(&plan2, &[]), planned(2));
    let record = f.settlement(2);
    assert_eq!(record.status, SettlementStatus::Settled);
    assert_eq!((record.payout_count, record.batch_count, record.batches_open, record.payouts_open), (0, 0, 0, 0));
    assert_eq!(f.ledger.carries_into(3).unwrap(), plan2.carries_out);
    assert_eq!(f.ledger.carries_into(3).unwrap()[0].amount, 250);
    assert_invalid(f.set_status(2, SettlementStatus::Submitting), "settled");
}

// ---------------------------------------------------------------------------
// 3. Batch transitions.

#[test]
fn evm_batches_mine_fail_and_resume() {
    let f = Fixture::new();
    f.seal();
    let p1 = payout(1, "site-a", USD, Rail::Evm, 100, 1);
    let p2 = payout(1, "site-b", USD, Rail::Evm, 200, 2);
    let p3 = payout(1, "site-c", USD, Rail::Evm, 300, 3);
    let batches = [batch(1, 0, Rail::Evm, USD, &[&p1, &p2]), batch(1, 1, Rail::Evm, USD, &[&p3])];
    assert_eq!(f.record(&plan(1, vec![p1.clone(), p2.clone(), p3.clone()], vec![], vec![], &[]), &batches), planned(1));

    // Preparing does not change the epoch's counters or status.
    assert_eq!(f.update(1, 0, prepared(1)), DONE);
    assert_eq!(f.ledger.batches(1).unwrap()[0].state, prepared(1));
    let record = f.settlement(1);
    assert_eq!((record.status, record.batches_open, record.payouts_open), (SettlementStatus::Planned, 2, 3));
    assert_eq!(f.payout_state(&p1.id), PayoutState::Planned);
    assert_eq!(f.set_status(1, SettlementStatus::Submitting), DONE);
    // Re-signing (a replacement transaction) is allowed; going back is not.
    assert_eq!(f.update(1, 0, prepared(2)), DONE);
    assert_invalid(f.update(1, 0, BatchState::Planned), "cannot go from evm-prepared to planned");
    assert_invalid(f.update(1, 0, file_written(1)), "is a evm batch and cannot become file-written");
    assert_invalid(f.update(1, 0, file_prepared(1)), "cannot become");
    assert_eq!(f.ledger.batches(1).unwrap()[0].state, prepared(2));

    let mined_at = f.advance_ms(500);
    assert_eq!(f.update(1, 0, mined(2, 21_000)), DONE);
    assert_eq!(f.payout_state(&p1.id), PayoutState::Settled(tx_reference(2)));
    assert_eq!(f.payout_state(&p2.id), PayoutState::Settled(tx_reference(2)));
    assert_eq!(f.payout_state(&p3.id), PayoutState::Planned);
    let record = f.settlement(1);
    assert_eq!(
        (record.status.clone(), record.batches_open, record.payouts_open, record.gas_used, record.updated_at_ms),
        (SettlementStatus::Submitting, 1, 1, 21_000, mined_at)
    );

    // The same update again is a no-op (not even the timestamp moves); a
    // mined batch takes nothing else.
    f.advance_ms(500);
    let before = f.snapshot();
    assert_eq!(f.update(1, 0, mined(2, 21_000)), DONE);
    assert_eq!(f.snapshot(), before);
    for next in [
        BatchState::Planned,
        prepared(3),
        mined(3, 5),
        mined(2, 21_001),
        file_prepared(1),
        file_written(1),
        BatchState::Failed("late".into()),
    ] {
        // File states are refused for their rail, the others for finality.
        let needle = if next.label().starts_with("file") { "cannot become" } else { "cannot go from evm-mined" };
        assert_invalid(f.update(1, 0, next), needle);
        assert_eq!(f.snapshot(), before);
    }

    // Planned to Planned is the identical update: a no-op.
    assert_eq!(f.update(1, 1, BatchState::Planned), DONE);
    assert_eq!(f.snapshot(), before);
    assert_eq!(f.update(1, 1, prepared(4)), DONE);
    assert_eq!(f.update(1, 1, BatchState::Failed("rpc timeout".into())), DONE);
    let record = f.settlement(1);
    assert_eq!(record.status, SettlementStatus::NeedsAttention("batch 1: rpc timeout".into()));
    assert_eq!((record.batches_open, record.payouts_open), (1, 1));
    assert_eq!(f.update(1, 1, BatchState::Failed("rpc down".into())), DONE);
    assert_eq!(f.settlement(1).status, SettlementStatus::NeedsAttention("batch 1: rpc down".into()));
    // Failed never goes back to Planned.
    assert_invalid(f.update(1, 1, BatchState::Planned), "cannot go from failed to planned");
    // A long reason is bounded.
    assert_eq!(f.update(1, 1, BatchState::Failed("x".repeat(10_000))), DONE);
    match f.settlement(1).status {
        SettlementStatus::NeedsAttention(reason) => assert_eq!(reason.len(), 256),
        other => panic!("{other:?}"),
    }

    // The resume finds the transaction mined: straight from Failed.
    assert_eq!(f.set_status(1, SettlementStatus::Submitting), DONE);
    assert_eq!(f.update(1, 1, mined(4, 30_000)), DONE);
    assert_eq!(f.payout_state(&p3.id), PayoutState::Settled(tx_reference(4)));
    let record = f.settlement(1);
    assert_eq!(
        (record.status.clone(), record.batches_open, record.payouts_open, record.gas_used),
        (SettlementStatus::Settled, 0, 0, 51_000)
    );
    assert_invalid(f.set_status(1, SettlementStatus::Submitting), "settled");
    assert_invalid(f.set_status(1, SettlementStatus::NeedsAttention("x".into())), "settled");

    // Unknown batches and epochs.
    assert!(matches!(f.update(1, 2, prepared(1)), Err(AdminError::NotFound(_))));
    assert!(matches!(f.update(9, 0, prepared(1)), Err(AdminError::NotFound(_))));
    assert!(matches!(f.set_status(9, SettlementStatus::Submitting), Err(AdminError::NotFound(_))));
}

#[test]
fn written_files_submit_their_payouts_and_bank_verdicts_settle_them() {
    let f = Fixture::new();
    f.seal();
    let e1 = payout(1, "site-a", EUR, Rail::Iso20022, 1_000, 10);
    let e2 = payout(1, "site-b", EUR, Rail::Iso20022, 2_000, 20);
    let e3 = payout(1, "site-c", EUR, Rail::Iso20022, 3_000, 30);
    let u1 = payout(1, "site-d", USD, Rail::Evm, 500, 5);
    let batches = [batch(1, 0, Rail::Iso20022, EUR, &[&e1, &e2, &e3]), batch(1, 1, Rail::Evm, USD, &[&u1])];
    let plan1 = plan(1, vec![e1.clone(), e2.clone(), e3.clone(), u1.clone()], vec![], vec![], &[]);
    assert_eq!(f.record(&plan1, &batches), planned(1));

    // No verdict before the payout is submitted, none for unknown payouts.
    assert_invalid(f.bank(&e1.id, Ok("MSG-1")), "planned");
    assert_invalid(f.bank(&e1.id, Err("AC04")), "planned");
    assert!(matches!(f.bank("Pnope", Ok("MSG-1")), Err(AdminError::NotFound(_))));

    assert_eq!(f.update(1, 0, file_prepared(1)), DONE);
    assert_invalid(f.update(1, 0, mined(1, 1)), "is a iso20022 batch and cannot become evm-mined");
    assert_invalid(f.update(1, 0, prepared(1)), "is a iso20022 batch and cannot become evm-prepared");
    assert_invalid(f.update(1, 0, BatchState::Planned), "cannot go from file-prepared to planned");
    assert_invalid(f.bank(&e1.id, Ok("MSG-1")), "planned");
    assert_eq!(f.update(1, 0, BatchState::Failed("outbox not writable".into())), DONE);
    assert_eq!(f.settlement(1).status, SettlementStatus::NeedsAttention("batch 0: outbox not writable".into()));
    assert_eq!(f.update(1, 0, file_prepared(1)), DONE);
    assert_eq!(f.update(1, 0, file_written(1)), DONE);
    for p in [&e1, &e2, &e3] {
        assert_eq!(f.payout_state(&p.id), PayoutState::Submitted);
    }
    let record = f.settlement(1);
    // Submitted is not final; the EVM batch is still open, so the flag stays.
    assert_eq!((record.batches_open, record.payouts_open), (1, 4));
    assert_eq!(record.status, SettlementStatus::NeedsAttention("batch 0: outbox not writable".into()));
    assert_invalid(f.update(1, 0, file_written(2)), "cannot go from file-written");
    assert_invalid(f.update(1, 0, BatchState::Failed("x".into())), "cannot go from file-written");

    // The last batch done with bank payouts outstanding: Submitted.
    assert_eq!(f.update(1, 1, mined(7, 40_000)), DONE);
    let record = f.settlement(1);
    assert_eq!((record.status.clone(), record.batches_open, record.payouts_open), (SettlementStatus::Submitted, 0, 3));
    // Submitted → Submitting by the driver is tolerated but re-derived.
    assert_eq!(f.set_status(1, SettlementStatus::Submitting), DONE);
    assert_eq!(f.settlement(1).status, SettlementStatus::Submitted);

    // Accepted.
    assert_eq!(f.bank(&e1.id, Ok("MSG-1")), CHANGED);
    assert_eq!(f.payout_state(&e1.id), PayoutState::Settled("MSG-1".into()));
    assert_eq!(f.settlement(1).payouts_open, 2);
    let before = f.snapshot();
    assert_eq!(f.bank(&e1.id, Ok("MSG-1")), UNCHANGED);
    assert_invalid(f.bank(&e1.id, Ok("MSG-2")), "settled");
    assert_eq!(f.snapshot(), before);

    // Rejected: the payout and its fee carry into the first unplanned epoch.
    assert_eq!(f.bank(&e2.id, Err("AC04 account closed")), CHANGED);
    assert_eq!(f.payout_state(&e2.id), PayoutState::Rejected("AC04 account closed".into()));
    let rejected_carry = Carry {
        epoch_to: 2,
        payee: "site-b".into(),
        asset: EUR.into(),
        amount: 2_020,
        reason: CarryReason::Rejected("AC04 account closed".into()),
        source: format!("rejected:{}", e2.id),
    };
    assert_eq!(f.ledger.carries_into(2).unwrap(), vec![rejected_carry.clone()]);
    let record = f.settlement(1);
    assert_eq!((record.status.clone(), record.payouts_open), (SettlementStatus::Submitted, 1));
    assert_eq!(record.rejected, vec![(EUR.to_owned(), 2_020)]);
    let before = f.snapshot();
    assert_eq!(f.bank(&e2.id, Err("AC04 account closed")), UNCHANGED);
    assert_invalid(f.bank(&e2.id, Err("AM05 duplicate")), "rejected");
    assert_invalid(f.bank(&e2.id, Ok("MSG-1")), "rejected");
    assert_eq!(f.snapshot(), before, "a repeated or conflicting verdict changed something");

    // The EVM payout was settled by its transaction: only that verdict is
    // the same, and no bank can reject it.
    let before = f.snapshot();
    assert_eq!(f.bank(&u1.id, Ok(&tx_reference(7))), UNCHANGED);
    assert_invalid(f.bank(&u1.id, Ok("MSG-1")), "settled");
    assert_invalid(f.bank(&u1.id, Err("AC04 account closed")), "settled");
    assert_eq!(f.snapshot(), before);

    // The last verdict settles the epoch; rejections add up per asset.
    assert_eq!(f.bank(&e3.id, Err("AM05 duplicate")), CHANGED);
    let record = f.settlement(1);
    assert_eq!((record.status.clone(), record.payouts_open, record.batches_open), (SettlementStatus::Settled, 0, 0));
    assert_eq!(record.rejected, vec![(EUR.to_owned(), 5_050)]);
    assert_eq!(f.ledger.carries_into(2).unwrap().len(), 2);
    assert_eq!(f.bank(&e3.id, Err("AM05 duplicate")), UNCHANGED);
    assert_eq!(f.settlement(1), record);

    // A bank may accept early and reject later: the rejection wins, once.
    assert_eq!(f.bank(&e1.id, Err("AC04 account closed")), CHANGED);
    assert_eq!(f.payout_state(&e1.id), PayoutState::Rejected("AC04 account closed".into()));
    let record = f.settlement(1);
    assert_eq!((record.status.clone(), record.payouts_open), (SettlementStatus::Settled, 0));
    assert_eq!(record.rejected, vec![(EUR.to_owned(), 6_060)]);
    let carries = f.ledger.carries_into(2).unwrap();
    assert_eq!(carries.len(), 3);
    assert!(carries.iter().any(|c| c.source == format!("rejected:{}", e1.id) && c.amount == 1_010));
    let before = f.snapshot();
    assert_eq!(f.bank(&e1.id, Err("AC04 account closed")), UNCHANGED);
    assert_invalid(f.bank(&e1.id, Ok("MSG-1")), "rejected");
    assert_eq!(f.snapshot(), before);
}

// ---------------------------------------------------------------------------
// 4. Rejections carry forward; stale plans are refused.

#[test]
fn a_rejection_makes_a_plan_built_before_it_stale() {
    let f = Fixture::new();
    let bank = [("site-a", iban())];
    assert_eq!(f.pay(2, "site-a", 1_000).outcome, Outcome::Accepted);
    f.seal();
    let plan1 = f.net_epoch(1, Rail::Iso20022, &bank);
    assert_eq!(plan1.payouts.len(), 1);
    let first = plan1.payouts[0].clone();
    assert_eq!((first.amount, first.fee), (990, 10));
    assert_eq!(f.record(&plan1, &batches_of(&plan1)), planned(1));
    assert_eq!(f.update(1, 0, file_written(1)), DONE);

    assert_eq!(f.pay(2, "site-a", 400).outcome, Outcome::Accepted);
    f.seal();
    // The settler reads epoch 2's carries (none yet) and nets...
    let stale = f.net_epoch(2, Rail::Iso20022, &bank);
    assert!(stale.carries_in.is_empty());
    // ...while the bank's rejection of epoch 1's payout lands in epoch 2.
    assert_eq!(f.bank(&first.id, Err("AC01 incorrect account number")), CHANGED);
    let carries = f.ledger.carries_into(2).unwrap();
    assert_eq!(carries.len(), 1);
    assert_eq!((carries[0].amount, carries[0].source.clone()), (1_000, format!("rejected:{}", first.id)));
    let before = f.snapshot();
    assert_invalid(f.record(&stale, &batches_of(&stale)), "carries");
    assert_eq!(f.snapshot(), before);
    assert!(f.ledger.settlement(2).unwrap().is_none());

    // Planned again, the carry is paid with epoch 2's own credit.
    let fresh = f.net_epoch(2, Rail::Iso20022, &bank);
    assert_eq!(fresh.carries_in, vec![format!("rejected:{}", first.id)]);
    assert_eq!(f.record(&fresh, &batches_of(&fresh)), planned(2));
    let second = f.ledger.payouts(2).unwrap()[0].payout.clone();
    assert_eq!((second.net_credit, second.fee, second.amount), (1_400, 14, 1_386));

    // A rejection now lands in epoch 3, the first unplanned one.
    assert_eq!(f.update(2, 0, file_written(2)), DONE);
    assert_eq!(f.bank(&second.id, Err("AC04 account closed")), CHANGED);
    assert_eq!(f.ledger.carries_into(2).unwrap().len(), 1);
    let into_three = f.ledger.carries_into(3).unwrap();
    assert_eq!(into_three.len(), 1);
    assert_eq!((into_three[0].epoch_to, into_three[0].amount), (3, 1_400));
    assert_eq!(f.settlement(2).status, SettlementStatus::Settled);
}

// ---------------------------------------------------------------------------
// 5. Credit exposure.

#[test]
fn a_bill_holds_credit_until_paid_across_restarts() {
    let f = Fixture::new();
    let owed = |f: &Fixture| disk_owed(f, "bot-a");
    assert_eq!(f.pay(1, "site-a", 900).outcome, Outcome::Accepted);
    assert_eq!(f.pay(1, "site-a", 101).outcome, Outcome::CreditLimitExceeded);
    f.seal();
    // Sealed but unplanned: epoch 1's IOUs still count.
    assert_eq!(f.pay(1, "site-a", 101).outcome, Outcome::CreditLimitExceeded);

    let plan1 = f.net_epoch(1, Rail::Evm, &[("site-a", evm_destination("site-a"))]);
    assert_eq!(plan1.bills, vec![bill(1, "bot-a", USD, 900)]);
    assert_eq!(f.record(&plan1, &batches_of(&plan1)), planned(1));
    // Planned: the IOUs no longer count, the bill does.
    assert_eq!(f.pay(1, "site-a", 101).outcome, Outcome::CreditLimitExceeded);
    let at_limit = f.pay(1, "site-a", 100);
    assert_eq!((at_limit.outcome, at_limit.epoch), (Outcome::Accepted, 2));
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
    assert_eq!(owed(&f), LIMIT_A);

    // The writer rebuilds the same exposure from disk.
    let f = f.restart();
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
    assert_eq!(owed(&f), LIMIT_A);

    // Collecting the bill releases its credit.
    let bill = plan1.bills[0].id.clone();
    let paid_at = f.advance_ms(2_000);
    assert_eq!(f.settle(SettlementCommand::MarkBillPaid { epoch: 1, bill_id: bill.clone() }), DONE);
    assert_eq!(f.ledger.bills(1).unwrap()[0].paid_at_ms, Some(paid_at));
    assert_eq!(owed(&f), 100);
    assert_eq!(f.pay(1, "site-a", 900).outcome, Outcome::Accepted);
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
    // Paying twice changes nothing (not even the date); unknown bills are not found.
    f.advance_ms(2_000);
    assert_eq!(f.settle(SettlementCommand::MarkBillPaid { epoch: 1, bill_id: bill.clone() }), DONE);
    assert_eq!(f.ledger.bills(1).unwrap()[0].paid_at_ms, Some(paid_at));
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
    assert!(matches!(
        f.settle(SettlementCommand::MarkBillPaid { epoch: 1, bill_id: "Bnope".into() }),
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        f.settle(SettlementCommand::MarkBillPaid { epoch: 2, bill_id: bill }),
        Err(AdminError::NotFound(_))
    ));

    let f = f.restart();
    assert_eq!(owed(&f), LIMIT_A);
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
    // And the other payer was never touched by bot-a's bill.
    assert_eq!(f.pay(2, "site-a", 1).outcome, Outcome::Accepted);
}

// ---------------------------------------------------------------------------
// 6. Everything survives a restart.

/// Two epochs in every state at once: mined, written, rejected, accepted,
/// failed, a paid bill, carries in both directions.
fn busy_ledger(f: &Fixture) {
    assert_eq!(f.pay(1, "site-a", 300).outcome, Outcome::Accepted);
    assert_eq!(f.pay(2, "site-b", 700).outcome, Outcome::Accepted);
    f.seal();
    let e1 = payout(1, "site-a", EUR, Rail::Iso20022, 300, 3);
    let e2 = payout(1, "site-b", EUR, Rail::Iso20022, 690, 7);
    let u1 = payout(1, "site-c", USD, Rail::Evm, 40, 0);
    let batches = [batch(1, 0, Rail::Iso20022, EUR, &[&e1, &e2]), batch(1, 1, Rail::Evm, USD, &[&u1])];
    let bills = vec![bill(1, "bot-a", USD, 300), bill(1, "bot-b", USD, 700)];
    let plan1 = plan(1, vec![e1.clone(), e2.clone(), u1.clone()], bills.clone(), vec![carry(2, "site-c", 3)], &[]);
    assert_eq!(f.record(&plan1, &batches), planned(1));
    assert_eq!(f.update(1, 0, file_written(1)), DONE);
    assert_eq!(f.update(1, 1, prepared(3)), DONE);
    assert_eq!(f.update(1, 1, mined(3, 55_555)), DONE);
    assert_eq!(f.bank(&e1.id, Ok("MSG-9")), CHANGED);
    assert_eq!(f.bank(&e2.id, Err("AC04 account closed")), CHANGED);
    assert_eq!(f.settle(SettlementCommand::MarkBillPaid { epoch: 1, bill_id: bills[1].id.clone() }), DONE);

    assert_eq!(f.pay(1, "site-a", 200).outcome, Outcome::Accepted);
    f.seal();
    let p = payout(2, "site-a", USD, Rail::Evm, 200, 0);
    let sources = ["carry:1:site-c:USD:below-minimum".to_owned(), format!("rejected:{}", e2.id)];
    let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
    let plan2 = plan(2, vec![p.clone()], vec![bill(2, "bot-a", USD, 200)], vec![carry(3, "site-c", 3)], &sources);
    assert_eq!(f.record(&plan2, &[batch(2, 0, Rail::Evm, USD, &[&p])]), planned(2));
    assert_eq!(f.update(2, 0, BatchState::Failed("nonce too low".into())), DONE);
}

#[test]
fn settlement_state_reads_back_identically_after_a_restart() {
    let f = Fixture::new();
    busy_ledger(&f);
    let before = f.snapshot();
    assert_eq!(before.planned_through, 2);
    assert_eq!(before.settlements.len(), 2);
    assert_eq!(before.settlements[0].status, SettlementStatus::Settled);
    assert!(matches!(before.settlements[1].status, SettlementStatus::NeedsAttention(_)));
    let owed_before = f.ledger.unsettled_owed(None).unwrap();

    let f = f.restart();
    assert_eq!(f.snapshot(), before);
    assert_eq!(f.ledger.unsettled_owed(None).unwrap(), owed_before);
    // A read-only view of the same directory agrees.
    {
        let ro = Ledger::open(f.dir.path(), LedgerOptions { read_only: true, ..LedgerOptions::default() }).unwrap();
        assert_eq!(snapshot(&ro), before);
    }

    // The restarted writer knows where settlement stands.
    let accepted = before.payouts[1].iter().find(|p| p.state == PayoutState::Settled("MSG-9".into())).unwrap();
    assert_eq!(f.bank(&accepted.payout.id, Ok("MSG-9")), UNCHANGED);
    assert_eq!(f.update(1, 1, mined(3, 55_555)), DONE);
    assert!(matches!(f.record(&plan(1, vec![], vec![], vec![], &[]), &[]), Err(AdminError::AlreadyExists(_))));
    assert!(matches!(f.record(&plan(2, vec![], vec![], vec![], &[]), &[]), Err(AdminError::AlreadyExists(_))));
    assert_invalid(f.record(&plan(3, vec![], vec![], vec![], &[]), &[]), "not sealed");
    assert_eq!(f.snapshot(), before);
    // bot-a owes its open epoch-1 and epoch-2 bills: 500 of its 1,000.
    assert_eq!(f.pay(1, "site-a", 501).outcome, Outcome::CreditLimitExceeded);
    assert_eq!(f.pay(1, "site-a", 500).outcome, Outcome::Accepted);
    // And it carries on where it stopped.
    assert_eq!(f.update(2, 0, mined(8, 1)), DONE);
    assert_eq!(f.settlement(2).status, SettlementStatus::Settled);
}

// ---------------------------------------------------------------------------
// 7. Linking payers.

#[test]
fn link_payer_checks_and_persists() {
    let f = Fixture::new();
    let link = |payer: &str, payee: Option<&str>| AdminCommand::LinkPayer {
        payer_id: payer.into(),
        payee_id: payee.map(str::to_owned),
    };
    assert!(matches!(f.admin(link("bot-a", Some("nobody"))), Err(AdminError::NotFound(_))));
    assert!(matches!(f.admin(link("ghost", Some("site-a"))), Err(AdminError::NotFound(_))));
    assert_eq!(f.ledger.payer("bot-a").unwrap().unwrap().settles_with, None);
    assert_eq!(f.admin(link("bot-a", Some("site-a"))), DONE);
    assert_eq!(f.ledger.payer("bot-a").unwrap().unwrap().settles_with.as_deref(), Some("site-a"));

    let f = f.restart();
    let payer = f.ledger.payer("bot-a").unwrap().unwrap();
    assert_eq!(payer.settles_with.as_deref(), Some("site-a"));
    assert_eq!(payer.credit_limit(USD), LIMIT_A, "linking keeps the rest of the payer");
    assert_eq!(f.ledger.payer("bot-b").unwrap().unwrap().settles_with, None);
    // A linked payer nets under its payee: no bill for bot-a when site-a
    // earns more than bot-a spends.
    assert_eq!(f.pay(2, "site-a", 500).outcome, Outcome::Accepted);
    assert_eq!(f.pay(1, "site-b", 200).outcome, Outcome::Accepted);
    f.seal();
    let netted = f.net_epoch(1, Rail::Evm, &[]);
    let parties: Vec<&Party> = netted.bills.iter().map(|b| &b.party).collect();
    assert_eq!(parties, vec![&Party::Payer("bot-b".into())]);

    assert_eq!(f.admin(link("bot-a", None)), DONE);
    assert_eq!(f.ledger.payer("bot-a").unwrap().unwrap().settles_with, None);
    let f = f.restart();
    assert_eq!(f.ledger.payer("bot-a").unwrap().unwrap().settles_with, None);
}

// ---------------------------------------------------------------------------
// Group commits: steps queued together see each other.

#[test]
fn steps_in_one_group_commit_see_each_other() {
    let f = Fixture::new();
    let e1 = payout(1, "site-a", EUR, Rail::Iso20022, 300, 3);
    let u1 = payout(1, "site-b", USD, Rail::Evm, 40, 0);
    let batches = vec![batch(1, 0, Rail::Iso20022, EUR, &[&e1]), batch(1, 1, Rail::Evm, USD, &[&u1])];
    let plan1 = plan(1, vec![e1.clone(), u1.clone()], vec![], vec![], &[]);
    let source = format!("rejected:{}", e1.id);
    let p2 = payout(2, "site-a", EUR, Rail::Iso20022, 303, 0);
    let plan2 = plan(2, vec![p2.clone()], vec![], vec![], &[&source]);
    let stale2 = plan(2, vec![p2.clone()], vec![], vec![], &[]);
    let batches2 = vec![batch(2, 0, Rail::Iso20022, EUR, &[&p2])];

    let first = f.park_writer();
    let queued = vec![
        f.enqueue_admin(AdminCommand::SealEpoch),
        f.enqueue_settle(SettlementCommand::RecordPlan { plan: Box::new(plan1), batches }),
        f.enqueue_settle(SettlementCommand::UpdateBatch { epoch: 1, index: 0, state: file_written(1) }),
        f.enqueue_settle(SettlementCommand::RecordBankStatus { payout_id: e1.id.clone(), verdict: Err("AC04".into()) }),
        f.enqueue_settle(SettlementCommand::UpdateBatch { epoch: 1, index: 1, state: mined(5, 777) }),
        f.enqueue_admin(AdminCommand::SealEpoch),
        f.enqueue_settle(SettlementCommand::RecordPlan { plan: Box::new(stale2), batches: batches2.clone() }),
        f.enqueue_settle(SettlementCommand::RecordPlan { plan: Box::new(plan2), batches: batches2 }),
        f.enqueue_settle(SettlementCommand::UpdateBatch { epoch: 2, index: 0, state: file_written(2) }),
        f.enqueue_settle(SettlementCommand::RecordBankStatus { payout_id: p2.id.clone(), verdict: Ok("MSG".into()) }),
    ];
    assert_eq!(f.w().queue_depth(), queued.len());
    f.release_writer();
    assert_eq!(finish(first), DONE);
    let replies: Vec<Result<AdminReply, AdminError>> = queued.into_iter().map(finish).collect();
    assert!(matches!(replies[0], Ok(AdminReply::Sealed { .. })), "{:?}", replies[0]);
    assert_eq!(replies[1], planned(1));
    assert_eq!(replies[2], DONE);
    assert_eq!(replies[3], CHANGED);
    assert_eq!(replies[4], DONE);
    assert!(matches!(replies[5], Ok(AdminReply::Sealed { .. })), "{:?}", replies[5]);
    assert_invalid(replies[6].clone(), "carries");
    assert_eq!(replies[7], planned(2));
    assert_eq!(replies[8], DONE);
    assert_eq!(replies[9], CHANGED);

    let check = |f: &Fixture| {
        let one = f.settlement(1);
        assert_eq!((one.status, one.gas_used, one.rejected), (SettlementStatus::Settled, 777, vec![(EUR.into(), 303)]));
        assert_eq!(f.settlement(2).status, SettlementStatus::Settled);
        assert_eq!(f.payout_state(&e1.id), PayoutState::Rejected("AC04".into()));
        assert_eq!(f.payout_state(&u1.id), PayoutState::Settled(tx_reference(5)));
        assert_eq!(f.payout_state(&p2.id), PayoutState::Settled("MSG".into()));
        assert_eq!(f.ledger.carries_into(2).unwrap().len(), 1);
        assert_eq!(f.ledger.planned_through().unwrap(), 2);
    };
    check(&f);
    let f = f.restart();
    check(&f);
}

// ---------------------------------------------------------------------------
// A refusal found late in `record_plan` still writes nothing.

/// Bills whose sum overflows a payer's exposure are refused after the checks
/// that precede staging; nothing of the plan may reach RocksDB, and the
/// writer's state (planned-through, exposure) must not move. (A regression
/// test: this refusal once committed the staged plan anyway.)
#[test]
fn a_plan_refused_for_overflowing_bills_writes_nothing() {
    let f = Fixture::new();
    assert_eq!(f.pay(2, "site-a", 10).outcome, Outcome::Accepted);
    f.seal();
    let p = payout(1, "site-a", USD, Rail::Evm, 10, 0);
    let mut second = bill(1, "bot-b", USD, 1);
    second.id = "B-second-bill-of-bot-b".into();
    let plan1 = plan(1, vec![p.clone()], vec![bill(1, "bot-b", USD, u128::MAX), second], vec![], &[]);
    let before = f.snapshot();
    assert_invalid(f.record(&plan1, &[batch(1, 0, Rail::Evm, USD, &[&p])]), "overflow");
    assert_eq!(f.ledger.settlement(1).unwrap(), None, "a refused plan left its epoch record behind");
    assert_eq!(f.ledger.payout(&p.id).unwrap(), None, "a refused plan left its payout behind");
    assert_eq!(f.snapshot(), before);
    // The writer still considers epoch 1 unplanned, and bot-b's IOU unsettled.
    assert_eq!(disk_owed(&f, "bot-b"), 10);
    assert_eq!(
        f.record(
            &plan(1, vec![p.clone()], vec![bill(1, "bot-b", USD, 10)], vec![], &[]),
            &[batch(1, 0, Rail::Evm, USD, &[&p])]
        ),
        planned(1)
    );
    assert_eq!(disk_owed(&f, "bot-b"), 10);
    assert_live_exposure_matches_disk(&f, 2, "bot-b", LIMIT_B);
}

// ---------------------------------------------------------------------------
// Regressions: defects found in review, each fixed; the tests keep them fixed.

/// A batch's states belong to its rail: an EVM batch never becomes a bank
/// file and a bank file is never mined (otherwise a "written" EVM batch
/// would mark on-chain payouts submitted, for a bank report to settle).
#[test]
fn a_batch_only_takes_states_of_its_own_rail() {
    let f = Fixture::new();
    f.seal();
    let u = payout(1, "site-a", USD, Rail::Evm, 100, 0);
    let e = payout(1, "site-b", EUR, Rail::Iso20022, 100, 0);
    let batches = [batch(1, 0, Rail::Evm, USD, &[&u]), batch(1, 1, Rail::Iso20022, EUR, &[&e])];
    assert_eq!(f.record(&plan(1, vec![u.clone(), e.clone()], vec![], vec![], &[]), &batches), planned(1));
    let before = f.snapshot();
    for (index, state) in [(0, file_prepared(1)), (0, file_written(1)), (1, prepared(1)), (1, mined(1, 1))] {
        let label = state.label();
        assert!(
            matches!(f.update(1, index, state), Err(AdminError::Invalid(_))),
            "batch {index} ({:?}) accepted {label}",
            batches[index as usize].rail
        );
        assert_eq!(f.snapshot(), before);
    }
}

/// Appends, a seal and the plan of the sealed epoch queued into one group:
/// the plan was netted from disk without this group's IOUs, and
/// `record_plan` releases credit by scanning aggregates on disk, so the
/// writer refuses such a plan ("not yet durable"); planned again after the
/// group commits, credit is released exactly once, live and after restart.
#[test]
fn a_plan_in_the_group_of_its_epochs_ious_releases_their_credit() {
    let f = Fixture::new();
    let p = payout(1, "site-a", USD, Rail::Evm, 500, 0);
    let plan1 = plan(1, vec![p.clone()], vec![bill(1, "bot-a", USD, 500)], vec![], &[]);
    let again = plan1.clone();
    let item = f.iou(1, "site-a", 500);
    let first = f.park_writer();
    let w = f.w();
    let append = enqueue(async move { w.append(vec![item]).await });
    let seal = f.enqueue_admin(AdminCommand::SealEpoch);
    let record = f.enqueue_settle(SettlementCommand::RecordPlan {
        plan: Box::new(plan1),
        batches: vec![batch(1, 0, Rail::Evm, USD, &[&p])],
    });
    assert_eq!(f.w().queue_depth(), 3);
    f.release_writer();
    assert_eq!(finish(first), DONE);
    let appended = finish(append).unwrap();
    assert_eq!((appended[0].outcome, appended[0].epoch), (Outcome::Accepted, 1));
    assert!(matches!(finish(seal), Ok(AdminReply::Sealed { .. })));
    assert_invalid(finish(record), "not yet durable");
    assert_eq!(f.ledger.settlement(1).unwrap(), None);
    assert_eq!(f.record(&again, &[batch(1, 0, Rail::Evm, USD, &[&p])]), planned(1));

    // On disk bot-a owes its bill, 500 of its 1,000.
    let owed = f.ledger.unsettled_owed(Some("bot-a")).unwrap();
    assert_eq!(owed.get(&("bot-a".to_owned(), USD.to_owned())), Some(&500));
    // The live writer must agree with the disk: another 500 fits.
    let live = f.pay(1, "site-a", 500).outcome;
    if live != Outcome::Accepted {
        let f = f.restart();
        let reloaded = f.pay(1, "site-a", 500).outcome;
        panic!(
            "the live writer answered {live:?} to an IOU within bot-a's limit (500 owed of 1,000 on disk); \
             a restarted writer, reading the same disk, answers {reloaded:?}"
        );
    }
    let f = f.restart();
    assert_eq!(
        f.ledger.unsettled_owed(Some("bot-a")).unwrap().get(&("bot-a".to_owned(), USD.to_owned())),
        Some(&1_000)
    );
    assert_eq!(f.pay(1, "site-a", 1).outcome, Outcome::CreditLimitExceeded);
}

/// A bill of a linked account holds the credit of the payers linked to it
/// when the plan is recorded (`BillRecord::holders`). Unlinking a payer
/// afterwards moves no credit: the live writer and a restarted one agree.
#[test]
fn unlinking_a_payer_with_an_open_bill_keeps_live_exposure_equal_to_disk() {
    let f = Fixture::new();
    let link = |payer: &str, payee: Option<&str>| AdminCommand::LinkPayer {
        payer_id: payer.into(),
        payee_id: payee.map(str::to_owned),
    };
    assert_eq!(f.admin(link("bot-a", Some("site-a"))), DONE);
    assert_eq!(f.pay(1, "site-b", 300).outcome, Outcome::Accepted);
    f.seal();
    let plan1 = f.net_epoch(1, Rail::Evm, &[("site-b", evm_destination("site-b"))]);
    let parties: Vec<&Party> = plan1.bills.iter().map(|b| &b.party).collect();
    assert_eq!(parties, vec![&Party::Payee("site-a".into())]);
    assert_eq!(f.record(&plan1, &batches_of(&plan1)), planned(1));
    assert_eq!(disk_owed(&f, "bot-a"), 300, "the linked account's bill holds bot-a's credit");

    assert_eq!(f.admin(link("bot-a", None)), DONE);
    assert_live_exposure_matches_disk(&f, 1, "bot-a", LIMIT_A);
}

/// The other direction (invariant 5): bot-a is linked to an account with an
/// open bill it never held. Bills record their holders when planned, so
/// collecting the bill releases only the payers that held it, and bot-a can
/// never owe more than its limit.
#[test]
fn linking_a_payer_to_an_account_with_an_open_bill_never_exceeds_its_limit() {
    let f = Fixture::new();
    let link =
        |payer: &str, payee: &str| AdminCommand::LinkPayer { payer_id: payer.into(), payee_id: Some(payee.into()) };
    assert_eq!(f.admin(link("bot-b", "site-a")), DONE);
    assert_eq!(f.pay(2, "site-b", 300).outcome, Outcome::Accepted);
    f.seal();
    let plan1 = f.net_epoch(1, Rail::Evm, &[("site-b", evm_destination("site-b"))]);
    assert_eq!(plan1.bills.len(), 1);
    assert_eq!(plan1.bills[0].party, Party::Payee("site-a".into()));
    assert_eq!(f.record(&plan1, &batches_of(&plan1)), planned(1));

    assert_eq!(f.pay(1, "site-c", 800).outcome, Outcome::Accepted);
    assert_eq!(f.admin(link("bot-a", "site-a")), DONE);
    let bill = plan1.bills[0].id.clone();
    assert_eq!(f.settle(SettlementCommand::MarkBillPaid { epoch: 1, bill_id: bill }), DONE);
    assert_eq!(disk_owed(&f, "bot-a"), 800);

    let outcome = f.pay(1, "site-c", 500).outcome;
    let owed = disk_owed(&f, "bot-a");
    assert!(
        outcome != Outcome::Accepted || owed <= LIMIT_A,
        "the writer accepted 500 more from bot-a: it now owes {owed} against a limit of {LIMIT_A}"
    );
    assert_live_exposure_matches_disk(&f, 1, "bot-a", LIMIT_A);
}

// ---------------------------------------------------------------------------
// 8. Property: the counters always agree with the records.

#[derive(Clone, Debug)]
enum Step {
    /// (batch index 0..=3, where 3 does not exist; state kind; variant)
    Batch(u32, u8, u8),
    /// (payout 0..=5, where 5 does not exist; accepted; variant)
    Bank(usize, bool, u8),
    Status(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u32..4, 0u8..6, 0u8..2).prop_map(|(i, k, v)| Step::Batch(i, k, v)),
        3 => (0usize..6, any::<bool>(), 0u8..2).prop_map(|(p, ok, v)| Step::Bank(p, ok, v)),
        1 => any::<bool>().prop_map(Step::Status),
    ]
}

fn batch_state(kind: u8, variant: u8) -> BatchState {
    match kind {
        0 => BatchState::Planned,
        1 => prepared(variant + 1),
        2 => mined(variant + 1, 1_000 * u64::from(variant + 1)),
        3 => file_prepared(variant + 1),
        4 => file_written(variant + 1),
        _ => BatchState::Failed(format!("failure {variant}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn counters_agree_with_batch_and_payout_records(steps in proptest::collection::vec(step(), 1..48)) {
        let f = Fixture::new();
        f.seal();
        let payouts = [
            payout(1, "site-a", USD, Rail::Evm, 10, 1),
            payout(1, "site-b", USD, Rail::Evm, 20, 2),
            payout(1, "site-c", EUR, Rail::Iso20022, 30, 3),
            payout(1, "site-d", EUR, Rail::Iso20022, 40, 4),
            payout(1, "site-e", USD, Rail::Evm, 50, 5),
        ];
        let batches = [
            batch(1, 0, Rail::Evm, USD, &[&payouts[0], &payouts[1]]),
            batch(1, 1, Rail::Iso20022, EUR, &[&payouts[2], &payouts[3]]),
            batch(1, 2, Rail::Evm, USD, &[&payouts[4]]),
        ];
        prop_assert_eq!(f.record(&plan(1, payouts.to_vec(), vec![], vec![], &[]), &batches), planned(1));
        let mut gas: u64 = 0;
        for step in steps {
            f.advance_ms(1);
            let before = f.snapshot();
            let old_batches: HashMap<u32, BatchState> =
                f.ledger.batches(1).unwrap().into_iter().map(|b| (b.batch.index, b.state)).collect();
            let result = match &step {
                Step::Batch(index, kind, variant) => f.update(1, *index, batch_state(*kind, *variant)),
                Step::Bank(index, ok, variant) => {
                    let id = payouts.get(*index).map_or("Punknown".to_owned(), |p| p.id.clone());
                    let text = format!("verdict {variant}");
                    f.bank(&id, if *ok { Ok(&text) } else { Err(&text) })
                }
                Step::Status(submitting) => f.set_status(
                    1,
                    if *submitting { SettlementStatus::Submitting } else { SettlementStatus::NeedsAttention("op".into()) },
                ),
            };
            if result.is_err() {
                prop_assert_eq!(&f.snapshot(), &before, "refused {:?} ({:?}) changed something", step, result);
            } else if let Step::Batch(index, kind, variant) = &step
                && *kind == 2
                && !old_batches[index].is_done()
            {
                gas += 1_000 * u64::from(*variant + 1);
            }

            let record = f.settlement(1);
            let batch_records = f.ledger.batches(1).unwrap();
            let payout_records = f.ledger.payouts(1).unwrap();
            let batches_open = batch_records.iter().filter(|b| !b.state.is_done()).count() as u64;
            let payouts_open = payout_records.iter().filter(|p| !p.state.is_final()).count() as u64;
            prop_assert_eq!(record.batches_open, batches_open, "after {:?}", step);
            prop_assert_eq!(record.payouts_open, payouts_open, "after {:?}", step);
            prop_assert_eq!(
                record.status == SettlementStatus::Settled,
                batches_open == 0 && payouts_open == 0,
                "status {:?} with {} batches and {} payouts open after {:?}", record.status, batches_open, payouts_open, step
            );
            if batches_open == 0 && payouts_open > 0 {
                prop_assert_eq!(&record.status, &SettlementStatus::Submitted);
            }
            prop_assert_eq!(record.gas_used, gas);
            // A payout moves only with its batch: planned until the batch is done.
            for p in &payout_records {
                let state = &batch_records[p.batch_index as usize].state;
                prop_assert_eq!(state.is_done(), p.state != PayoutState::Planned, "{:?} in a {} batch", p.state, state.label());
            }
        }
    }
}
