//! The journal: a hash chain of every control-plane change, with who made it.
//!
//! The IOU log proves what payers promised. Everything else that moves or
//! redirects money — an account, a key, a credit limit, a payout
//! destination, a seal, a settlement plan, a batch's progress, a bank's
//! verdict — is decided by the same single writer and recorded here, in the
//! `journal` column family, as it is applied:
//!
//! ```text
//! key:   seq u64 BE (from 1, contiguous)
//! value: version u8 (1) ‖ at_ms u64 ‖ log_head u64 ‖ prev_hash 32 ‖ hash 32 ‖ body
//! body:  bincode JournalBody { actor, action, effects }
//! hash:  SHA-256("tally-jrnl-v1" ‖ prev_hash ‖ seq ‖ at_ms ‖ log_head ‖ body)
//! ```
//!
//! - `actor` says who ([`tally_core::Actor`]), `at_ms` when (the writer's
//!   clock, never behind the ledger's time mark), `log_head` how far the IOU
//!   log had come when the change was decided: the two chains are ordered
//!   against each other, so a seal's journal entry names the last IOU of the
//!   epoch it sealed.
//! - `action` says what was asked (the admin command; for a plan, its
//!   epoch, policy and batch limits, the rest being effects).
//! - `effects` are the exact writes the change made to the `accounts`,
//!   `epochs`, `settlement` and `meta` column families, in order. Those
//!   column families are therefore a *materialised view of the journal*:
//!   `tally ledger verify` replays every effect and compares the result with
//!   what is stored, key by key, so a rewritten payout destination, plan
//!   figure or credit limit is reported, as a rewritten IOU is.
//!
//! A change with many effects (a plan with a million payouts) is split into
//! entries of at most [`JOURNAL_EFFECTS_PER_ENTRY_MAX`] effects: the first
//! carries the action, the rest [`Action::Continued`]. All of them are
//! written in the same `WriteBatch` as the effects themselves, so the view and
//! its journal never disagree on disk.
//!
//! The bincode encoding of every enum here is by variant index: variants are
//! only ever appended, never reordered or removed, or old journals would be
//! misread.

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_core::settlement::{BatchLimits, SettlementPolicy};
use tally_core::{Actor, GENESIS_HASH, LedgerId, RecordHash};

use crate::LedgerError;
use crate::command::{AdminCommand, Notice, SettlementCommand};
use crate::layout::{CF_ACCOUNTS, CF_EPOCHS, CF_JOURNAL, CF_META, CF_SETTLEMENT, bincode_config};
use crate::store::Ledger;

/// Domain tag of a journal entry's hash.
pub const JOURNAL_DOMAIN_TAG: &[u8; 13] = b"tally-jrnl-v1";
/// The version byte that opens every journal entry.
pub const JOURNAL_ENTRY_V1: u8 = 1;
/// Header bytes before the body.
pub const JOURNAL_HEADER_LEN: usize = 1 + 8 + 8 + 32 + 32;
/// Most effects in one journal entry; a change with more continues in the next.
pub const JOURNAL_EFFECTS_PER_ENTRY_MAX: usize = 4_096;

/// A column family the journal's effects may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EffectCf {
    Accounts,
    Epochs,
    Settlement,
    Meta,
}

impl EffectCf {
    pub const ALL: [EffectCf; 4] = [EffectCf::Accounts, EffectCf::Epochs, EffectCf::Settlement, EffectCf::Meta];

    pub fn name(self) -> &'static str {
        match self {
            EffectCf::Accounts => CF_ACCOUNTS,
            EffectCf::Epochs => CF_EPOCHS,
            EffectCf::Settlement => CF_SETTLEMENT,
            EffectCf::Meta => CF_META,
        }
    }
}

/// One write a change made: `Some(value)` is a put, `None` a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    pub cf: EffectCf,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// What a journal entry records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// A new ledger: its id and format.
    Genesis {
        ledger_id: LedgerId,
        format: u32,
    },
    /// A ledger of an older format was migrated; the effects are the whole
    /// state as migrated (from then on it is audited against this snapshot).
    Migrated {
        from_format: u32,
        to_format: u32,
    },
    /// The writer opened epoch 1 of a new ledger.
    OpenedFirstEpoch,
    /// An admin command or settlement step, as asked (never a plan: see
    /// [`Action::RecordPlan`]).
    Admin(AdminCommand),
    /// A settlement plan: the policy and batch limits it was netted and cut
    /// with. Its payouts, bills, carries and batches are the effects.
    RecordPlan {
        epoch: u64,
        policy: SettlementPolicy,
        limits: BatchLimits,
    },
    /// More effects of the entry before.
    Continued,
    Notice(Notice),
}

impl Action {
    /// How the journal records `command`: plans by their inputs, the rest as asked.
    pub fn of(command: &AdminCommand) -> Action {
        match command {
            AdminCommand::Settlement(SettlementCommand::RecordPlan { plan, policy, limits, .. }) => {
                Action::RecordPlan { epoch: plan.epoch, policy: policy.clone(), limits: *limits }
            }
            // A notice is a fact about the engine, which the audit reads as such.
            AdminCommand::RecordNotice(notice) => Action::Notice(notice.clone()),
            other => Action::Admin(other.clone()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalBody {
    pub actor: Actor,
    pub action: Action,
    pub effects: Vec<Effect>,
}

/// One decoded journal entry.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalEntry {
    pub seq: u64,
    pub at_ms: u64,
    /// The IOU log's last sequence number when the change was decided.
    pub log_head: u64,
    pub prev_hash: RecordHash,
    pub hash: RecordHash,
    pub body: JournalBody,
}

/// The chain's tip: the last entry's sequence number and hash (`(0, zeros)` when empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalHead {
    pub seq: u64,
    pub hash: RecordHash,
    pub at_ms: u64,
}

impl JournalHead {
    pub const EMPTY: JournalHead = JournalHead { seq: 0, hash: GENESIS_HASH, at_ms: 0 };
}

/// The entry hash over its header fields and encoded body.
pub fn entry_hash(prev_hash: &RecordHash, seq: u64, at_ms: u64, log_head: u64, body: &[u8]) -> RecordHash {
    let mut hasher = Sha256::new();
    hasher.update(JOURNAL_DOMAIN_TAG);
    hasher.update(prev_hash);
    hasher.update(seq.to_be_bytes());
    hasher.update(at_ms.to_be_bytes());
    hasher.update(log_head.to_be_bytes());
    hasher.update(body);
    hasher.finalize().into()
}

/// Decodes one stored entry; the hash is read, not checked (the audit checks it).
pub fn decode_entry(key: &[u8], value: &[u8]) -> Result<(JournalEntry, RecordHash), LedgerError> {
    let corrupt = |what: &str| LedgerError::Corruption(format!("journal entry {}: {what}", hex::encode(key)));
    let seq = u64::from_be_bytes(key.try_into().map_err(|_| corrupt("key is not 8 bytes"))?);
    if value.len() < JOURNAL_HEADER_LEN {
        return Err(corrupt("shorter than its header"));
    }
    if value[0] != JOURNAL_ENTRY_V1 {
        return Err(corrupt(&format!("unknown version byte {}", value[0])));
    }
    let at_ms = u64::from_be_bytes(value[1..9].try_into().expect("8 bytes"));
    let log_head = u64::from_be_bytes(value[9..17].try_into().expect("8 bytes"));
    let prev_hash: RecordHash = value[17..49].try_into().expect("32 bytes");
    let hash: RecordHash = value[49..81].try_into().expect("32 bytes");
    let body_bytes = &value[JOURNAL_HEADER_LEN..];
    let (body, read): (JournalBody, usize) = bincode::serde::decode_from_slice(body_bytes, bincode_config())
        .map_err(|e| corrupt(&format!("body does not decode: {e}")))?;
    if read != body_bytes.len() {
        return Err(corrupt("trailing bytes after the body"));
    }
    let computed = entry_hash(&prev_hash, seq, at_ms, log_head, body_bytes);
    Ok((JournalEntry { seq, at_ms, log_head, prev_hash, hash, body }, computed))
}

/// One change to journal: who made it, what was asked, and what it wrote.
pub struct Change<'a> {
    pub actor: &'a Actor,
    pub action: Action,
    pub effects: Vec<Effect>,
}

/// Puts the change's effects into `batch` and journals them, in entries of
/// at most [`JOURNAL_EFFECTS_PER_ENTRY_MAX`] effects chained after `head`, at
/// `at_ms` with the IOU log at `log_head`. Returns the new head. Nothing is
/// written until the batch is.
pub fn append(
    ledger: &Ledger,
    batch: &mut WriteBatch,
    (head, at_ms, log_head): (JournalHead, u64, u64),
    change: Change<'_>,
) -> Result<JournalHead, LedgerError> {
    let Change { actor, action, effects } = change;
    assert!(actor.is_bounded(), "actors are bounded by their constructors");
    for effect in &effects {
        let cf = ledger.cf(effect.cf.name());
        match &effect.value {
            Some(value) => batch.put_cf(cf, &effect.key, value),
            None => batch.delete_cf(cf, &effect.key),
        }
    }
    let mut head = head;
    let mut action = Some(action);
    let mut remaining = effects.into_iter().peekable();
    // An action without effects (a notice, a repeated step) still gets its entry.
    loop {
        let chunk: Vec<Effect> = remaining.by_ref().take(JOURNAL_EFFECTS_PER_ENTRY_MAX).collect();
        let body =
            JournalBody { actor: actor.clone(), action: action.take().unwrap_or(Action::Continued), effects: chunk };
        let body = bincode::serde::encode_to_vec(&body, bincode_config()).expect("in-memory encoding cannot fail");
        let seq = head.seq.checked_add(1).ok_or_else(|| LedgerError::Corruption("journal sequence overflow".into()))?;
        let hash = entry_hash(&head.hash, seq, at_ms, log_head, &body);
        let mut value = Vec::with_capacity(JOURNAL_HEADER_LEN + body.len());
        value.push(JOURNAL_ENTRY_V1);
        value.extend_from_slice(&at_ms.to_be_bytes());
        value.extend_from_slice(&log_head.to_be_bytes());
        value.extend_from_slice(&head.hash);
        value.extend_from_slice(&hash);
        value.extend_from_slice(&body);
        batch.put_cf(ledger.cf(CF_JOURNAL), seq.to_be_bytes(), value);
        head = JournalHead { seq, hash, at_ms };
        if remaining.peek().is_none() {
            return Ok(head);
        }
    }
}

impl Ledger {
    /// The journal's last entry (`JournalHead::EMPTY` when there is none).
    pub fn journal_head(&self) -> Result<JournalHead, LedgerError> {
        let mut iter = self.db.iterator_cf(self.cf(CF_JOURNAL), rocksdb::IteratorMode::End);
        match iter.next() {
            None => Ok(JournalHead::EMPTY),
            Some(item) => {
                let (key, value) = item?;
                let (entry, computed) = decode_entry(&key, &value)?;
                // What the next entry chains to: checked on every load, like the log's head.
                if computed != entry.hash {
                    return Err(LedgerError::Corruption(format!(
                        "the last journal entry ({}) does not match its hash; run `tally ledger verify`",
                        entry.seq
                    )));
                }
                Ok(JournalHead { seq: entry.seq, hash: entry.hash, at_ms: entry.at_ms })
            }
        }
    }

    /// Up to `limit` journal entries from `seq_from` on, in order (for `tally journal`).
    pub fn journal(&self, seq_from: u64, limit: usize) -> Result<Vec<JournalEntry>, LedgerError> {
        let start = seq_from.to_be_bytes();
        let mode = rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_JOURNAL), mode).take(limit) {
            let (key, value) = item?;
            out.push(decode_entry(&key, &value)?.0);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bind_every_field() {
        let body = JournalBody {
            actor: Actor::admin_token("127.0.0.1:1"),
            action: Action::Notice(Notice::EngineStarted { verify_signatures: true, version: "0".into() }),
            effects: vec![Effect { cf: EffectCf::Accounts, key: b"k".to_vec(), value: Some(b"v".to_vec()) }],
        };
        let bytes = bincode::serde::encode_to_vec(&body, bincode_config()).unwrap();
        let hash = entry_hash(&GENESIS_HASH, 1, 5, 9, &bytes);
        let mut value = vec![JOURNAL_ENTRY_V1];
        value.extend_from_slice(&5u64.to_be_bytes());
        value.extend_from_slice(&9u64.to_be_bytes());
        value.extend_from_slice(&GENESIS_HASH);
        value.extend_from_slice(&hash);
        value.extend_from_slice(&bytes);
        let (entry, computed) = decode_entry(&1u64.to_be_bytes(), &value).unwrap();
        assert_eq!((entry.seq, entry.at_ms, entry.log_head, entry.hash, computed), (1, 5, 9, hash, hash));
        assert_eq!(entry.body, body);
        assert_ne!(hash, entry_hash(&GENESIS_HASH, 1, 6, 9, &bytes));
        assert_ne!(hash, entry_hash(&GENESIS_HASH, 1, 5, 10, &bytes));
        assert_ne!(hash, entry_hash(&GENESIS_HASH, 2, 5, 9, &bytes));
        // A flipped body byte either fails to decode or no longer matches the hash.
        let mut damaged = value.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        if let Ok((entry, computed)) = decode_entry(&1u64.to_be_bytes(), &damaged) {
            assert_ne!(entry.hash, computed);
        }
        assert!(decode_entry(&1u64.to_be_bytes(), &value[..40]).is_err());
        let mut unknown = value;
        unknown[0] = 9;
        assert!(decode_entry(&1u64.to_be_bytes(), &unknown).is_err());
    }
}
