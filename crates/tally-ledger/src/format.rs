//! The ledger's on-disk format: what version a data directory holds, a new
//! ledger's genesis, and the migration of older formats.
//!
//! What is on disk is users' data, so a format change is versioned. The
//! `meta` column family says which format a ledger is in:
//!
//! | key | value |
//! |---|---|
//! | `format` | u32 BE: [`FORMAT_CURRENT`] |
//! | `ledger_id` | 16 bytes ([`tally_core::LedgerId`]) |
//! | `created_at_ms` | u64 BE: genesis, or the migration that adopted an older ledger |
//! | `log_format2_from_seq` | u64 BE: the first log sequence number written in record format 2 |
//! | `migrated_from` | u32 BE, only on a migrated ledger: the format it had |
//!
//! Format 1 (Tally before the journal) had no `meta` column family. Opening
//! one for writing migrates it, in one atomic, fsynced write:
//!
//! 1. account and settlement records whose shape changed are rewritten
//!    (payers gain `revoked_keys`, payees a `status`, bank batch states the
//!    creation time their files were stamped with, which format 1 took from
//!    the epoch's seal);
//! 2. a ledger id is drawn and the `meta` records are written;
//! 3. the journal starts with [`Action::Migrated`] entries whose effects are
//!    the whole migrated state, so from then on every change is audited
//!    against that snapshot.
//!
//! Log records are never rewritten (the log is append-only and hash-chained):
//! format-1 records keep their layout and hash, and new records are written
//! in format 2 from `log_format2_from_seq` on (`crate::layout`).
//!
//! Opening a format-1 ledger read-only (`tally ledger verify`) is refused
//! with a message saying how to migrate it; a ledger written by a newer
//! format than this build knows is refused for reading and writing alike.
//! Nothing is ever misread.

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use tally_core::settlement::{BatchState, RailBatch};
use tally_core::{Actor, LedgerId, Payee, PayeeStatus, Payer, PayerStatus, PublicKeyBytes};

use crate::LedgerError;
use crate::journal::{self, Action, Effect, EffectCf, JournalHead};
use crate::layout::*;
use crate::store::Ledger;

/// The format this build writes and reads.
pub const FORMAT_CURRENT: u32 = 2;
/// The oldest format this build migrates.
pub const FORMAT_OLDEST_MIGRATED: u32 = 1;

pub const META_FORMAT: &[u8] = b"format";
pub const META_LEDGER_ID: &[u8] = b"ledger_id";
pub const META_CREATED_AT_MS: &[u8] = b"created_at_ms";
pub const META_LOG_FORMAT2_FROM_SEQ: &[u8] = b"log_format2_from_seq";
pub const META_MIGRATED_FROM: &[u8] = b"migrated_from";

/// What a data directory holds, before anything is written.
enum Found {
    /// Nothing at all: a new ledger.
    Empty,
    /// A ledger without `meta`: format 1.
    Format1,
    Current(Meta),
}

fn u32_value(bytes: &[u8], what: &str) -> Result<u32, LedgerError> {
    Ok(u32::from_be_bytes(bytes.try_into().map_err(|_| LedgerError::Corruption(format!("meta {what}")))?))
}

fn u64_value(bytes: &[u8], what: &str) -> Result<u64, LedgerError> {
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| LedgerError::Corruption(format!("meta {what}")))?))
}

impl Ledger {
    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.db.get_cf(self.cf(CF_META), key)?)
    }

    fn has_any(&self, cf: &str) -> Result<bool, LedgerError> {
        match self.db.iterator_cf(self.cf(cf), IteratorMode::Start).next() {
            None => Ok(false),
            Some(item) => item.map(|_| true).map_err(LedgerError::from),
        }
    }

    fn read_meta(&self) -> Result<Found, LedgerError> {
        let Some(format) = self.meta_get(META_FORMAT)? else {
            for cf in COLUMN_FAMILIES {
                if self.has_any(cf)? {
                    return Ok(Found::Format1);
                }
            }
            return Ok(Found::Empty);
        };
        let format = u32_value(&format, "format")?;
        if format > FORMAT_CURRENT {
            return Err(LedgerError::Unavailable(format!(
                "this ledger is format {format}, written by a newer Tally; this build reads formats up to \
                 {FORMAT_CURRENT}: upgrade Tally to open it"
            )));
        }
        if format != FORMAT_CURRENT {
            return Err(LedgerError::Corruption(format!("meta says format {format}, which no Tally ever wrote")));
        }
        let required = |key: &[u8]| -> Result<Vec<u8>, LedgerError> {
            self.meta_get(key)?
                .ok_or_else(|| LedgerError::Corruption(format!("meta lacks {}", String::from_utf8_lossy(key))))
        };
        let ledger_id = LedgerId(
            required(META_LEDGER_ID)?.try_into().map_err(|_| LedgerError::Corruption("meta ledger_id".into()))?,
        );
        Ok(Found::Current(Meta {
            format,
            ledger_id,
            created_at_ms: u64_value(&required(META_CREATED_AT_MS)?, "created_at_ms")?,
            log_format2_from_seq: u64_value(&required(META_LOG_FORMAT2_FROM_SEQ)?, "log_format2_from_seq")?,
            migrated_from: self.meta_get(META_MIGRATED_FROM)?.map(|v| u32_value(&v, "migrated_from")).transpose()?,
        }))
    }

    /// Reads the format, creating a new ledger's genesis or migrating an
    /// older one when opened for writing. Called once by [`Ledger::open`].
    pub(crate) fn settle_format(&self, now_ms: u64) -> Result<Meta, LedgerError> {
        match self.read_meta()? {
            Found::Current(meta) => Ok(meta),
            Found::Empty if self.is_read_only() => {
                Err(LedgerError::Unavailable("the directory holds no ledger yet (nothing to read)".into()))
            }
            Found::Format1 if self.is_read_only() => Err(LedgerError::format_1_read_only()),
            Found::Empty => self.genesis(now_ms),
            Found::Format1 => self.migrate_from_1(now_ms),
        }
    }

    fn genesis(&self, now_ms: u64) -> Result<Meta, LedgerError> {
        let meta = Meta {
            format: FORMAT_CURRENT,
            ledger_id: random_ledger_id()?,
            created_at_ms: now_ms,
            log_format2_from_seq: 1,
            migrated_from: None,
        };
        let mut batch = WriteBatch::default();
        let action = Action::Genesis { ledger_id: meta.ledger_id, format: meta.format };
        journal::append(
            self,
            &mut batch,
            (JournalHead::EMPTY, now_ms, 0),
            journal::Change { actor: &Actor::Engine, action, effects: meta_effects(&meta) },
        )?;
        self.write_synced(batch)?;
        tracing::info!(ledger_id = %meta.ledger_id, "created a new ledger");
        Ok(meta)
    }

    fn migrate_from_1(&self, now_ms: u64) -> Result<Meta, LedgerError> {
        let (head_seq, _) = self.head()?;
        let head_at_ms = match self.record(head_seq)? {
            Some(record) => record.accepted_at_ms,
            None => 0,
        };
        // Never stamp the migration before the last IOU it adopts.
        let at_ms = now_ms.max(head_at_ms);
        let meta = Meta {
            format: FORMAT_CURRENT,
            ledger_id: random_ledger_id()?,
            created_at_ms: at_ms,
            log_format2_from_seq: head_seq + 1,
            migrated_from: Some(1),
        };
        let sealed_at = self.epoch_seal_times()?;
        let mut effects: Vec<Effect> = Vec::new();
        let mut rewritten = 0usize;
        for item in self.db.iterator_cf(self.cf(CF_ACCOUNTS), IteratorMode::Start) {
            let (key, value) = item?;
            let value = if key.starts_with(ACCOUNT_PAYER_PREFIX) {
                rewritten += 1;
                encode_bincode(&Payer::from(decode_bincode::<PayerV1>("format-1 payer record", &value)?))
            } else if key.starts_with(ACCOUNT_PAYEE_PREFIX) {
                rewritten += 1;
                encode_bincode(&Payee::from(decode_bincode::<PayeeV1>("format-1 payee record", &value)?))
            } else {
                value.to_vec()
            };
            effects.push(Effect { cf: EffectCf::Accounts, key: key.to_vec(), value: Some(value) });
        }
        for item in self.db.iterator_cf(self.cf(CF_EPOCHS), IteratorMode::Start) {
            let (key, value) = item?;
            effects.push(Effect { cf: EffectCf::Epochs, key: key.to_vec(), value: Some(value.to_vec()) });
        }
        for item in self.db.iterator_cf(self.cf(CF_SETTLEMENT), IteratorMode::Start) {
            let (key, value) = item?;
            let value = if key.first() == Some(&b'R') {
                rewritten += 1;
                let old: BatchRecordV1 = decode_bincode("format-1 batch record", &value)?;
                let created_at_ms = sealed_at.get(&old.batch.epoch).copied().ok_or_else(|| {
                    LedgerError::Corruption(format!("batch of epoch {} whose epoch is missing", old.batch.epoch))
                })?;
                encode_bincode(&tally_core::settlement::BatchRecord {
                    batch: old.batch,
                    state: old.state.into_current(created_at_ms),
                })
            } else {
                value.to_vec()
            };
            effects.push(Effect { cf: EffectCf::Settlement, key: key.to_vec(), value: Some(value) });
        }
        let adopted = effects.len();
        effects.extend(meta_effects(&meta));
        let mut batch = WriteBatch::default();
        let action = Action::Migrated { from_format: 1, to_format: FORMAT_CURRENT };
        journal::append(
            self,
            &mut batch,
            (JournalHead::EMPTY, at_ms, head_seq),
            journal::Change { actor: &Actor::Engine, action, effects },
        )?;
        self.write_synced(batch)?;
        tracing::warn!(
            ledger_id = %meta.ledger_id,
            records_adopted = adopted,
            records_rewritten = rewritten,
            log_records = head_seq,
            "migrated a format-1 ledger to format {FORMAT_CURRENT}"
        );
        Ok(meta)
    }

    /// When each epoch was sealed (or opened, if still open): the time format
    /// 1 stamped its bank files with.
    fn epoch_seal_times(&self) -> Result<std::collections::HashMap<u64, u64>, LedgerError> {
        Ok(self.epochs()?.into_iter().map(|e| (e.epoch, e.sealed_at_ms.unwrap_or(e.opened_at_ms))).collect())
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<(), LedgerError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }
}

fn meta_effects(meta: &Meta) -> Vec<Effect> {
    let put = |key: &[u8], value: Vec<u8>| Effect { cf: EffectCf::Meta, key: key.to_vec(), value: Some(value) };
    let mut effects = vec![
        put(META_FORMAT, meta.format.to_be_bytes().to_vec()),
        put(META_LEDGER_ID, meta.ledger_id.0.to_vec()),
        put(META_CREATED_AT_MS, meta.created_at_ms.to_be_bytes().to_vec()),
        put(META_LOG_FORMAT2_FROM_SEQ, meta.log_format2_from_seq.to_be_bytes().to_vec()),
    ];
    if let Some(from) = meta.migrated_from {
        effects.push(put(META_MIGRATED_FROM, from.to_be_bytes().to_vec()));
    }
    effects
}

fn random_ledger_id() -> Result<LedgerId, LedgerError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| LedgerError::Unavailable(format!("no system randomness: {e}")))?;
    Ok(LedgerId(bytes))
}

// ---------------------------------------------------------------------------
// Format 1's record shapes, kept only to read and migrate them.

/// A format-1 payer record (no revoked keys).
#[derive(Deserialize, Serialize)]
struct PayerV1 {
    id: String,
    display_name: String,
    status: PayerStatus,
    keys: Vec<PublicKeyBytes>,
    credit_limits: Vec<(String, u128)>,
    settles_with: Option<String>,
    signature_agent: Option<String>,
}

impl From<PayerV1> for Payer {
    fn from(old: PayerV1) -> Payer {
        Payer {
            id: old.id,
            display_name: old.display_name,
            status: old.status,
            keys: old.keys,
            credit_limits: old.credit_limits,
            settles_with: old.settles_with,
            signature_agent: old.signature_agent,
            revoked_keys: Vec::new(),
        }
    }
}

/// A format-1 payee record (no status: every payee was active).
#[derive(Deserialize, Serialize)]
struct PayeeV1 {
    id: String,
    display_name: String,
    payout_destination: String,
}

impl From<PayeeV1> for Payee {
    fn from(old: PayeeV1) -> Payee {
        Payee {
            id: old.id,
            display_name: old.display_name,
            payout_destination: old.payout_destination,
            status: PayeeStatus::Active,
        }
    }
}

/// A format-1 batch state: bank files carried no creation time.
#[derive(Deserialize, Serialize)]
enum BatchStateV1 {
    Planned,
    EvmPrepared { nonce: u64, tx_hash: [u8; 32], raw_tx: Vec<u8>, signed_for: String },
    EvmMined { tx_hash: [u8; 32], block_number: u64, gas_used: u64 },
    FilePrepared { file_name: String, sha256: [u8; 32] },
    FileWritten { file_name: String, sha256: [u8; 32] },
    Failed(String),
}

impl BatchStateV1 {
    fn into_current(self, created_at_ms: u64) -> BatchState {
        match self {
            BatchStateV1::Planned => BatchState::Planned,
            BatchStateV1::EvmPrepared { nonce, tx_hash, raw_tx, signed_for } => {
                BatchState::EvmPrepared { nonce, tx_hash, raw_tx, signed_for }
            }
            BatchStateV1::EvmMined { tx_hash, block_number, gas_used } => {
                BatchState::EvmMined { tx_hash, block_number, gas_used }
            }
            BatchStateV1::FilePrepared { file_name, sha256 } => {
                BatchState::FilePrepared { file_name, sha256, created_at_ms }
            }
            BatchStateV1::FileWritten { file_name, sha256 } => {
                BatchState::FileWritten { file_name, sha256, created_at_ms }
            }
            BatchStateV1::Failed(reason) => BatchState::Failed(reason),
        }
    }
}

#[derive(Deserialize, Serialize)]
struct BatchRecordV1 {
    batch: RailBatch,
    state: BatchStateV1,
}
