//! The writer's in-memory state, and how it is rebuilt from disk.
//!
//! Everything here is derived from the database: the heads of the two hash
//! chains (the last log record, the last journal entry), the time mark (the
//! later of their times), the open epoch (the last epoch record), accounts,
//! query tokens, the last planned epoch, and each payer's unsettled total per
//! asset (its aggregates in epochs not yet planned, plus its open bills).
//! Nothing is persisted twice. After a crash, or after a failed write, the
//! writer throws its state away and calls [`State::load`] again, so memory
//! can never drift from what is durable.

use std::collections::HashMap;

use tally_core::{Asset, Payee, Payer, PublicKeyBytes, RecordHash};

use crate::LedgerError;
use crate::journal::JournalHead;
use crate::layout::{EpochRecord, EpochStatus};
use crate::store::Ledger;

/// The hot path's maps (looked up once or more per IOU): foldhash, several
/// times cheaper than SipHash here, still seeded per map against crafted keys.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub struct State {
    pub head_seq: u64,
    pub head_hash: RecordHash,
    pub journal_head: JournalHead,
    /// The latest time the ledger has recorded (Unix ms): the last log
    /// record's `accepted_at_ms` or the last journal entry's `at_ms`,
    /// whichever is later. The writer never judges time below it.
    pub time_mark_ms: u64,
    /// The open epoch; `None` only on a brand-new ledger, before the writer
    /// opens epoch 1.
    pub open_epoch: Option<EpochRecord>,
    pub assets: FastMap<String, Asset>,
    pub payers: FastMap<String, Payer>,
    pub key_owner: FastMap<PublicKeyBytes, String>,
    pub payees: FastMap<String, Payee>,
    /// payer id → asset → what it owes and has not settled: its IOUs in
    /// unplanned epochs plus its open bills.
    pub exposure: FastMap<String, FastMap<String, u128>>,
    /// `(payer, asset)` pairs whose exposure changed since the writer last
    /// published them (`crate::exposure`); a payer's run of IOUs adds one entry.
    pub exposure_changed: Vec<(String, String)>,
    /// The highest epoch whose settlement plan is recorded (0: none).
    pub planned_through: u64,
    /// Query token name → the SHA-256 it is stored under (revoked ones included:
    /// a name is never reused).
    pub tokens: FastMap<String, [u8; 32]>,
}

impl State {
    pub fn load(ledger: &Ledger) -> Result<State, LedgerError> {
        let (head_seq, head_hash) = ledger.head()?;
        let journal_head = ledger.journal_head()?;
        let head_at_ms = match ledger.record(head_seq)? {
            Some(record) => record.accepted_at_ms,
            None => 0,
        };
        let epochs = ledger.epochs()?;
        let open_epoch = epochs.last().cloned();
        if let Some(open) = &open_epoch
            && open.status != EpochStatus::Open
        {
            return Err(LedgerError::Corruption(format!("the last epoch ({}) is not open", open.epoch)));
        }
        let mut state = State {
            head_seq,
            head_hash,
            journal_head,
            time_mark_ms: head_at_ms.max(journal_head.at_ms),
            open_epoch,
            assets: ledger.assets()?.into_iter().map(|a| (a.code.clone(), a)).collect(),
            payers: ledger.payers()?.into_iter().map(|p| (p.id.clone(), p)).collect(),
            key_owner: ledger.key_owners()?.into_iter().collect(),
            payees: ledger.payees()?.into_iter().map(|p| (p.id.clone(), p)).collect(),
            exposure: FastMap::default(),
            exposure_changed: Vec::new(),
            planned_through: ledger.planned_through()?,
            tokens: ledger.query_tokens()?.into_iter().map(|(digest, token)| (token.name, digest)).collect(),
        };
        for ((payer, asset), owed) in ledger.unsettled_owed(None)? {
            state.set_exposure(&payer, &asset, owed);
        }
        Ok(state)
    }

    /// What `payer` owes in `asset`, unsettled.
    pub fn exposure(&self, payer: &str, asset: &str) -> u128 {
        self.exposure.get(payer).and_then(|by_asset| by_asset.get(asset)).copied().unwrap_or(0)
    }

    pub fn set_exposure(&mut self, payer: &str, asset: &str, owed: u128) {
        if self.exposure_changed.last().is_none_or(|(p, a)| p != payer || a != asset) {
            self.exposure_changed.push((payer.to_owned(), asset.to_owned()));
        }
        match self.exposure.get_mut(payer) {
            Some(by_asset) => match by_asset.get_mut(asset) {
                Some(slot) => *slot = owed,
                None => {
                    by_asset.insert(asset.to_owned(), owed);
                }
            },
            None => {
                let mut by_asset = FastMap::default();
                by_asset.insert(asset.to_owned(), owed);
                self.exposure.insert(payer.to_owned(), by_asset);
            }
        }
    }
}
