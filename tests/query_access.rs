//! Who may read what: the Query service against a real engine and tonic
//! server on 127.0.0.1.
//!
//! Every query needs a token. The admin token reads everything; a query
//! token (`CreateQueryToken`, `tally token create`) is scoped to one payee,
//! one payer, or all. A scoped token sees only its own rows: a filter naming
//! someone else is `PERMISSION_DENIED`, someone else's IOU or receipt is not
//! found (so a token cannot probe which commitments exist), and a revoked
//! token reads nothing. Balance reads are bounded by the aggregates they
//! examine, matching or not, so a filter that matches nothing cannot make
//! the server walk the whole ledger in one call.

mod common;

use std::collections::BTreeSet;

use common::*;
use tally_ingest::proto::{
    self, BalancesRequest, CreateQueryTokenRequest, EpochsRequest, ExposureRequest, GetIouRequest, ListRequest,
    RevokeQueryTokenRequest, SubmitBatchRequest,
};
use tally_ledger::BalanceFilter;
use tonic::Code;

const PAYERS: u8 = 2;
const PAYEES: [&str; 2] = ["site-a.example", "site-b.example"];

/// One IOU of every (payer, payee) pair: crawler-1 and crawler-2 each pay
/// site-a and site-b. Returns (payer seed, payee, nonce, commitment hash) of each.
async fn submit_every_pair(clients: &mut Clients) -> Vec<(u8, &'static str, [u8; 16], Vec<u8>)> {
    let mut sent = Vec::new();
    let mut ious = Vec::new();
    for payer in 1..=PAYERS {
        for (n, payee) in PAYEES.iter().enumerate() {
            let nonce = nonce(u64::from(payer), n as u64);
            ious.push(signed_iou(&signer(payer), payee, 1_000 * u64::from(payer) + n as u64, nonce));
            sent.push((payer, *payee, nonce, Vec::new()));
        }
    }
    let results = clients.ingest.submit_batch(SubmitBatchRequest { batch_id: 1, ious }).await.unwrap().into_inner();
    assert!(results.results.iter().all(|r| r.code == proto::IouCode::Accepted as i32), "{results:?}");
    for (sent, result) in sent.iter_mut().zip(results.results) {
        sent.3 = result.commitment.expect("an accepted IOU has a commitment").hash;
    }
    sent
}

async fn create_token(admin: &mut Admin, name: &str, scope: &str) -> String {
    let request = CreateQueryTokenRequest { name: name.into(), scope: scope.into() };
    admin.create_query_token(request).await.unwrap().into_inner().token
}

/// Every (payer, payee) pair the token's unfiltered balance read returns.
async fn visible_pairs(query: &mut Query) -> BTreeSet<(String, String)> {
    let page = query.balances(BalancesRequest::default()).await.unwrap().into_inner();
    assert!(page.next_page_token.is_empty(), "four rows fit one page");
    page.rows.into_iter().map(|r| (r.payer, r.payee)).collect()
}

fn pair(payer: u8, payee: &str) -> (String, String) {
    (format!("crawler-{payer}"), payee.to_owned())
}

fn iou_request(payer: u8, nonce: [u8; 16]) -> GetIouRequest {
    GetIouRequest { payer_key: signer(payer).verifying_key().to_bytes().to_vec(), nonce: nonce.to_vec() }
}

#[tokio::test]
async fn a_payee_token_reads_only_that_payees_rows() {
    let mut engine = InProcess::start().await;
    let mut clients = clients(&engine.addr).await;
    register_basics(&mut clients.admin, PAYERS, 1_000_000).await;
    let sent = submit_every_pair(&mut clients).await;
    let token = create_token(&mut clients.admin, "site-a-books", "payee:site-a.example").await;
    assert!(token.starts_with("tq_") && token.len() == 3 + 64, "{token}");
    let mut site_a = query_with(connect(&engine.addr).await, &token);

    // Unfiltered: its own rows only (the admin token sees all four).
    assert_eq!(visible_pairs(&mut site_a).await, BTreeSet::from([pair(1, PAYEES[0]), pair(2, PAYEES[0])]));
    assert_eq!(visible_pairs(&mut clients.query).await.len(), 4);
    // Filtered by a payer: still only its own rows of that payer.
    let by_payer = BalancesRequest { payer: "crawler-2".into(), ..Default::default() };
    let rows = site_a.balances(by_payer).await.unwrap().into_inner().rows;
    assert_eq!(rows.iter().map(|r| (r.payer.clone(), r.payee.clone())).collect::<Vec<_>>(), vec![pair(2, PAYEES[0])]);
    assert_eq!(rows[0].amount, "2000", "the amount, in smallest units");
    assert_eq!(rows[0].scale, 6);
    // Naming another payee is refused, not silently narrowed.
    let other = BalancesRequest { payee: PAYEES[1].into(), ..Default::default() };
    let status = site_a.balances(other).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // A payer's exposure is the payer's business.
    let status = site_a.exposure(ExposureRequest { payer: "crawler-1".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Epochs are public to every token.
    assert!(!site_a.epochs(EpochsRequest {}).await.unwrap().into_inner().epochs.is_empty());

    // IOUs and receipts: its own are found, with the commitment; others' are
    // not found, exactly like IOUs that do not exist.
    for (payer, payee, nonce, commitment) in &sent {
        let iou = site_a.get_iou(iou_request(*payer, *nonce)).await.unwrap().into_inner();
        let receipt = site_a.get_receipt(iou_request(*payer, *nonce)).await.unwrap().into_inner();
        let own = *payee == PAYEES[0];
        assert_eq!(iou.found, own, "crawler-{payer} → {payee}");
        assert_eq!(receipt.found, own, "crawler-{payer} → {payee}");
        if own {
            let signed = iou.iou.unwrap();
            assert_eq!(signed.payee, *payee);
            assert_eq!(iou.charged, signed.amount, "charged in full");
            assert_eq!(&iou.commitment.unwrap().hash, commitment, "the commitment it was accepted with");
            assert_eq!(&receipt.commitment.unwrap().hash, commitment);
        } else {
            assert_eq!(iou.iou, None, "nothing of someone else's IOU leaks");
            assert!(receipt.signature.is_empty() && receipt.iou_signing_bytes.is_empty());
        }
    }
    engine.stop().await;
}

#[tokio::test]
async fn a_payer_token_reads_only_that_payers_rows_and_exposure() {
    let mut engine = InProcess::start().await;
    let mut clients = clients(&engine.addr).await;
    register_basics(&mut clients.admin, PAYERS, 1_000_000).await;
    let sent = submit_every_pair(&mut clients).await;
    let token = create_token(&mut clients.admin, "crawler-2-ops", "payer:crawler-2").await;
    let mut crawler_2 = query_with(connect(&engine.addr).await, &token);

    assert_eq!(visible_pairs(&mut crawler_2).await, BTreeSet::from([pair(2, PAYEES[0]), pair(2, PAYEES[1])]));
    let other = BalancesRequest { payer: "crawler-1".into(), ..Default::default() };
    assert_eq!(crawler_2.balances(other).await.unwrap_err().code(), Code::PermissionDenied);
    let own = crawler_2.exposure(ExposureRequest { payer: "crawler-2".into() }).await.unwrap().into_inner();
    assert_eq!(own.rows.len(), 1, "{own:?}");
    assert_eq!((own.rows[0].owed.as_str(), own.rows[0].limit.as_str()), ("4001", "1000000"));
    let status = crawler_2.exposure(ExposureRequest { payer: "crawler-1".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    for (payer, payee, nonce, _) in &sent {
        let found = crawler_2.get_iou(iou_request(*payer, *nonce)).await.unwrap().into_inner().found;
        assert_eq!(found, *payer == 2, "crawler-{payer} → {payee}");
    }
    engine.stop().await;
}

#[tokio::test]
async fn no_token_a_wrong_token_or_a_revoked_token_reads_nothing() {
    let mut engine = InProcess::start().await;
    let mut clients = clients(&engine.addr).await;
    register_basics(&mut clients.admin, PAYERS, 1_000_000).await;
    submit_every_pair(&mut clients).await;
    let channel = connect(&engine.addr).await;

    let mut anonymous = proto::query_client::QueryClient::new(channel.clone());
    let status = anonymous.balances(BalancesRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = anonymous.epochs(EpochsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut guessing = query_with(channel.clone(), &format!("tq_{}", "0".repeat(64)));
    assert_eq!(guessing.balances(BalancesRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);

    let token = create_token(&mut clients.admin, "temp", "all").await;
    let mut reader = query_with(channel.clone(), &token);
    assert_eq!(visible_pairs(&mut reader).await.len(), 4, "an all-scope token reads everything");
    // A query token is not an admin token.
    let mut as_admin =
        proto::admin_client::AdminClient::with_interceptor(channel.clone(), TokenInterceptor(token.clone()));
    let status = as_admin.list_payers(ListRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    clients.admin.revoke_query_token(RevokeQueryTokenRequest { name: "temp".into() }).await.unwrap();
    let status = reader.balances(BalancesRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "a revoked token reads nothing: {status:?}");
    // The name is never reused, and the listing shows state, never secrets.
    let again = CreateQueryTokenRequest { name: "temp".into(), scope: "all".into() };
    assert_eq!(clients.admin.create_query_token(again).await.unwrap_err().code(), Code::AlreadyExists);
    let listed = clients.admin.list_query_tokens(ListRequest {}).await.unwrap().into_inner().tokens;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].scope.as_str()), ("temp", "all"));
    assert_ne!(listed[0].revoked_at_ms, 0);
    assert!(!format!("{listed:?}").contains(&token[3..]), "the secret is shown once, at creation");
    // Scopes must name a registered account and parse.
    for scope in ["payee:nobody.example", "payer:nobody", "everything", ""] {
        let request = CreateQueryTokenRequest { name: "bad".into(), scope: scope.into() };
        let status = clients.admin.create_query_token(request).await.unwrap_err();
        assert!(matches!(status.code(), Code::NotFound | Code::InvalidArgument), "{scope:?}: {status:?}");
    }
    engine.stop().await;
}

/// Balance reads are bounded by records examined (each epoch visited and
/// each aggregate read): a filter that matches nothing answers empty after
/// at most the bound, with a page token to go on; paging through visits
/// every aggregate exactly once.
#[tokio::test]
async fn a_filter_matching_nothing_examines_a_bounded_number_of_aggregates() {
    let mut engine = InProcess::start().await;
    let mut clients = clients(&engine.addr).await;
    register_basics(&mut clients.admin, PAYERS, 1_000_000).await;
    submit_every_pair(&mut clients).await;

    // Through gRPC: an asset nobody uses examines the one epoch and every
    // aggregate of the ledger once (1 + 4 here, far under the server's
    // bound) and finds nothing.
    let nope = BalancesRequest { asset: "NOPE".into(), ..Default::default() };
    let page = clients.query.balances(nope).await.unwrap().into_inner();
    assert!(page.rows.is_empty() && page.next_page_token.is_empty() && !page.truncated);
    assert_eq!(page.scanned, 5);
    assert!(page.scanned as usize <= tally_ingest::grpc::query::BALANCE_SCANNED_MAX);

    // The bound itself, on the ledger the server reads: at most 4 examined
    // per call (the epoch, then 3 aggregates), then a cursor; the second
    // call visits the epoch again and the one aggregate left.
    let ledger = &engine.engine.as_ref().unwrap().ledger;
    let filter = BalanceFilter { asset: Some("NOPE".into()), ..Default::default() };
    let first = ledger.balances(&filter, 10, 4, None).unwrap();
    assert_eq!((first.rows.len(), first.scanned), (0, 4));
    let cursor = first.next.expect("stopped by the bound: a cursor to go on");
    let second = ledger.balances(&filter, 10, 4, Some(&cursor)).unwrap();
    assert_eq!((second.rows.len(), second.scanned, second.next), (0, 2, None));

    // Many empty epochs cost the budget too: seal 6 more (no IOUs in them)
    // and a budget of 3 stops at an epoch boundary, with a cursor that
    // resumes there; paging ends after every epoch was visited once more.
    for _ in 0..6 {
        clients.admin.seal_epoch(tally_ingest::proto::SealEpochRequest {}).await.unwrap();
    }
    let mut after: Option<Vec<u8>> = None;
    let (mut calls, mut examined) = (0, 0);
    loop {
        let page = ledger.balances(&filter, 10, 3, after.as_deref()).unwrap();
        assert!(page.rows.is_empty() && page.scanned <= 3, "{:?}", page.scanned);
        examined += page.scanned;
        calls += 1;
        assert!(calls <= 10, "paging must end");
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    // 7 epochs (1 with IOUs, 5 sealed empty, the open one) and 4 aggregates,
    // plus one revisit of each epoch a page resumed in.
    assert!(examined >= 7 + 4 && calls >= 4, "{examined} examined in {calls} calls");

    // Paging one row at a time through gRPC yields every row exactly once.
    let mut seen = Vec::new();
    let mut request = BalancesRequest { limit: 1, ..Default::default() };
    for _ in 0..10 {
        let page = clients.query.balances(request.clone()).await.unwrap().into_inner();
        seen.extend(page.rows.into_iter().map(|r| (r.payer, r.payee)));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let distinct: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!((seen.len(), distinct.len()), (4, 4), "{seen:?}");
    // A page token is bound to its filter's shape: garbage is refused.
    let garbage = BalancesRequest { page_token: vec![0xFF; 9], ..Default::default() };
    assert_eq!(clients.query.balances(garbage).await.unwrap_err().code(), Code::InvalidArgument);
    engine.stop().await;
}

/// The CLI: `tally token create --payee` prints a token once; `tally balance
/// --token` with it shows that payee's rows only.
#[test]
fn the_cli_creates_a_payee_token_and_reads_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("ledger"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut clients = clients(&server.addr).await;
        register_basics(&mut clients.admin, PAYERS, 1_000_000).await;
        submit_every_pair(&mut clients).await;
    });
    let url = format!("http://{}", server.addr);
    let admin = ["--server", url.as_str(), "--admin-token", TOKEN];
    let create: Vec<&str> =
        ["token", "create", "site-b-books", "--payee", "site-b.example"].into_iter().chain(admin).collect();
    let (ok, stdout, stderr) = run_tally(&create);
    assert!(ok, "{stderr}");
    let token = stdout.trim().to_owned();
    assert!(token.starts_with("tq_"), "{stdout}");
    assert!(stderr.contains("shown once"), "{stderr}");

    let (ok, stdout, stderr) = run_tally(&["balance", "--json", "--server", &url, "--token", &token]);
    assert!(ok, "{stderr}");
    let balance: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let payees: BTreeSet<&str> =
        balance["rows"].as_array().unwrap().iter().map(|r| r["payee"].as_str().unwrap()).collect();
    assert_eq!(payees, BTreeSet::from(["site-b.example"]), "{balance}");
    assert_eq!(balance["rows"].as_array().unwrap().len(), 2);

    let (ok, _, stderr) = run_tally(&["balance", "--payee", "site-a.example", "--server", &url, "--token", &token]);
    assert!(!ok && stderr.contains("cannot read"), "{stderr}");
    let (ok, stdout, _) = run_tally(&["token", "list", "--json", "--server", &url, "--admin-token", TOKEN]);
    assert!(ok && stdout.contains("payee:site-b.example") && !stdout.contains(&token[3..]), "{stdout}");
    server.kill();
}
