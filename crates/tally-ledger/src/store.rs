//! Opening the database, and every read.
//!
//! [`Ledger`] is cheap to clone (an `Arc` around the RocksDB handle) and safe
//! to read from any thread. It never writes IOUs itself: all writes go
//! through the single [`crate::writer`] thread, which holds a clone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions,
    compaction_filter::Decision,
};
use tally_core::{Asset, Payee, Payer, PublicKeyBytes};

use crate::LedgerError;
use crate::layout::*;

/// Knobs fixed when the ledger is opened.
#[derive(Clone)]
pub struct LedgerOptions {
    /// Nonces are forgotten this long after their IOU expired *by the
    /// ledger's time mark* (the latest time it has recorded, never the wall
    /// clock: see [`Ledger::publish_time_mark`]). Until then a late retry of
    /// an accepted IOU is answered from its record (`DUPLICATE`, the
    /// original commitment).
    pub nonce_retention_margin_s: u64,
    /// Wall clock for the timestamps of a new ledger's genesis or a
    /// migration (tests substitute a controlled clock).
    pub clock: crate::Clock,
    /// Open without taking the write lock (for `tally ledger verify` beside a
    /// running server). Read-only ledgers refuse to start a writer.
    pub read_only: bool,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions { nonce_retention_margin_s: 3_600, clock: crate::system_clock(), read_only: false }
    }
}

/// The ledger database.
#[derive(Clone)]
pub struct Ledger {
    pub(crate) db: Arc<DB>,
    path: PathBuf,
    read_only: bool,
    meta: Meta,
    /// The replay index's pruning horizon, Unix seconds: nonces of IOUs that
    /// expired before it may be forgotten. Only the writer raises it, from
    /// durable time marks (see [`Ledger::publish_time_mark`]); 0 prunes nothing.
    prune_horizon_s: Arc<AtomicU64>,
    nonce_retention_margin_s: u64,
}

/// RocksDB's memory by kind ([`Ledger::memory_usage`]), bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    pub memtables_bytes: u64,
    pub table_readers_bytes: u64,
    pub block_cache_bytes: u64,
}

/// Which aggregates a balance query wants. Every field narrows the result.
#[derive(Clone, Debug, Default)]
pub struct BalanceFilter {
    pub epoch: Option<u64>,
    pub payer: Option<String>,
    pub payee: Option<String>,
    pub asset: Option<String>,
}

/// One page of [`Ledger::balances`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalancePage {
    pub rows: Vec<BalanceRow>,
    /// Records examined to produce this page: each epoch visited, and each
    /// aggregate read, matching or not.
    pub scanned: usize,
    /// Where the next page starts, when a bound stopped this one.
    pub next: Option<Vec<u8>>,
}

/// Where a balance scan stopped: which order, which epoch, the last key examined.
struct BalanceCursor {
    by_payee: bool,
    epoch: u64,
    key: Vec<u8>,
}

impl BalanceCursor {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.key.len());
        out.push(if self.by_payee { b'e' } else { b'r' });
        out.extend_from_slice(&self.key);
        out
    }

    /// A cursor from a client: checked, never trusted (a forged one is an error, not a panic).
    fn decode(bytes: &[u8], by_payee: bool) -> Result<BalanceCursor, LedgerError> {
        let bad = || LedgerError::InvalidRequest("the page token is not one this filter produced".into());
        let (&order, key) = bytes.split_first().ok_or_else(bad)?;
        if order != if by_payee { b'e' } else { b'r' } || key.len() > 8 + 3 * 256 {
            return Err(bad());
        }
        let (epoch, ..) = decode_aggregate_key(key).map_err(|_| bad())?;
        Ok(BalanceCursor { by_payee, epoch, key: key.to_vec() })
    }
}

/// One aggregate: what `payer` owes `payee` in `asset` for `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceRow {
    pub epoch: u64,
    pub payer: String,
    pub payee: String,
    pub asset: String,
    pub sum: u128,
    pub count: u64,
}

/// The memtable size of each aggregate column family.
const AGGREGATE_MEMTABLE_BYTES: usize = 8 << 20;

/// Every memtable of every column family together.
const MEMTABLES_BYTES_MAX: usize = 128 << 20;

/// The block cache shared by every column family: data, index and filter
/// blocks. The hot path reads only the replay index's filters (10 bits, about
/// 1.25 bytes, per remembered nonce): 64 MiB holds them for ~40 million
/// nonces still inside their retention window (expiry plus the margin). A
/// deployment that keeps more must raise it, or lookups go to disk.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`.
    pub fn open(path: &Path, options: LedgerOptions) -> Result<Ledger, LedgerError> {
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_paranoid_checks(true);
        // Every acknowledged write was fsynced, so the only WAL damage a
        // crash can leave is an incomplete last record (a write that was
        // never acknowledged). Tolerate exactly that; refuse to open on any
        // other corruption instead of silently dropping history after it.
        db_options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
        // Bound what RocksDB keeps open and in memory: the log grows without
        // bound on disk, never in RAM.
        db_options.set_max_open_files(512);
        db_options.set_keep_log_file_num(8);
        db_options.increase_parallelism(2);
        // One thread writes (the committer), and the aggregates' vector
        // memtables do not support concurrent inserts.
        db_options.set_allow_concurrent_memtable_write(false);
        // Memory bounded by configuration, not by history: the index and
        // filter blocks of every table live in one block cache (beside data
        // blocks) instead of beside each open table, where they grew with
        // every file written (~5 MiB per million IOUs). They are partitioned,
        // so a lookup loads the few KiB it needs, never a whole file's filter,
        // and the cache's high-priority pool keeps them ahead of data blocks.
        let block_cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        // All memtables together stay near one budget: past it, RocksDB
        // flushes the largest (without stalling writers).
        let memtables = rocksdb::WriteBufferManager::new_write_buffer_manager(MEMTABLES_BYTES_MAX, false);
        db_options.set_write_buffer_manager(&memtables);
        let prune_horizon_s = Arc::new(AtomicU64::new(0));

        let descriptors = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            table.set_block_cache(&block_cache);
            table.set_cache_index_and_filter_blocks(true);
            table.set_cache_index_and_filter_blocks_with_high_priority(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
            table.set_partition_filters(true);
            table.set_pin_top_level_index_and_filter(true);

            cf.set_block_based_table_factory(&table);
            match *name {
                CF_AGG_BY_PAYER | CF_AGG_BY_PAYEE => {
                    cf.set_merge_operator_associative("tally_aggregate_add", merge_aggregates);
                    // Every group adds one merge operand per pair: inserting each
                    // into a skiplist memtable cost most of the commit thread in
                    // the profile. Aggregates are only ever scanned (balances,
                    // planning, audit), never point-read on the hot path, so an
                    // append-only vector memtable fits: O(1) inserts, sorted
                    // once at flush or when a scan reads it. Kept small so that
                    // sort stays a few milliseconds.
                    cf.set_memtable_factory(rocksdb::MemtableFactory::Vector);
                    cf.set_write_buffer_size(AGGREGATE_MEMTABLE_BYTES);
                }
                CF_NONCES => {
                    // Almost every lookup is of a nonce never seen: a memtable
                    // bloom filter answers those without walking the skiplist.
                    cf.set_memtable_prefix_bloom_ratio(0.05);
                    cf.set_memtable_whole_key_filtering(true);
                    // Prune below the horizon the writer published, never by
                    // the wall clock: a clock stepped forward must not make the
                    // index forget nonces the writer would still accept.
                    let horizon = prune_horizon_s.clone();
                    cf.set_compaction_filter("tally_prune_expired_nonces", move |_level, _key, value| {
                        match nonce_entry_expiry(value) {
                            Some(expires) if expires < horizon.load(Ordering::Acquire) => Decision::Remove,
                            _ => Decision::Keep,
                        }
                    });
                }
                _ => {}
            }
            ColumnFamilyDescriptor::new(*name, cf)
        });

        // Read-only opens register the same merge operators: reads resolve
        // merge operands through them.
        let db = if options.read_only {
            // A format-1 ledger has no `meta` column family, and a read-only
            // open cannot create it: say what it is and how to migrate it.
            let existing = DB::list_cf(&db_options, path)?;
            if !existing.iter().any(|name| name == CF_META) {
                return Err(LedgerError::format_1_read_only());
            }
            DB::open_cf_descriptors_read_only(&db_options, path, descriptors, false)?
        } else {
            DB::open_cf_descriptors(&db_options, path, descriptors)?
        };
        let mut ledger = Ledger {
            db: Arc::new(db),
            path: path.to_owned(),
            read_only: options.read_only,
            meta: Meta {
                format: 0,
                ledger_id: tally_core::LedgerId([0; 16]),
                created_at_ms: 0,
                log_format2_from_seq: 0,
                migrated_from: None,
            },
            prune_horizon_s,
            nonce_retention_margin_s: options.nonce_retention_margin_s,
        };
        // Before anything reads a record: a new ledger gets its genesis, an
        // older format is migrated (or, read-only, refused).
        ledger.meta = ledger.settle_format((options.clock)())?;
        Ok(ledger)
    }

    /// The ledger's format, id and history of formats.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn ledger_id(&self) -> tally_core::LedgerId {
        self.meta.ledger_id
    }

    /// Raises the replay index's pruning horizon to `mark_ms` less the
    /// retention margin. Called by the writer with a **durable** time mark
    /// only: every IOU that expired before the mark is refused by the writer
    /// for ever (it judges expiry by `max(clock, mark)`), so forgetting its
    /// nonce can never let it in twice, whatever any clock does later.
    pub(crate) fn publish_time_mark(&self, mark_ms: u64) {
        // A time, not an amount: before the margin has passed, nothing is pruned.
        let horizon_s = (mark_ms / 1000).saturating_sub(self.nonce_retention_margin_s);
        self.prune_horizon_s.fetch_max(horizon_s, Ordering::AcqRel);
    }

    /// The pruning horizon now published (Unix seconds; 0: nothing is pruned).
    pub fn prune_horizon_s(&self) -> u64 {
        self.prune_horizon_s.load(Ordering::Acquire)
    }

    pub fn nonce_retention_margin_s(&self) -> u64 {
        self.nonce_retention_margin_s
    }

    /// What RocksDB holds in memory now, summed over the column families:
    /// memtables, index and filter blocks of open tables, the block cache.
    pub fn memory_usage(&self) -> Result<MemoryUsage, LedgerError> {
        let mut usage = MemoryUsage::default();
        for name in COLUMN_FAMILIES {
            let cf = self.cf(name);
            let read = |property: &str| -> Result<u64, LedgerError> {
                Ok(self.db.property_int_value_cf(cf, property)?.unwrap_or(0))
            };
            usage.memtables_bytes += read("rocksdb.cur-size-all-mem-tables")?;
            usage.table_readers_bytes += read("rocksdb.estimate-table-readers-mem")?;
        }
        // One cache shared by every column family: read once.
        usage.block_cache_bytes =
            self.db.property_int_value_cf(self.cf(CF_LOG), "rocksdb.block-cache-usage")?.unwrap_or(0);
        Ok(usage)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column families are created at open")
    }

    /// The last record in the log: `(seq, hash)`, or `(0, GENESIS_HASH)`.
    pub fn head(&self) -> Result<(u64, tally_core::RecordHash), LedgerError> {
        let mut iter = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok((0, tally_core::GENESIS_HASH)),
            Some(item) => {
                let (key, value) = item?;
                let record = decode_log_record(&key, &value)?;
                // The head is what every new record chains to: a damaged head
                // would extend the chain from a lie, so it is checked on every
                // load (cheap: one hash). `tally ledger verify` checks the rest.
                if record.computed_hash() != record.hash {
                    return Err(LedgerError::Corruption(format!(
                        "the last log record ({}) does not match its hash; run `tally ledger verify`",
                        record.seq
                    )));
                }
                Ok((record.seq, record.hash))
            }
        }
    }

    /// One log record by sequence number.
    pub fn record(&self, seq: u64) -> Result<Option<StoredIou>, LedgerError> {
        match self.db.get_cf(self.cf(CF_LOG), log_key(seq))? {
            None => Ok(None),
            Some(value) => Ok(Some(decode_log_record(&log_key(seq), &value)?)),
        }
    }

    /// Up to `limit` log records starting at `seq_from`, in order.
    pub fn records(&self, seq_from: u64, limit: usize) -> Result<Vec<StoredIou>, LedgerError> {
        let start = log_key(seq_from);
        let iter = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::From(&start, Direction::Forward));
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (key, value) = item?;
            out.push(decode_log_record(&key, &value)?);
        }
        Ok(out)
    }

    /// Finds an accepted IOU by payer key and nonce.
    pub fn lookup_iou(&self, payer_key: &PublicKeyBytes, nonce: &[u8; 16]) -> Result<Option<StoredIou>, LedgerError> {
        let Some(value) = self.db.get_cf(self.cf(CF_NONCES), nonce_key(payer_key, nonce))? else {
            return Ok(None);
        };
        let entry = decode_nonce_entry(&value)?;
        let record = self
            .record(entry.seq)?
            .ok_or_else(|| LedgerError::Corruption(format!("nonce points at missing record {}", entry.seq)))?;
        Ok(Some(record))
    }

    /// A batch-signed commitment by payer key and batch sequence.
    pub fn batch(&self, payer_key: &PublicKeyBytes, batch_seq: u64) -> Result<Option<BatchRecord>, LedgerError> {
        let key = batch_key(payer_key, batch_seq);
        match self.db.get_pinned_cf(self.cf(CF_BATCHES), key)? {
            None => Ok(None),
            Some(value) => Ok(Some(BatchRecord::decode(&key, &value)?)),
        }
    }

    /// Every epoch, oldest first.
    pub fn epochs(&self) -> Result<Vec<EpochRecord>, LedgerError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_EPOCHS), IteratorMode::Start) {
            let (_, value) = item?;
            out.push(decode_bincode("epoch record", &value)?);
        }
        Ok(out)
    }

    pub fn epoch(&self, epoch: u64) -> Result<Option<EpochRecord>, LedgerError> {
        match self.db.get_cf(self.cf(CF_EPOCHS), epoch.to_be_bytes())? {
            None => Ok(None),
            Some(value) => Ok(Some(decode_bincode("epoch record", &value)?)),
        }
    }

    fn accounts_with_prefix<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        what: &str,
    ) -> Result<Vec<T>, LedgerError> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(self.cf(CF_ACCOUNTS), IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push(decode_bincode(what, &value)?);
        }
        Ok(out)
    }

    pub fn assets(&self) -> Result<Vec<Asset>, LedgerError> {
        self.accounts_with_prefix(ACCOUNT_ASSET_PREFIX, "asset record")
    }

    pub fn payers(&self) -> Result<Vec<Payer>, LedgerError> {
        self.accounts_with_prefix(ACCOUNT_PAYER_PREFIX, "payer record")
    }

    /// One payer by id.
    pub fn payer(&self, id: &str) -> Result<Option<Payer>, LedgerError> {
        self.account_record(ACCOUNT_PAYER_PREFIX, id, "payer record")
    }

    /// The payer whose signature agent is exactly `agent`, through the
    /// `"agent/"` index the writer keeps.
    pub fn payer_by_signature_agent(&self, agent: &str) -> Result<Option<Payer>, LedgerError> {
        let Some(value) = self.db.get_cf(self.cf(CF_ACCOUNTS), agent_index_key(agent))? else {
            return Ok(None);
        };
        let id = std::str::from_utf8(&value)
            .map_err(|_| LedgerError::Corruption("signature agent owner is not UTF-8".into()))?;
        let payer = self
            .payer(id)?
            .ok_or_else(|| LedgerError::Corruption(format!("signature agent {agent} points at missing payer {id}")))?;
        if payer.signature_agent.as_deref() != Some(agent) {
            return Err(LedgerError::Corruption(format!(
                "signature agent index for {agent} disagrees with payer {id}"
            )));
        }
        Ok(Some(payer))
    }

    pub fn payees(&self) -> Result<Vec<Payee>, LedgerError> {
        self.accounts_with_prefix(ACCOUNT_PAYEE_PREFIX, "payee record")
    }

    /// One payee by id (a point read: the facilitator asks per request).
    pub fn payee(&self, id: &str) -> Result<Option<Payee>, LedgerError> {
        self.account_record(ACCOUNT_PAYEE_PREFIX, id, "payee record")
    }

    /// One asset by code (a point read).
    pub fn asset(&self, code: &str) -> Result<Option<Asset>, LedgerError> {
        self.account_record(ACCOUNT_ASSET_PREFIX, code, "asset record")
    }

    fn account_record<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        id: &str,
        what: &str,
    ) -> Result<Option<T>, LedgerError> {
        let mut key = prefix.to_vec();
        key.extend_from_slice(id.as_bytes());
        match self.db.get_cf(self.cf(CF_ACCOUNTS), key)? {
            None => Ok(None),
            Some(value) => Ok(Some(decode_bincode(what, &value)?)),
        }
    }

    /// The payer that registered `key`, if any.
    pub fn key_owner(&self, key: &PublicKeyBytes) -> Result<Option<String>, LedgerError> {
        let mut record_key = ACCOUNT_KEY_PREFIX.to_vec();
        record_key.extend_from_slice(key);
        match self.db.get_cf(self.cf(CF_ACCOUNTS), record_key)? {
            None => Ok(None),
            Some(value) => Ok(Some(
                String::from_utf8(value.to_vec())
                    .map_err(|_| LedgerError::Corruption("key owner is not UTF-8".into()))?,
            )),
        }
    }

    /// Which payer owns each registered key.
    pub fn key_owners(&self) -> Result<Vec<(PublicKeyBytes, String)>, LedgerError> {
        let mut out = Vec::new();
        let prefix = ACCOUNT_KEY_PREFIX;
        let iter = self.db.iterator_cf(self.cf(CF_ACCOUNTS), IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            let public_key: PublicKeyBytes = key[prefix.len()..]
                .try_into()
                .map_err(|_| LedgerError::Corruption("key record of the wrong length".into()))?;
            let owner = String::from_utf8(value.to_vec())
                .map_err(|_| LedgerError::Corruption("key owner is not UTF-8".into()))?;
            out.push((public_key, owner));
        }
        Ok(out)
    }

    /// Aggregates matching `filter`, sorted by `(epoch, payer, payee, asset)`
    /// or `(epoch, payee, payer, asset)`: at most `rows_max` rows, and at
    /// most `scanned_max` aggregates *examined*, matching or not. A filter
    /// that matches nothing therefore costs at most `scanned_max` reads, not
    /// a scan of every aggregate of every epoch. When either bound stops the
    /// scan, the page says where to go on (`next`, an opaque cursor for the
    /// same filter).
    ///
    /// Reads only the key ranges the filter names (one epoch prefix, further
    /// narrowed by payer or payee, per epoch), never the log, and leaves the
    /// block cache alone: a query must not evict the blocks ingest needs.
    pub fn balances(
        &self,
        filter: &BalanceFilter,
        rows_max: usize,
        scanned_max: usize,
        after: Option<&[u8]>,
    ) -> Result<BalancePage, LedgerError> {
        assert!(rows_max > 0 && scanned_max > 0);
        let by_payee = filter.payee.is_some() && filter.payer.is_none();
        let (cf_name, leading) = if by_payee {
            (CF_AGG_BY_PAYEE, filter.payee.as_deref())
        } else {
            (CF_AGG_BY_PAYER, filter.payer.as_deref())
        };
        let after = match after {
            Some(cursor) => Some(BalanceCursor::decode(cursor, by_payee)?),
            None => None,
        };
        // Epochs are visited lazily from the cursor's, and each visit costs
        // one unit of the budget like an aggregate: a ledger of many small
        // (or empty) epochs is no cheaper to sweep than one of many rows.
        let epoch_from = after.as_ref().map_or(0, |cursor| cursor.epoch);
        let epochs: Box<dyn Iterator<Item = Result<u64, LedgerError>>> = match filter.epoch {
            Some(epoch) => Box::new((epoch >= epoch_from).then_some(Ok(epoch)).into_iter()),
            None => Box::new(
                self.db
                    .iterator_cf(self.cf(CF_EPOCHS), IteratorMode::From(&epoch_from.to_be_bytes(), Direction::Forward))
                    .map(|item| {
                        let (key, _) = item?;
                        let bytes: [u8; 8] = key
                            .as_ref()
                            .try_into()
                            .map_err(|_| LedgerError::Corruption(format!("epoch key {}", hex::encode(&key))))?;
                        Ok(u64::from_be_bytes(bytes))
                    }),
            ),
        };
        let mut page = BalancePage::default();
        for epoch in epochs {
            let epoch = epoch?;
            if page.scanned == scanned_max {
                // Resume at this epoch's first aggregate.
                let key = aggregate_key(epoch, "", "", "");
                page.next = Some(BalanceCursor { by_payee, epoch, key }.encode());
                return Ok(page);
            }
            page.scanned += 1;
            let prefix = aggregate_prefix(epoch, leading);
            let mut read = ReadOptions::default();
            read.set_iterate_range(rocksdb::PrefixRange(prefix.as_slice()));
            read.fill_cache(false);
            // Resume strictly after the cursor's key (appending a zero byte is the next key).
            let start = match &after {
                Some(cursor) if cursor.epoch == epoch && cursor.key.as_slice() >= prefix.as_slice() => {
                    let mut next = cursor.key.clone();
                    next.push(0);
                    next
                }
                _ => prefix.clone(),
            };
            let iter = self.db.iterator_cf_opt(self.cf(cf_name), read, IteratorMode::From(&start, Direction::Forward));
            for item in iter {
                let (key, value) = item?;
                page.scanned += 1;
                let (_, first, second, asset) = decode_aggregate_key(&key)?;
                let (payer, payee) = if by_payee { (second, first) } else { (first, second) };
                let matches = filter.payee.as_deref().is_none_or(|p| p == payee)
                    && filter.asset.as_deref().is_none_or(|a| a == asset);
                if matches {
                    let aggregate = AggregateValue::decode(&value)
                        .ok_or_else(|| LedgerError::Corruption(format!("aggregate value {}", hex::encode(&value))))?;
                    page.rows.push(BalanceRow {
                        epoch,
                        payer: payer.to_owned(),
                        payee: payee.to_owned(),
                        asset: asset.to_owned(),
                        sum: aggregate.sum,
                        count: aggregate.count,
                    });
                }
                if page.rows.len() == rows_max || page.scanned == scanned_max {
                    page.next = Some(BalanceCursor { by_payee, epoch, key: key.to_vec() }.encode());
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    /// Every aggregate matching `filter`, page by page, for trusted callers
    /// that need the whole answer (statements, reports). More than
    /// `rows_max` rows is an error, never a silently shortened list.
    pub fn balances_all(&self, filter: &BalanceFilter, rows_max: usize) -> Result<Vec<BalanceRow>, LedgerError> {
        const PAGE_SCANNED_MAX: usize = 100_000;
        let mut rows = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.balances(filter, PAGE_SCANNED_MAX, PAGE_SCANNED_MAX, after.as_deref())?;
            rows.extend(page.rows);
            if rows.len() > rows_max {
                return Err(LedgerError::Unavailable(format!("more than {rows_max} balance rows match")));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(rows),
            }
        }
    }

    /// What each payer owes per asset in IOUs not yet settled: the sum of
    /// its aggregates over epochs from `epoch_from` on (the first unplanned
    /// epoch; planned epochs' debts are bills). With `payer`, only that
    /// payer's prefix of each epoch is read.
    pub fn owed(&self, payer: Option<&str>, epoch_from: u64) -> Result<HashMap<(String, String), u128>, LedgerError> {
        let mut owed: HashMap<(String, String), u128> = HashMap::new();
        let mut overflow = None;
        for epoch in self.epochs()?.into_iter().filter(|e| e.epoch >= epoch_from) {
            self.scan_aggregates(CF_AGG_BY_PAYER, epoch.epoch, payer, |payer, _, asset, aggregate| {
                let total = owed.entry((payer.to_owned(), asset.to_owned())).or_default();
                match total.checked_add(aggregate.sum) {
                    Some(sum) => *total = sum,
                    None => overflow = Some(format!("what {payer} owes in {asset} overflows")),
                }
                overflow.is_none()
            })?;
            if let Some(message) = overflow {
                return Err(LedgerError::Corruption(message));
            }
        }
        Ok(owed)
    }

    /// Flushes memtables to SST files, so the next open replays no WAL.
    /// Called on clean shutdown; durability never depends on it.
    pub fn flush(&self) -> Result<(), LedgerError> {
        let handles: Vec<&ColumnFamily> = COLUMN_FAMILIES.iter().map(|name| self.cf(name)).collect();
        self.db.flush_cfs_opt(&handles, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    /// Visits the aggregates of one epoch in `cf_name` (optionally only
    /// those whose leading id is `leading`) in key order, as
    /// `visit(first id, second id, asset, value)`; `visit` returns whether to
    /// go on. Returns `false` when `visit` stopped the scan.
    pub fn scan_aggregates(
        &self,
        cf_name: &str,
        epoch: u64,
        leading: Option<&str>,
        mut visit: impl FnMut(&str, &str, &str, AggregateValue) -> bool,
    ) -> Result<bool, LedgerError> {
        let prefix = aggregate_prefix(epoch, leading);
        let mut read = ReadOptions::default();
        read.set_iterate_range(rocksdb::PrefixRange(prefix.as_slice()));
        // Whole-epoch scans (planning, exposure, audit) must not evict the
        // replay index's blocks that ingest needs from the shared cache.
        read.fill_cache(false);
        let iter = self.db.iterator_cf_opt(self.cf(cf_name), read, IteratorMode::From(&prefix, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            let (_, first, second, asset) = decode_aggregate_key(&key)?;
            let aggregate = AggregateValue::decode(&value)
                .ok_or_else(|| LedgerError::Corruption(format!("aggregate value {}", hex::encode(&value))))?;
            if !visit(first, second, asset, aggregate) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Forces a full compaction of every column family (runs the nonce
    /// pruning filter). Operators rarely need it; tests do.
    pub fn compact(&self) {
        for name in COLUMN_FAMILIES {
            self.db.compact_range_cf(self.cf(name), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Whether the replay index still holds `(payer_key, nonce)`.
    pub fn nonce_known(&self, payer_key: &PublicKeyBytes, nonce: &[u8; 16]) -> Result<bool, LedgerError> {
        Ok(self.db.get_pinned_cf(self.cf(CF_NONCES), nonce_key(payer_key, nonce))?.is_some())
    }
}
