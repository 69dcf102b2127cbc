//! One group commit under construction, and what later groups must see of it.
//!
//! A [`Group`] collects everything the writer decides between two hand-overs
//! to the committer: the `WriteBatch` (log records, nonce entries, batch
//! records, journal entries and their effects), the replay answers of the IOUs
//! it accepted, and its aggregates, summed per `(epoch, payer, payee, asset)`
//! in memory so RocksDB sees one merge operand per pair per group.
//!
//! Control-plane writes are *staged* per command ([`Group::stage`]): they join
//! the batch, and the journal, only if the command succeeds, so a refused
//! command leaves no trace. Later commands of the same group read earlier ones'
//! writes through the group's overlay ([`Group::staged_get`]) before they are
//! readable from RocksDB.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;
use rocksdb::WriteBatch;
use tally_core::{CommitmentId, Nonce, PublicKeyBytes, SignedIou};

use crate::LedgerError;
use crate::journal::{Effect, EffectCf};
use crate::layout::{AggregateValue, aggregate_key, aggregate_key_into};
use crate::state::FastMap;

pub(crate) type NonceKey = (PublicKeyBytes, Nonce);

/// What a group has accepted so far: replay answers for IOUs that repeat
/// inside the same group, before any of it is on disk.
pub(crate) struct Staged {
    pub(crate) commitment: CommitmentId,
    pub(crate) epoch: u64,
    pub(crate) charge: u64,
    /// The accepted IOU's evidence (replays compare the IOUs in it, not how they were signed).
    pub(crate) evidence: Vec<u8>,
}

/// A group handed to the committer and not yet reported done: what later
/// groups must see of it before it is readable from RocksDB.
pub(crate) struct InFlight {
    pub(crate) staged: FastMap<NonceKey, Staged>,
    pub(crate) batches: HashMap<[u8; 40], [u8; 32]>,
}

/// One group commit under construction.
pub(crate) struct Group {
    pub(crate) batch: WriteBatch,
    pub(crate) staged: FastMap<NonceKey, Staged>,
    /// Roots of the batch records this group writes, by `batch_key`.
    pub(crate) batches: HashMap<[u8; 40], [u8; 32]>,
    pub(crate) aggregates: GroupAggregates,
    /// Reused to encode each log record (the batch copies it).
    pub(crate) scratch: Vec<u8>,
    /// Accepted IOUs, dropped by the committer: their strings were allocated
    /// by the gRPC threads, and freeing memory another thread allocated was
    /// a sixth of this thread's time in the profile.
    pub(crate) spent: Vec<SignedIou>,
    pub(crate) new_keys: Vec<VerifyingKey>,
    /// The group's time: `max(clock, time mark)`, never behind anything the
    /// ledger has recorded.
    pub(crate) now_ms: u64,
    /// Whether the group records anything (an IOU or a journal entry): only
    /// then does its time become the ledger's new time mark.
    pub(crate) records: bool,
    /// Control-plane writes of earlier commands in this group (`None` is a
    /// delete), which later commands must see before they reach RocksDB.
    overlay: HashMap<(EffectCf, Vec<u8>), Option<Vec<u8>>>,
    /// The current command's writes, in order, until it succeeds.
    effects: Vec<Effect>,
    /// Where each of the current command's keys was last written in `effects`.
    effects_index: HashMap<(EffectCf, Vec<u8>), usize>,
}

impl Group {
    pub(crate) fn new(pending_ious: usize, now_ms: u64) -> Group {
        Group {
            // ~0.5 KiB per IOU: sized up front, the batch is not copied as it grows.
            batch: WriteBatch::with_capacity_bytes(pending_ious.saturating_mul(GROUP_BYTES_PER_IOU)),
            staged: FastMap::with_capacity_and_hasher(pending_ious, Default::default()),
            batches: HashMap::new(),
            aggregates: GroupAggregates::default(),
            scratch: Vec::new(),
            spent: Vec::with_capacity(pending_ious),
            new_keys: Vec::new(),
            now_ms,
            records: false,
            overlay: HashMap::new(),
            effects: Vec::new(),
            effects_index: HashMap::new(),
        }
    }

    /// Stages one control-plane write of the current command.
    pub(crate) fn stage(&mut self, cf: EffectCf, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.effects_index.insert((cf, key.clone()), self.effects.len());
        self.effects.push(Effect { cf, key, value });
    }

    /// What this group holds for `key`: the current command's last write,
    /// else an earlier command's; `None` when the group has not touched it
    /// (read RocksDB), `Some(None)` when it was deleted.
    pub(crate) fn staged_get(&self, cf: EffectCf, key: &[u8]) -> Option<Option<&[u8]>> {
        let lookup = (cf, key.to_vec());
        if let Some(&at) = self.effects_index.get(&lookup) {
            return Some(self.effects[at].value.as_deref());
        }
        self.overlay.get(&lookup).map(|value| value.as_deref())
    }

    /// Every value this group holds under `prefix` of `cf` (current command last), for scans.
    pub(crate) fn staged_with_prefix(&self, cf: EffectCf, prefix: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut out: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        for ((effect_cf, key), value) in &self.overlay {
            if *effect_cf == cf && key.starts_with(prefix) {
                out.insert(key.clone(), value.clone());
            }
        }
        for effect in &self.effects {
            if effect.cf == cf && effect.key.starts_with(prefix) {
                out.insert(effect.key.clone(), effect.value.clone());
            }
        }
        out.into_iter().collect()
    }

    /// The current command succeeded: its writes become the group's (the
    /// caller journals the returned effects, which puts them in the batch).
    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        self.effects_index.clear();
        let effects = std::mem::take(&mut self.effects);
        for effect in &effects {
            self.overlay.insert((effect.cf, effect.key.clone()), effect.value.clone());
        }
        effects
    }

    /// The current command was refused: its writes vanish.
    pub(crate) fn discard_effects(&mut self) {
        self.effects.clear();
        self.effects_index.clear();
    }

    /// Whether the current command has staged anything (it must stage nothing before it may refuse).
    pub(crate) fn has_effects(&self) -> bool {
        !self.effects.is_empty()
    }
}

/// Bytes a group's `WriteBatch` takes per IOU (log record, nonce entry,
/// merges), to size it once.
const GROUP_BYTES_PER_IOU: usize = 512;

/// What a group adds per `(epoch, payer, payee, asset)`, summed in memory so
/// RocksDB sees one merge operand per pair and order per group, not one per IOU.
#[derive(Default)]
pub(crate) struct GroupAggregates {
    /// By-payer aggregate key → (the sum, the same pair's by-payee key).
    pub(crate) sums: FastMap<Vec<u8>, (AggregateValue, Vec<u8>)>,
    /// Reused to build the lookup key: an allocation only for a new pair.
    scratch: Vec<u8>,
}

impl GroupAggregates {
    pub(crate) fn add(
        &mut self,
        epoch: u64,
        payer: &str,
        payee: &str,
        asset: &str,
        amount: u64,
    ) -> Result<(), LedgerError> {
        self.scratch.clear();
        aggregate_key_into(&mut self.scratch, epoch, payer, payee, asset);
        let add = AggregateValue { sum: u128::from(amount), count: 1 };
        let overflow = || LedgerError::Corruption("aggregate overflow".into());
        match self.sums.get_mut(self.scratch.as_slice()) {
            Some((value, _)) => *value = value.checked_add(add).ok_or_else(overflow)?,
            None => {
                let by_payee = aggregate_key(epoch, payee, payer, asset);
                self.sums.insert(self.scratch.clone(), (add, by_payee));
            }
        }
        Ok(())
    }

    /// Whether the group holds IOUs of `epoch`.
    pub(crate) fn has_epoch(&self, epoch: u64) -> bool {
        self.sums.keys().any(|key| key.starts_with(&epoch.to_be_bytes()))
    }
}
