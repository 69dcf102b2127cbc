//! The PostgreSQL peer: Tally's ingest pipeline with PostgreSQL as the ledger.
//!
//! Users compare Tally with what they would otherwise build: a gRPC service
//! over PostgreSQL. This is that service, built as a strong baseline, so the
//! end-to-end harness (`scripts/bench.sh`) can measure both side by side with
//! the same, unchanged `tally loadgen`:
//!
//! - the same wire: it serves Tally's own `Ingest` service (and the part of
//!   `Admin` that `tally loadgen --register` calls: assets, payers, payees);
//! - the same per-IOU pipeline: decode with `tally_ingest::convert`, the same
//!   stateless checks (shape, network, validity window, amount), the same
//!   batched signature verification (`tally_core::verify::verify_many`) cut
//!   into chunks over all cores, unless `--no-verify` (ledger only);
//! - then ONE PostgreSQL transaction per batch, `synchronous_commit = on`
//!   and `fsync = on` (checked at startup): one row per IOU (a
//!   `(payer_key, nonce)` unique constraint detects replays), aggregate
//!   upserts per `(epoch, payer, payee, asset)` pre-summed per batch, the
//!   payer's credit rows locked and checked; only after `COMMIT` are the
//!   per-IOU results sent.
//!
//! How it stays fast without cutting corners: prepared statements, arrays
//! through `UNNEST` (one statement for all rows of a batch, never a round
//! trip per IOU), statements of a transaction pipelined on the connection,
//! a small pool of connections with one transaction in flight on each, and
//! account lookups (keys, payees, assets) from an in-memory copy, as Tally's
//! writer keeps them. The common path is optimistic: insert the rows, upsert
//! the aggregates (in key order, so concurrent batches never deadlock), then
//! lock the credit rows and add the batch's exposure; if any IOU was a
//! replay or any payer went past its limit, the transaction is rolled back
//! and the batch is decided exactly like Tally's writer does (credit rows
//! locked first, replays looked up, each IOU decided in order). Either way
//! the peer accepts exactly what Tally accepts for the same load.
//!
//! Not modelled: epoch sealing and settlement (every IOU lands in epoch 1),
//! the hash chain (the commitment hash is SHA-256 of the signing bytes and
//! signature), suspension and credit changes (the admin subset only adds).
//!
//! Run by `scripts/bench.sh`; by hand, against a running PostgreSQL:
//! `cargo bench --workspace --bench pg_peer -- --pg 'host=/tmp/pgsock port=5433 user=postgres'
//!  --admin-token t --ready-file /tmp/peer.json [--no-verify] [--fresh]`.
//! Under `cargo test --all-targets` (no `--bench` argument) it only checks
//! its arguments parse and exits: it needs a PostgreSQL server to do more.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use clap::Parser;
use ed25519_dalek::VerifyingKey;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tally_core::verify::{VerifyItem, parse_registration_key, verify_many};
use tally_core::{CommitmentId, Outcome, SignedIou, ValidityPolicy};
use tally_ingest::AdminAuth;
use tally_ingest::convert::{iou_from_proto, result_to_proto};
use tally_ingest::proto::admin_server::{Admin, AdminServer};
use tally_ingest::proto::ingest_server::{Ingest, IngestServer};
use tally_ingest::proto::*;
use tally_ledger::AppendResult;
use tokio::sync::{Semaphore, mpsc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// The only epoch of the peer: it does not seal.
const EPOCH: i64 = 1;
/// A batch is verified in chunks of at least this many IOUs (as Tally's pipeline).
const VERIFY_CHUNK_IOUS_MIN: usize = 128;
/// Attempts at a batch's transaction before answering `UNAVAILABLE` (deadlocks between
/// the exact path and the optimistic path are detected by PostgreSQL and retried).
const TRANSACTION_ATTEMPTS_MAX: usize = 4;

#[derive(Parser, Debug)]
#[command(about = "Tally's Ingest service over PostgreSQL: the benchmark's peer")]
struct Args {
    /// tokio-postgres connection string, e.g. `host=/tmp/sock port=5433 user=postgres dbname=postgres`.
    #[arg(long)]
    pg: Option<String>,
    /// gRPC listen address (port 0: any free port, reported in the ready file).
    #[arg(long, default_value = "127.0.0.1:0")]
    grpc_addr: SocketAddr,
    /// Admin bearer token for the `Admin` subset.
    #[arg(long, default_value = "")]
    admin_token: String,
    /// Network id IOUs must name (Tally's default).
    #[arg(long, default_value = "tally:local")]
    network: String,
    /// PostgreSQL connections: at most this many batch transactions in flight.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Skip signature verification (ledger only, to compare with Tally's ledger alone).
    #[arg(long)]
    no_verify: bool,
    /// Drop and recreate the peer's tables first.
    #[arg(long)]
    fresh: bool,
    /// Written (atomically) once serving: `{"grpc_addr": …, "pid": …}`.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Most IOUs in one batch (Tally's default limit).
    #[arg(long, default_value_t = 4_096)]
    batch_ious_max: usize,
    /// Batches of one stream in the pipeline at once (Tally's default).
    #[arg(long, default_value_t = 8)]
    stream_batches_inflight_max: usize,
    /// Passed by `cargo bench`; without it (under `cargo test`) the peer exits at once.
    #[arg(long, hide = true)]
    bench: bool,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS assets (
    code text PRIMARY KEY,
    scale int NOT NULL,
    enabled boolean NOT NULL
);
CREATE TABLE IF NOT EXISTS payers (
    id text PRIMARY KEY,
    display_name text NOT NULL,
    suspended boolean NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS payer_keys (
    key bytea PRIMARY KEY,
    payer_id text NOT NULL REFERENCES payers (id)
);
CREATE TABLE IF NOT EXISTS payer_credit (
    payer_id text NOT NULL REFERENCES payers (id),
    asset text NOT NULL,
    credit_limit numeric(39, 0) NOT NULL,
    exposure numeric(39, 0) NOT NULL DEFAULT 0,
    PRIMARY KEY (payer_id, asset)
);
CREATE TABLE IF NOT EXISTS payees (
    id text PRIMARY KEY,
    display_name text NOT NULL
);
CREATE TABLE IF NOT EXISTS ious (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payer_key bytea NOT NULL,
    nonce bytea NOT NULL,
    epoch bigint NOT NULL,
    amount numeric(20, 0) NOT NULL,
    expires_at_s bigint NOT NULL,
    accepted_at_ms bigint NOT NULL,
    signing_bytes bytea NOT NULL,
    signature bytea NOT NULL,
    UNIQUE (payer_key, nonce)
);
CREATE TABLE IF NOT EXISTS aggregates (
    epoch bigint NOT NULL,
    payer_id text NOT NULL,
    payee text NOT NULL,
    asset text NOT NULL,
    sum numeric(39, 0) NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (epoch, payer_id, payee, asset)
);
CREATE INDEX IF NOT EXISTS aggregates_by_payee ON aggregates (epoch, payee, payer_id, asset);
";

const DROP: &str = "DROP TABLE IF EXISTS aggregates, ious, payees, payer_credit, payer_keys, payers, assets";

/// Rows of a batch, as arrays for `UNNEST`.
const INSERT_IOUS: &str = "
INSERT INTO ious (payer_key, nonce, epoch, amount, expires_at_s, accepted_at_ms, signing_bytes, signature)
SELECT k, n, $3, a::numeric, e, $4, b, s
FROM UNNEST($1::bytea[], $2::bytea[], $5::text[], $6::int8[], $7::bytea[], $8::bytea[]) AS u(k, n, a, e, b, s)
ON CONFLICT (payer_key, nonce) DO NOTHING
RETURNING seq, payer_key, nonce";

/// Pre-summed aggregates, upserted in key order so concurrent batches lock
/// shared rows in the same order and never deadlock.
const UPSERT_AGGREGATES: &str = "
INSERT INTO aggregates AS g (epoch, payer_id, payee, asset, sum, count)
SELECT $1, p, q, a, s::numeric, c
FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[]) AS u(p, q, a, s, c)
ORDER BY p, q, a
ON CONFLICT (epoch, payer_id, payee, asset)
DO UPDATE SET sum = g.sum + EXCLUDED.sum, count = g.count + EXCLUDED.count";

/// Locks the batch's credit rows, in key order.
const LOCK_CREDIT: &str = "
SELECT payer_id, asset, credit_limit::text, exposure::text
FROM payer_credit
WHERE (payer_id, asset) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))
ORDER BY payer_id, asset
FOR UPDATE";

/// Adds the batch's exposure; answers, per row, whether it is within the limit.
const ADD_EXPOSURE: &str = "
UPDATE payer_credit AS c SET exposure = c.exposure + u.d::numeric
FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(p, a, d)
WHERE c.payer_id = u.p AND c.asset = u.a
RETURNING c.exposure <= c.credit_limit";

/// Earlier acceptances of the batch's `(payer_key, nonce)` pairs.
const EXISTING: &str = "
SELECT i.payer_key, i.nonce, i.seq, i.epoch, i.signing_bytes, i.signature
FROM ious AS i JOIN UNNEST($1::bytea[], $2::bytea[]) AS u(k, n) ON i.payer_key = u.k AND i.nonce = u.n";

/// An IOU's identity: `(payer_key, nonce)`.
type IouId = ([u8; 32], [u8; 16]);

/// An earlier acceptance: its commitment, epoch and signing bytes.
type Original = (CommitmentId, u64, Vec<u8>);

/// One pooled connection with its prepared statements.
struct Conn {
    client: Client,
    insert_ious: Statement,
    upsert_aggregates: Statement,
    lock_credit: Statement,
    add_exposure: Statement,
    existing: Statement,
}

impl Conn {
    async fn open(pg: &str) -> anyhow::Result<Conn> {
        let (client, connection) = tokio_postgres::connect(pg, NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                eprintln!("pg_peer: PostgreSQL connection ended: {error}");
            }
        });
        // The baseline is only fair if every commit is durable.
        for (setting, wanted) in [("fsync", "on"), ("synchronous_commit", "on")] {
            let value: String = client.query_one(&format!("SHOW {setting}"), &[]).await?.get(0);
            anyhow::ensure!(value == wanted, "PostgreSQL has {setting} = {value}; the peer needs {wanted}");
        }
        Ok(Conn {
            insert_ious: client.prepare(INSERT_IOUS).await?,
            upsert_aggregates: client.prepare(UPSERT_AGGREGATES).await?,
            lock_credit: client.prepare(LOCK_CREDIT).await?,
            add_exposure: client.prepare(ADD_EXPOSURE).await?,
            existing: client.prepare(EXISTING).await?,
            client,
        })
    }
}

/// A fixed set of connections; a batch borrows one for its transaction.
struct Pool {
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
}

struct Borrowed<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Borrowed<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("held until drop")
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().expect("pool lock").push(conn);
        }
    }
}

impl Pool {
    async fn get(&self) -> Result<Borrowed<'_>, Status> {
        let permit = self.permits.acquire().await.map_err(|_| Status::unavailable("the peer is stopping"))?;
        let conn = self.idle.lock().expect("pool lock").pop().expect("a permit means an idle connection");
        Ok(Borrowed { pool: self, conn: Some(conn), _permit: permit })
    }
}

/// The in-memory copy of the accounts (written through by the admin subset).
#[derive(Default)]
struct Accounts {
    /// Payer key → (payer id, decompressed key).
    keys: HashMap<[u8; 32], (Arc<str>, VerifyingKey)>,
    /// Payer id → suspended.
    payers: HashMap<String, bool>,
    /// Asset code → enabled.
    assets: HashMap<String, bool>,
    payees: HashSet<String>,
}

struct Peer {
    network: String,
    validity: ValidityPolicy,
    verify: bool,
    verify_threads: usize,
    /// Verification chunks running at once: one per core.
    verify_permits: Semaphore,
    batch_ious_max: usize,
    accounts: RwLock<Accounts>,
    pool: Pool,
    /// Admin changes are rare: one at a time keeps the copy and the tables in step.
    admin_lock: tokio::sync::Mutex<()>,
}

/// An IOU that passed the checks and the signature, on its way to PostgreSQL.
struct Candidate {
    index: usize,
    signed: SignedIou,
    signing_bytes: Vec<u8>,
    payer_id: Arc<str>,
    key: VerifyingKey,
}

fn commitment_hash(signing_bytes: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(signing_bytes);
    hasher.update(signature);
    hasher.finalize().into()
}

fn internal(error: tokio_postgres::Error) -> Status {
    Status::unavailable(format!("PostgreSQL: {error}"))
}

fn is_retryable(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    error
        .code()
        .is_some_and(|code| *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// What the transaction writes: the accepted IOUs, in batch order.
struct Plan<'a> {
    accepted: Vec<&'a Candidate>,
}

impl Plan<'_> {
    /// Per `(payer, asset)`: the exposure this plan adds.
    fn exposure(&self) -> BTreeMap<(&str, &str), u128> {
        let mut out: BTreeMap<(&str, &str), u128> = BTreeMap::new();
        for c in &self.accepted {
            let sum = out.entry((&c.payer_id, &c.signed.iou.asset)).or_default();
            *sum = sum.checked_add(u128::from(c.signed.iou.amount)).expect("a batch's sum fits u128");
        }
        out
    }
}

enum Applied {
    /// Rows inserted: `(payer_key, nonce) → seq`.
    Done(HashMap<([u8; 32], [u8; 16]), u64>),
    /// A replay or a credit limit got in the way: decide exactly instead.
    Deviated,
}

impl Peer {
    fn check(&self, signed: &SignedIou, now_s: u64) -> Result<(), Outcome> {
        let iou = &signed.iou;
        iou.check_shape().map_err(|_| Outcome::Malformed)?;
        if iou.network != self.network {
            return Err(Outcome::WrongNetwork);
        }
        self.validity.check(iou, now_s)?;
        if iou.amount == 0 {
            return Err(Outcome::InvalidAmount);
        }
        Ok(())
    }

    /// The account checks Tally's writer makes after replay: suspended
    /// payer, asset, payee (from the in-memory copy).
    fn account_check(&self, accounts: &Accounts, c: &Candidate) -> Result<(), Outcome> {
        if accounts.payers.get(&*c.payer_id).copied().unwrap_or(true) {
            return Err(Outcome::SuspendedPayer);
        }
        match accounts.assets.get(&c.signed.iou.asset) {
            None => return Err(Outcome::UnknownAsset),
            Some(false) => return Err(Outcome::AssetDisabled),
            Some(true) => {}
        }
        if !accounts.payees.contains(&c.signed.iou.payee) {
            return Err(Outcome::UnknownPayee);
        }
        Ok(())
    }

    async fn submit(&self, batch: Vec<Result<SignedIou, Outcome>>) -> Result<Vec<AppendResult>, Status> {
        let len = batch.len();
        if len > self.batch_ious_max {
            return Err(Status::invalid_argument(format!(
                "batch has {len} IOUs; the limit is {}",
                self.batch_ious_max
            )));
        }
        let mut results: Vec<Option<AppendResult>> = vec![None; len];
        let now_s = tally_ledger::unix_now_ms() / 1000;
        let mut candidates = Vec::with_capacity(len);
        {
            let accounts = self.accounts.read().expect("accounts lock");
            for (index, item) in batch.into_iter().enumerate() {
                let checked = item.and_then(|signed| self.check(&signed, now_s).map(|()| signed));
                match checked {
                    Ok(signed) => match accounts.keys.get(&signed.iou.payer_key) {
                        Some((payer_id, key)) => {
                            let signing_bytes = signed.iou.signing_bytes();
                            candidates.push(Candidate {
                                index,
                                signed,
                                signing_bytes,
                                payer_id: payer_id.clone(),
                                key: *key,
                            });
                        }
                        None => results[index] = Some(AppendResult::rejected(Outcome::UnknownPayer)),
                    },
                    Err(outcome) => results[index] = Some(AppendResult::rejected(outcome)),
                }
            }
        }
        let mut verified = Vec::with_capacity(candidates.len());
        for (candidate, valid) in self.verify(candidates).await? {
            if valid {
                verified.push(candidate);
            } else {
                results[candidate.index] = Some(AppendResult::rejected(Outcome::BadSignature));
            }
        }
        if !verified.is_empty() {
            for (index, result) in self.commit(&verified).await? {
                results[index] = Some(result);
            }
        }
        Ok(results.into_iter().map(|r| r.expect("every IOU gets exactly one result")).collect())
    }

    /// Batch verification in chunks over all cores, as Tally's pipeline does.
    async fn verify(&self, candidates: Vec<Candidate>) -> Result<Vec<(Candidate, bool)>, Status> {
        if !self.verify || candidates.is_empty() {
            return Ok(candidates.into_iter().map(|c| (c, true)).collect());
        }
        let chunk_len = candidates.len().div_ceil(self.verify_threads).max(VERIFY_CHUNK_IOUS_MIN);
        let mut chunks = Vec::new();
        let mut rest = candidates;
        while rest.len() > chunk_len {
            let tail = rest.split_off(chunk_len);
            chunks.push(rest);
            rest = tail;
        }
        chunks.push(rest);
        let jobs = chunks.into_iter().map(|chunk| async {
            let _permit = self.verify_permits.acquire().await.map_err(|_| Status::unavailable("stopping"))?;
            tokio::task::spawn_blocking(move || {
                let items: Vec<VerifyItem> = chunk
                    .iter()
                    .map(|c| VerifyItem { key: &c.key, message: &c.signing_bytes, signature: &c.signed.signature })
                    .collect();
                let valid = verify_many(&items);
                drop(items);
                chunk.into_iter().zip(valid).collect::<Vec<_>>()
            })
            .await
            .map_err(|e| Status::internal(format!("verification task: {e}")))
        });
        let mut out = Vec::new();
        for chunk in futures::future::join_all(jobs).await {
            out.extend(chunk?);
        }
        Ok(out)
    }

    /// One transaction for the batch's verified IOUs; answers after COMMIT.
    async fn commit(&self, verified: &[Candidate]) -> Result<Vec<(usize, AppendResult)>, Status> {
        let conn = self.pool.get().await?;
        let now_ms = tally_ledger::unix_now_ms();
        // The optimistic path needs: every account check passes and no
        // (key, nonce) twice in the batch.
        let simple = {
            let accounts = self.accounts.read().expect("accounts lock");
            let mut seen = HashSet::with_capacity(verified.len());
            verified.iter().all(|c| {
                c.signed.iou.expires_at_s > now_ms / 1000
                    && self.account_check(&accounts, c).is_ok()
                    && seen.insert((c.signed.iou.payer_key, c.signed.iou.nonce))
            })
        };
        let mut last_error = None;
        for attempt in 0..TRANSACTION_ATTEMPTS_MAX {
            let outcome = if simple && attempt == 0 {
                self.optimistic(&conn, verified, now_ms).await
            } else {
                self.exact(&conn, verified, now_ms).await
            };
            match outcome {
                Ok(Some(results)) => return Ok(results),
                // Rolled back: a replay, a limit, or a race with a concurrent batch.
                Ok(None) => continue,
                Err(error) => {
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                    if !is_retryable(&error) {
                        return Err(internal(error));
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.map_or_else(|| Status::unavailable("the batch's transaction kept failing"), internal))
    }

    /// Insert, upsert, add exposure; commit if nothing deviated (`None`: rolled back).
    async fn optimistic(
        &self,
        conn: &Conn,
        verified: &[Candidate],
        now_ms: u64,
    ) -> Result<Option<Vec<(usize, AppendResult)>>, tokio_postgres::Error> {
        let plan = Plan { accepted: verified.iter().collect() };
        let (begin, applied) = tokio::join!(conn.client.batch_execute("BEGIN"), self.apply(conn, &plan, now_ms));
        begin?;
        let Applied::Done(seqs) = applied? else {
            conn.client.batch_execute("ROLLBACK").await?;
            return Ok(None);
        };
        conn.client.batch_execute("COMMIT").await?;
        Ok(Some(accepted_results(&plan, &seqs)))
    }

    /// Writes `plan`: rows, aggregates, exposure. `Deviated` when a row was a
    /// replay or a payer went past its limit.
    async fn apply(&self, conn: &Conn, plan: &Plan<'_>, now_ms: u64) -> Result<Applied, tokio_postgres::Error> {
        let n = plan.accepted.len();
        let mut keys = Vec::with_capacity(n);
        let mut nonces = Vec::with_capacity(n);
        let mut amounts = Vec::with_capacity(n);
        let mut expires = Vec::with_capacity(n);
        let mut bytes = Vec::with_capacity(n);
        let mut signatures = Vec::with_capacity(n);
        let mut aggregates: BTreeMap<(&str, &str, &str), (u128, i64)> = BTreeMap::new();
        for c in &plan.accepted {
            let iou = &c.signed.iou;
            keys.push(&iou.payer_key[..]);
            nonces.push(&iou.nonce[..]);
            amounts.push(iou.amount.to_string());
            expires.push(i64::try_from(iou.expires_at_s).unwrap_or(i64::MAX));
            bytes.push(&c.signing_bytes[..]);
            signatures.push(&c.signed.signature[..]);
            let entry = aggregates.entry((&c.payer_id, &iou.payee, &iou.asset)).or_default();
            entry.0 = entry.0.checked_add(u128::from(iou.amount)).expect("a batch's sum fits u128");
            entry.1 += 1;
        }
        let (mut agg_payers, mut agg_payees, mut agg_assets, mut agg_sums, mut agg_counts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((payer, payee, asset), (sum, count)) in &aggregates {
            agg_payers.push(*payer);
            agg_payees.push(*payee);
            agg_assets.push(*asset);
            agg_sums.push(sum.to_string());
            agg_counts.push(*count);
        }
        let exposure = plan.exposure();
        let credit_payers: Vec<&str> = exposure.keys().map(|(p, _)| *p).collect();
        let credit_assets: Vec<&str> = exposure.keys().map(|(_, a)| *a).collect();
        let credit_deltas: Vec<String> = exposure.values().map(u128::to_string).collect();
        let accepted_at_ms = i64::try_from(now_ms).unwrap_or(i64::MAX);
        // Pipelined: sent back to back, answered in order.
        let insert_params: [&(dyn ToSql + Sync); 8] =
            [&keys, &nonces, &EPOCH, &accepted_at_ms, &amounts, &expires, &bytes, &signatures];
        let upsert_params: [&(dyn ToSql + Sync); 6] =
            [&EPOCH, &agg_payers, &agg_payees, &agg_assets, &agg_sums, &agg_counts];
        let lock_params: [&(dyn ToSql + Sync); 2] = [&credit_payers, &credit_assets];
        let add_params: [&(dyn ToSql + Sync); 3] = [&credit_payers, &credit_assets, &credit_deltas];
        let (inserted, upserted, locked, added) = tokio::join!(
            conn.client.query(&conn.insert_ious, &insert_params),
            conn.client.execute(&conn.upsert_aggregates, &upsert_params),
            conn.client.query(&conn.lock_credit, &lock_params),
            conn.client.query(&conn.add_exposure, &add_params),
        );
        let (inserted, _, locked, added) = (inserted?, upserted?, locked?, added?);
        let within_limits = locked.len() == exposure.len()
            && added.len() == exposure.len()
            && added.iter().all(|row| row.get::<_, bool>(0));
        if inserted.len() != n || !within_limits {
            return Ok(Applied::Deviated);
        }
        let mut seqs = HashMap::with_capacity(n);
        for row in inserted {
            let seq: i64 = row.get(0);
            let key: &[u8] = row.get(1);
            let nonce: &[u8] = row.get(2);
            seqs.insert(
                (key.try_into().expect("32-byte key"), nonce.try_into().expect("16-byte nonce")),
                u64::try_from(seq).expect("identity is positive"),
            );
        }
        Ok(Applied::Done(seqs))
    }

    /// Decides each IOU in order exactly as Tally's writer does: replay,
    /// expiry, payer, asset, payee, credit (credit rows locked first).
    async fn exact(
        &self,
        conn: &Conn,
        verified: &[Candidate],
        now_ms: u64,
    ) -> Result<Option<Vec<(usize, AppendResult)>>, tokio_postgres::Error> {
        conn.client.batch_execute("BEGIN").await?;
        let mut pairs: Vec<(&str, &str)> =
            verified.iter().map(|c| (&*c.payer_id, c.signed.iou.asset.as_str())).collect();
        pairs.sort_unstable();
        pairs.dedup();
        let pair_payers: Vec<&str> = pairs.iter().map(|(p, _)| *p).collect();
        let pair_assets: Vec<&str> = pairs.iter().map(|(_, a)| *a).collect();
        let keys: Vec<&[u8]> = verified.iter().map(|c| &c.signed.iou.payer_key[..]).collect();
        let nonces: Vec<&[u8]> = verified.iter().map(|c| &c.signed.iou.nonce[..]).collect();
        let lock_params: [&(dyn ToSql + Sync); 2] = [&pair_payers, &pair_assets];
        let existing_params: [&(dyn ToSql + Sync); 2] = [&keys, &nonces];
        let (locked, existing) = tokio::join!(
            conn.client.query(&conn.lock_credit, &lock_params),
            conn.client.query(&conn.existing, &existing_params),
        );
        let mut credit: HashMap<(String, String), (u128, u128)> = HashMap::new();
        for row in locked? {
            // Unparseable (never: numeric(39, 0) fits u128) fails closed: no credit.
            let limit = row.get::<_, &str>(2).parse::<u128>().unwrap_or(0);
            let owed = row.get::<_, &str>(3).parse::<u128>().unwrap_or(u128::MAX);
            credit.insert((row.get(0), row.get(1)), (limit, owed));
        }
        let mut originals: HashMap<IouId, Original> = HashMap::new();
        for row in existing? {
            let key: &[u8] = row.get(0);
            let nonce: &[u8] = row.get(1);
            let seq: i64 = row.get(2);
            let epoch: i64 = row.get(3);
            let signing_bytes: Vec<u8> = row.get(4);
            let signature: &[u8] = row.get(5);
            let commitment =
                CommitmentId { seq: u64::try_from(seq).unwrap_or(0), hash: commitment_hash(&signing_bytes, signature) };
            originals.insert(
                (key.try_into().expect("32-byte key"), nonce.try_into().expect("16-byte nonce")),
                (commitment, u64::try_from(epoch).unwrap_or(0), signing_bytes),
            );
        }

        let mut decided: Vec<(usize, Option<AppendResult>)> = Vec::with_capacity(verified.len());
        // In-batch replays point at the position of the accepted original.
        let mut staged: HashMap<([u8; 32], [u8; 16]), usize> = HashMap::new();
        let mut replays_of: Vec<(usize, usize)> = Vec::new();
        let mut plan = Plan { accepted: Vec::new() };
        {
            let accounts = self.accounts.read().expect("accounts lock");
            for (position, c) in verified.iter().enumerate() {
                let iou = &c.signed.iou;
                let id = (iou.payer_key, iou.nonce);
                if let Some((commitment, epoch, original)) = originals.get(&id) {
                    decided.push((c.index, Some(replay_answer(*commitment, *epoch, original, &c.signing_bytes))));
                    continue;
                }
                if let Some(&first) = staged.get(&id) {
                    if verified[first].signing_bytes == c.signing_bytes {
                        replays_of.push((position, first));
                        decided.push((c.index, None));
                    } else {
                        decided.push((c.index, Some(AppendResult::rejected(Outcome::Conflict))));
                    }
                    continue;
                }
                let verdict = if iou.expires_at_s <= now_ms / 1000 {
                    Err(Outcome::Expired)
                } else {
                    self.account_check(&accounts, c)
                };
                if let Err(outcome) = verdict {
                    decided.push((c.index, Some(AppendResult::rejected(outcome))));
                    continue;
                }
                let (limit, owed) = credit.get(&(c.payer_id.to_string(), iou.asset.clone())).copied().unwrap_or((0, 0));
                match owed.checked_add(u128::from(iou.amount)) {
                    Some(after) if after <= limit => {
                        credit.insert((c.payer_id.to_string(), iou.asset.clone()), (limit, after));
                        staged.insert(id, position);
                        plan.accepted.push(c);
                        decided.push((c.index, None));
                    }
                    _ => decided.push((c.index, Some(AppendResult::rejected(Outcome::CreditLimitExceeded)))),
                }
            }
        }
        let seqs = if plan.accepted.is_empty() {
            HashMap::new()
        } else {
            match self.apply(conn, &plan, now_ms).await? {
                Applied::Done(seqs) => seqs,
                Applied::Deviated => {
                    // A concurrent batch accepted one of these nonces since
                    // our look-up: roll back and decide again.
                    conn.client.batch_execute("ROLLBACK").await?;
                    return Ok(None);
                }
            }
        };
        conn.client.batch_execute("COMMIT").await?;
        let mut by_position: HashMap<usize, AppendResult> = HashMap::new();
        for c in &plan.accepted {
            let seq = seqs[&(c.signed.iou.payer_key, c.signed.iou.nonce)];
            let position = staged[&(c.signed.iou.payer_key, c.signed.iou.nonce)];
            by_position.insert(position, accepted(c, seq));
        }
        for (position, first) in replays_of {
            let original = by_position[&first];
            by_position.insert(position, AppendResult { outcome: Outcome::Duplicate, ..original });
        }
        Ok(Some(
            decided
                .into_iter()
                .enumerate()
                .map(|(position, (index, result))| (index, result.unwrap_or_else(|| by_position[&position])))
                .collect(),
        ))
    }
}

fn accepted(c: &Candidate, seq: u64) -> AppendResult {
    AppendResult {
        outcome: Outcome::Accepted,
        commitment: Some(CommitmentId { seq, hash: commitment_hash(&c.signing_bytes, &c.signed.signature) }),
        epoch: EPOCH as u64,
        charge: c.signed.iou.amount,
    }
}

fn accepted_results(plan: &Plan<'_>, seqs: &HashMap<([u8; 32], [u8; 16]), u64>) -> Vec<(usize, AppendResult)> {
    plan.accepted.iter().map(|c| (c.index, accepted(c, seqs[&(c.signed.iou.payer_key, c.signed.iou.nonce)]))).collect()
}

/// Tally's rule: the same bytes again are a duplicate of the original
/// acceptance; different bytes under the same nonce are a conflict.
fn replay_answer(commitment: CommitmentId, epoch: u64, original: &[u8], resubmitted: &[u8]) -> AppendResult {
    if original == resubmitted {
        AppendResult { outcome: Outcome::Duplicate, commitment: Some(commitment), epoch, charge: 0 }
    } else {
        AppendResult::rejected(Outcome::Conflict)
    }
}

struct IngestService {
    peer: Arc<Peer>,
    window: usize,
}

async fn process(peer: &Peer, request: SubmitBatchRequest) -> Result<SubmitBatchResponse, Status> {
    let batch_id = request.batch_id;
    let batch = request.ious.into_iter().map(iou_from_proto).collect();
    let results = peer.submit(batch).await?;
    Ok(SubmitBatchResponse { batch_id, results: results.iter().map(result_to_proto).collect() })
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<SubmitBatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn submit_batch(
        &self,
        request: Request<SubmitBatchRequest>,
    ) -> Result<Response<SubmitBatchResponse>, Status> {
        process(&self.peer, request.into_inner()).await.map(Response::new)
    }

    type StreamBatchesStream = ResponseStream;
    type StreamSignedBatchesStream = ResponseStream;

    /// Batch-signed commitments are Tally's own format; the peer is the
    /// per-IOU baseline.
    async fn submit_signed_batch(
        &self,
        _request: Request<SubmitSignedBatchRequest>,
    ) -> Result<Response<SubmitBatchResponse>, Status> {
        Err(Status::unimplemented("the PostgreSQL peer takes per-IOU signatures only"))
    }

    async fn stream_signed_batches(
        &self,
        _request: Request<Streaming<SubmitSignedBatchRequest>>,
    ) -> Result<Response<Self::StreamSignedBatchesStream>, Status> {
        Err(Status::unimplemented("the PostgreSQL peer takes per-IOU signatures only"))
    }

    /// As Tally's: up to `window` batches of a stream in flight, answered in order.
    async fn stream_batches(
        &self,
        request: Request<Streaming<SubmitBatchRequest>>,
    ) -> Result<Response<Self::StreamBatchesStream>, Status> {
        let inbound = request.into_inner();
        let window = self.window;
        let (sender, receiver) = mpsc::channel(window);
        let peer = self.peer.clone();
        tokio::spawn(async move {
            let answers = inbound
                .map(|request| {
                    let peer = peer.clone();
                    async move {
                        match request {
                            Ok(request) => process(&peer, request).await,
                            Err(status) => Err(status),
                        }
                    }
                })
                .buffered(window);
            futures::pin_mut!(answers);
            while let Some(answer) = answers.next().await {
                let failed = answer.is_err();
                if sender.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// The part of Tally's `Admin` service that `tally loadgen --register` calls.
struct AdminService {
    peer: Arc<Peer>,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("the PostgreSQL peer implements only what `tally loadgen --register` calls"))
}

fn is_unique_violation(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn upsert_asset(&self, request: Request<UpsertAssetRequest>) -> Result<Response<AdminResponse>, Status> {
        let asset = request.into_inner().asset.ok_or_else(|| Status::invalid_argument("asset is required"))?;
        let scale = u8::try_from(asset.scale).map_err(|_| Status::invalid_argument("scale is too large"))?;
        tally_core::Asset::new(&asset.code, scale, asset.enabled)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _admin = self.peer.admin_lock.lock().await;
        let conn = self.peer.pool.get().await?;
        let stored = conn
            .client
            .query_one(
                "INSERT INTO assets (code, scale, enabled) VALUES ($1, $2, $3)
                 ON CONFLICT (code) DO UPDATE SET enabled = EXCLUDED.enabled RETURNING scale",
                &[&asset.code, &i32::from(scale), &asset.enabled],
            )
            .await
            .map_err(internal)?;
        if stored.get::<_, i32>(0) != i32::from(scale) {
            return Err(Status::invalid_argument(format!("asset {} keeps its scale", asset.code)));
        }
        self.peer.accounts.write().expect("accounts lock").assets.insert(asset.code, asset.enabled);
        Ok(Response::new(AdminResponse {}))
    }

    async fn list_assets(&self, _request: Request<ListRequest>) -> Result<Response<ListAssetsResponse>, Status> {
        unimplemented()
    }

    async fn register_payer(&self, request: Request<RegisterPayerRequest>) -> Result<Response<AdminResponse>, Status> {
        let request = request.into_inner();
        if request.keys.is_empty() {
            return Err(Status::invalid_argument("a payer has at least one key"));
        }
        let mut keys = Vec::with_capacity(request.keys.len());
        for key in &request.keys {
            let bytes: [u8; 32] =
                key.as_slice().try_into().map_err(|_| Status::invalid_argument("a public key is 32 bytes"))?;
            let parsed = parse_registration_key(&bytes).map_err(|e| Status::invalid_argument(e.to_string()))?;
            keys.push((bytes, parsed));
        }
        let mut limits = Vec::with_capacity(request.credit_limits.len());
        for limit in &request.credit_limits {
            let units = limit.limit.parse::<u128>().map_err(|_| Status::invalid_argument("limit is not a number"))?;
            limits.push((limit.asset.clone(), units.to_string()));
        }
        let _admin = self.peer.admin_lock.lock().await;
        let mut conn = self.peer.pool.get().await?;
        let conn = conn.conn.as_mut().expect("held until drop");
        let tx = conn.client.transaction().await.map_err(internal)?;
        let inserted = tx
            .execute(
                "INSERT INTO payers (id, display_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&request.id, &request.display_name],
            )
            .await
            .map_err(internal)?;
        if inserted == 0 {
            return Err(Status::already_exists(format!("payer {}", request.id)));
        }
        for (bytes, _) in &keys {
            if let Err(error) =
                tx.execute("INSERT INTO payer_keys (key, payer_id) VALUES ($1, $2)", &[&&bytes[..], &request.id]).await
            {
                return Err(if is_unique_violation(&error) {
                    Status::already_exists("a key belongs to another payer")
                } else {
                    internal(error)
                });
            }
        }
        for (asset, limit) in &limits {
            tx.execute(
                "INSERT INTO payer_credit (payer_id, asset, credit_limit) VALUES ($1, $2, $3::text::numeric)",
                &[&request.id, asset, limit],
            )
            .await
            .map_err(internal)?;
        }
        tx.commit().await.map_err(internal)?;
        let mut accounts = self.peer.accounts.write().expect("accounts lock");
        let id: Arc<str> = Arc::from(request.id.as_str());
        for (bytes, parsed) in keys {
            accounts.keys.insert(bytes, (id.clone(), parsed));
        }
        accounts.payers.insert(request.id, false);
        Ok(Response::new(AdminResponse {}))
    }

    async fn add_payer_key(&self, _request: Request<AddPayerKeyRequest>) -> Result<Response<AdminResponse>, Status> {
        unimplemented()
    }

    async fn set_payer_status(
        &self,
        _request: Request<SetPayerStatusRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        unimplemented()
    }

    async fn set_credit_limit(
        &self,
        _request: Request<SetCreditLimitRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        unimplemented()
    }

    async fn list_payers(&self, _request: Request<ListRequest>) -> Result<Response<ListPayersResponse>, Status> {
        unimplemented()
    }

    async fn link_payer(&self, _request: Request<LinkPayerRequest>) -> Result<Response<AdminResponse>, Status> {
        unimplemented()
    }

    async fn set_signature_agent(
        &self,
        _request: Request<SetSignatureAgentRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        unimplemented()
    }

    async fn register_payee(&self, request: Request<RegisterPayeeRequest>) -> Result<Response<AdminResponse>, Status> {
        let payee = request.into_inner().payee.ok_or_else(|| Status::invalid_argument("payee is required"))?;
        let _admin = self.peer.admin_lock.lock().await;
        let conn = self.peer.pool.get().await?;
        let inserted = conn
            .client
            .execute(
                "INSERT INTO payees (id, display_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&payee.id, &payee.display_name],
            )
            .await
            .map_err(internal)?;
        if inserted == 0 {
            return Err(Status::already_exists(format!("payee {}", payee.id)));
        }
        self.peer.accounts.write().expect("accounts lock").payees.insert(payee.id);
        Ok(Response::new(AdminResponse {}))
    }

    async fn set_payee_payout(
        &self,
        _request: Request<SetPayeePayoutRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        unimplemented()
    }

    async fn list_payees(&self, _request: Request<ListRequest>) -> Result<Response<ListPayeesResponse>, Status> {
        unimplemented()
    }

    async fn seal_epoch(&self, _request: Request<SealEpochRequest>) -> Result<Response<SealEpochResponse>, Status> {
        unimplemented()
    }

    async fn revoke_payer_key(
        &self,
        _request: Request<RevokePayerKeyRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        unimplemented()
    }

    async fn set_payee_status(
        &self,
        _request: Request<SetPayeeStatusRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        unimplemented()
    }

    async fn create_query_token(
        &self,
        _request: Request<CreateQueryTokenRequest>,
    ) -> Result<Response<CreateQueryTokenResponse>, Status> {
        unimplemented()
    }

    async fn revoke_query_token(
        &self,
        _request: Request<RevokeQueryTokenRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        unimplemented()
    }

    async fn list_query_tokens(
        &self,
        _request: Request<ListRequest>,
    ) -> Result<Response<ListQueryTokensResponse>, Status> {
        unimplemented()
    }
}

/// Loads the in-memory copy of the accounts from the tables.
async fn load_accounts(client: &Client) -> anyhow::Result<Accounts> {
    let mut accounts = Accounts::default();
    for row in client.query("SELECT id, suspended FROM payers", &[]).await? {
        accounts.payers.insert(row.get(0), row.get(1));
    }
    for row in client.query("SELECT key, payer_id FROM payer_keys", &[]).await? {
        let key: &[u8] = row.get(0);
        let bytes: [u8; 32] = key.try_into()?;
        let payer: &str = row.get(1);
        accounts.keys.insert(bytes, (Arc::from(payer), parse_registration_key(&bytes)?));
    }
    for row in client.query("SELECT code, enabled FROM assets", &[]).await? {
        accounts.assets.insert(row.get(0), row.get(1));
    }
    for row in client.query("SELECT id FROM payees", &[]).await? {
        accounts.payees.insert(row.get(0));
    }
    Ok(accounts)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let pg = args.pg.clone().ok_or_else(|| anyhow::anyhow!("--pg is required"))?;
    anyhow::ensure!(!args.admin_token.is_empty(), "--admin-token is required");
    anyhow::ensure!(args.connections > 0 && args.stream_batches_inflight_max > 0, "sizes must be positive");
    let mut conns = Vec::with_capacity(args.connections);
    {
        let (setup, connection) = tokio_postgres::connect(&pg, NoTls).await?;
        let task = tokio::spawn(connection);
        if args.fresh {
            setup.batch_execute(DROP).await?;
        }
        setup.batch_execute(SCHEMA).await?;
        drop(setup);
        let _ = task.await;
    }
    for _ in 0..args.connections {
        conns.push(Conn::open(&pg).await?);
    }
    let accounts = load_accounts(&conns[0].client).await?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let peer = Arc::new(Peer {
        network: args.network.clone(),
        validity: ValidityPolicy::default(),
        verify: !args.no_verify,
        verify_threads: cores,
        verify_permits: Semaphore::new(cores),
        batch_ious_max: args.batch_ious_max,
        accounts: RwLock::new(accounts),
        pool: Pool { idle: Mutex::new(conns), permits: Semaphore::new(args.connections) },
        admin_lock: tokio::sync::Mutex::new(()),
    });

    let listener = tokio::net::TcpListener::bind(args.grpc_addr).await?;
    let local_addr = listener.local_addr()?;
    // As Tally's listener: TCP_NODELAY on every accepted socket.
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            let _ = stream.set_nodelay(true);
        }
        accepted
    });
    let ingest = IngestServer::new(IngestService { peer: peer.clone(), window: args.stream_batches_inflight_max })
        .max_decoding_message_size(8 * 1024 * 1024);
    let admin = AdminServer::with_interceptor(
        AdminService { peer: peer.clone() },
        AdminAuth::new(&args.admin_token).expect("a non-empty admin token"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(256)
            .add_service(ingest)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    if let Some(path) = &args.ready_file {
        let ready = serde_json::json!({ "grpc_addr": local_addr.to_string(), "pid": std::process::id() });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready.to_string())?;
        std::fs::rename(&tmp, path)?;
    }
    eprintln!(
        "pg_peer: serving Ingest on {local_addr} over PostgreSQL ({} connections, verification {})",
        args.connections,
        if args.no_verify { "off" } else { "on" }
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// The same allocator, with the same options, as `tally serve`, so the
/// comparison is of designs, not of mallocs.
#[path = "../src/allocator.rs"]
mod allocator;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.bench {
        // `cargo test --all-targets` runs bench targets without `--bench`:
        // the peer needs a PostgreSQL server, which scripts/bench.sh starts.
        println!("pg_peer: run by scripts/bench.sh (or `cargo bench --bench pg_peer -- --pg ...`)");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}
