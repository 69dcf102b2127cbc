//! The gRPC ingest, query and admin services against a real tonic server on
//! 127.0.0.1:0 and a RocksDB ledger in a temporary directory.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::*;
use futures::StreamExt;
use tally_core::{Iou, Outcome};
use tally_ingest::convert::code_from_proto;
use tally_ingest::proto::{self, *};

fn outcome(result: &IouResult) -> Outcome {
    code_from_proto(result.code).expect("a known code")
}

async fn submit(clients: &mut Clients, batch_id: u64, ious: Vec<proto::Iou>) -> Vec<IouResult> {
    let response = clients.ingest.submit_batch(SubmitBatchRequest { batch_id, ious }).await.unwrap().into_inner();
    assert_eq!(response.batch_id, batch_id);
    response.results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_ious_aggregate_by_payer_payee_pair_and_epoch() {
    let mut server = InProcess::start().await;
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 3, 1_000_000_000).await;

    // Deterministic pseudo-random traffic, sent half unary, half streamed.
    let mut expected: BTreeMap<(String, String), (u128, u64)> = BTreeMap::new();
    let mut ious = Vec::new();
    for n in 0..600u64 {
        let payer = (n * 7 % 3) as u8 + 1;
        let payee = if n % 5 < 2 { "site-a.example" } else { "site-b.example" };
        let amount = 1 + (n * 7919) % 1_000;
        let entry = expected.entry((format!("crawler-{payer}"), payee.to_owned())).or_default();
        entry.0 += u128::from(amount);
        entry.1 += 1;
        ious.push(signed_iou(&signer(payer), payee, amount, nonce(1, n)));
    }
    let streamed = ious.split_off(300);
    for (i, chunk) in ious.chunks(100).enumerate() {
        let results = submit(&mut c, i as u64, chunk.to_vec()).await;
        assert!(results.iter().all(|r| outcome(r) == Outcome::Accepted));
    }
    let requests: Vec<SubmitBatchRequest> = streamed
        .chunks(50)
        .enumerate()
        .map(|(i, chunk)| SubmitBatchRequest { batch_id: 100 + i as u64, ious: chunk.to_vec() })
        .collect();
    let mut responses = c.ingest.stream_batches(futures::stream::iter(requests)).await.unwrap().into_inner();
    let mut batch_ids = Vec::new();
    while let Some(response) = responses.next().await {
        let response = response.unwrap();
        assert!(response.results.iter().all(|r| outcome(r) == Outcome::Accepted));
        assert!(response.results.iter().all(|r| r.epoch == 1 && r.commitment.is_some()));
        batch_ids.push(response.batch_id);
    }
    assert_eq!(batch_ids, (100..106).collect::<Vec<_>>(), "answers arrive in request order");

    let all = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner();
    let got: BTreeMap<(String, String), (u128, u64)> =
        all.rows.iter().map(|r| ((r.payer.clone(), r.payee.clone()), (r.amount.parse().unwrap(), r.count))).collect();
    assert_eq!(got, expected);
    assert!(all.rows.iter().all(|r| r.epoch == 1 && r.asset == "USD" && r.scale == 6));

    let by_payee = c
        .query
        .balances(BalancesRequest { payee: "site-a.example".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let expected_a: u128 = expected.iter().filter(|((_, p), _)| p == "site-a.example").map(|(_, (s, _))| s).sum();
    assert_eq!(by_payee.rows.iter().map(|r| r.amount.parse::<u128>().unwrap()).sum::<u128>(), expected_a);
    assert!(by_payee.rows.iter().all(|r| r.payee == "site-a.example"));

    let pair = c
        .query
        .balances(BalancesRequest {
            payer: "crawler-2".into(),
            payee: "site-b.example".into(),
            epoch: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pair.rows.len(), 1);
    assert_eq!(
        (pair.rows[0].amount.parse::<u128>().unwrap(), pair.rows[0].count),
        expected[&("crawler-2".to_owned(), "site-b.example".to_owned())]
    );

    let limited = c.query.balances(BalancesRequest { limit: 2, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!((limited.rows.len(), limited.truncated), (2, true));

    // Sealing moves new IOUs to epoch 2; epoch filters see each alone.
    let sealed = c.admin.seal_epoch(SealEpochRequest {}).await.unwrap().into_inner();
    assert_eq!((sealed.sealed_epoch, sealed.sealed_seq_last, sealed.opened_epoch), (1, 600, 2));
    let later = submit(&mut c, 999, vec![signed_iou(&signer(1), "site-a.example", 5, nonce(2, 0))]).await;
    assert_eq!((outcome(&later[0]), later[0].epoch), (Outcome::Accepted, 2));
    let epoch_two = c.query.balances(BalancesRequest { epoch: 2, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(epoch_two.rows.len(), 1);
    assert_eq!(epoch_two.rows[0].amount, "5");
    let epochs = c.query.epochs(EpochsRequest {}).await.unwrap().into_inner().epochs;
    assert_eq!(epochs.iter().map(|e| e.status.as_str()).collect::<Vec<_>>(), ["sealed", "open"]);

    // A stored IOU can be fetched back with its commitment.
    let fetched = c
        .query
        .get_iou(GetIouRequest {
            payer_key: signer(1).verifying_key().to_bytes().to_vec(),
            nonce: nonce(2, 0).to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.found);
    assert_eq!(fetched.commitment.unwrap().seq, 601);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_result_code_comes_from_the_input_that_should_produce_it() {
    let mut server = InProcess::start().await;
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 3, 1_000).await;
    c.admin
        .upsert_asset(UpsertAssetRequest { asset: Some(proto::Asset { code: "EUR".into(), scale: 2, enabled: false }) })
        .await
        .unwrap();
    c.admin
        .set_payer_status(SetPayerStatusRequest {
            payer_id: "crawler-3".into(),
            status: proto::PayerStatus::Suspended as i32,
        })
        .await
        .unwrap();
    c.admin
        .revoke_payer_key(RevokePayerKeyRequest {
            payer_id: "crawler-2".into(),
            key: signer(2).verifying_key().to_bytes().to_vec(),
        })
        .await
        .unwrap();
    c.admin
        .set_payee_status(SetPayeeStatusRequest {
            payee_id: "site-b.example".into(),
            status: proto::PayeeStatus::Suspended as i32,
        })
        .await
        .unwrap();
    let key = signer(1);
    let now = now_s();
    let base = Iou {
        network: NETWORK.into(),
        payer_key: key.verifying_key().to_bytes(),
        payee: "site-a.example".into(),
        asset: "USD".into(),
        amount: 10,
        nonce: nonce(9, 0),
        issued_at_s: now,
        expires_at_s: now + 600,
        resource: String::new(),
    };
    let with = |n: u64, change: &dyn Fn(&mut Iou)| {
        let mut iou = base.clone();
        iou.nonce = nonce(9, n);
        change(&mut iou);
        signed_with(&key, iou)
    };
    let mut bad_signature = with(3, &|_| {});
    bad_signature.signature[0] ^= 0x40;
    let mut malformed = with(15, &|_| {});
    malformed.nonce.truncate(15);

    let cases: Vec<(Outcome, proto::Iou)> = vec![
        (Outcome::Accepted, with(1, &|_| {})),
        (Outcome::Duplicate, with(1, &|_| {})),
        (Outcome::Conflict, with(1, &|i| i.amount = 11)),
        (Outcome::BadSignature, bad_signature),
        (
            Outcome::UnknownPayer,
            signed_with(
                &signer(42),
                Iou { payer_key: signer(42).verifying_key().to_bytes(), nonce: nonce(9, 4), ..base.clone() },
            ),
        ),
        (
            Outcome::SuspendedPayer,
            signed_with(
                &signer(3),
                Iou { payer_key: signer(3).verifying_key().to_bytes(), nonce: nonce(9, 5), ..base.clone() },
            ),
        ),
        (Outcome::UnknownPayee, with(6, &|i| i.payee = "nobody.example".into())),
        (Outcome::UnknownAsset, with(7, &|i| i.asset = "JPY".into())),
        (Outcome::AssetDisabled, with(8, &|i| i.asset = "EUR".into())),
        (
            Outcome::Expired,
            with(9, &|i| {
                i.issued_at_s = now - 700;
                i.expires_at_s = now - 100;
            }),
        ),
        (
            Outcome::NotYetValid,
            with(10, &|i| {
                i.issued_at_s = now + 300;
                i.expires_at_s = now + 900;
            }),
        ),
        (Outcome::ValidityTooLong, with(11, &|i| i.expires_at_s = now + 2 * 86_400)),
        (Outcome::InvalidAmount, with(12, &|i| i.amount = 0)),
        (Outcome::CreditLimitExceeded, with(13, &|i| i.amount = 991)),
        (Outcome::WrongNetwork, with(14, &|i| i.network = "tally:elsewhere".into())),
        (Outcome::Malformed, malformed),
        (
            Outcome::KeyRevoked,
            signed_with(
                &signer(2),
                Iou { payer_key: signer(2).verifying_key().to_bytes(), nonce: nonce(9, 16), ..base.clone() },
            ),
        ),
        (Outcome::PayeeSuspended, with(17, &|i| i.payee = "site-b.example".into())),
    ];
    let covered: HashSet<Outcome> = cases.iter().map(|(o, _)| *o).collect();
    assert_eq!(covered.len(), Outcome::ALL.len(), "every outcome has a case");

    // All in one batch: per-IOU results, never one error for the batch.
    let results = submit(&mut c, 1, cases.iter().map(|(_, iou)| iou.clone()).collect()).await;
    for ((expected, _), result) in cases.iter().zip(&results) {
        assert_eq!(outcome(result), *expected);
        assert_eq!(result.commitment.is_some(), expected.is_success(), "{expected:?}");
    }
    assert_eq!(results[0].commitment, results[1].commitment, "a duplicate answers with the original commitment");

    // Only the one accepted IOU is in the ledger.
    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].amount.as_str(), rows[0].count), ("10", 1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_idempotent_across_unary_and_streams() {
    let mut server = InProcess::start().await;
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 1, 1_000_000).await;
    let original = signed_iou(&signer(1), "site-a.example", 25, nonce(3, 1));
    let first = submit(&mut c, 1, vec![original.clone()]).await;
    assert_eq!(outcome(&first[0]), Outcome::Accepted);

    let request = SubmitBatchRequest { batch_id: 2, ious: vec![original.clone(), original.clone()] };
    let mut responses = c.ingest.stream_batches(futures::stream::iter(vec![request])).await.unwrap().into_inner();
    let again = responses.next().await.unwrap().unwrap().results;
    assert!(again.iter().all(|r| outcome(r) == Outcome::Duplicate && r.commitment == first[0].commitment));

    let mut tampered = original.clone();
    tampered.resource = "https://site-a.example/other".into();
    let tampered = signed_with(&signer(1), tally_ingest::convert::iou_from_proto(tampered).unwrap().iou);
    assert_eq!(outcome(&submit(&mut c, 3, vec![tampered]).await[0]), Outcome::Conflict);

    let rows = c.query.balances(BalancesRequest::default()).await.unwrap().into_inner().rows;
    assert_eq!((rows[0].amount.as_str(), rows[0].count), ("25", 1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credit_limit_holds_exactly_under_concurrent_streams() {
    let mut server = InProcess::start().await;
    let mut c = clients(&server.addr).await;
    // 7-unit IOUs against a limit of 7,003: exactly 1,000 fit, from any mix
    // of streams, however the writer interleaves them.
    register_basics(&mut c.admin, 1, 7_003).await;
    let streams = 16u64;
    let per_stream = 250u64; // 4,000 IOUs offered, 4x the limit
    let mut tasks = Vec::new();
    for s in 0..streams {
        let addr = server.addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut ingest = tally_ingest::proto::ingest_client::IngestClient::new(connect(&addr).await);
            let requests: Vec<SubmitBatchRequest> = (0..per_stream)
                .collect::<Vec<_>>()
                .chunks(25)
                .enumerate()
                .map(|(b, ns)| SubmitBatchRequest {
                    batch_id: b as u64,
                    ious: ns.iter().map(|n| signed_iou(&signer(1), "site-b.example", 7, nonce(100 + s, *n))).collect(),
                })
                .collect();
            let mut responses = ingest.stream_batches(futures::stream::iter(requests)).await.unwrap().into_inner();
            let mut counts: BTreeMap<Outcome, u64> = BTreeMap::new();
            while let Some(response) = responses.next().await {
                for result in response.unwrap().results {
                    *counts.entry(outcome(&result)).or_default() += 1;
                }
            }
            counts
        }));
    }
    let mut totals: BTreeMap<Outcome, u64> = BTreeMap::new();
    for task in tasks {
        for (o, n) in task.await.unwrap() {
            *totals.entry(o).or_default() += n;
        }
    }
    assert_eq!(totals.get(&Outcome::Accepted), Some(&1_000));
    assert_eq!(totals.get(&Outcome::CreditLimitExceeded), Some(&3_000));
    let exposure = c.query.exposure(ExposureRequest { payer: "crawler-1".into() }).await.unwrap().into_inner();
    assert_eq!((exposure.rows[0].owed.as_str(), exposure.rows[0].limit.as_str()), ("7000", "7003"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_its_token_and_limits_are_enforced() {
    let mut server = InProcess::start().await;
    let channel = connect(&server.addr).await;
    let mut anonymous = tally_ingest::proto::admin_client::AdminClient::new(channel.clone());
    let status = anonymous.list_payers(ListRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let mut wrong = tally_ingest::proto::admin_client::AdminClient::with_interceptor(
        channel.clone(),
        TokenInterceptor("not-the-token".into()),
    );
    assert_eq!(wrong.list_payers(ListRequest {}).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert!(!status.message().contains(TOKEN), "errors never echo the token");

    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 1, 10).await;
    let mut identity = vec![0u8; 32];
    identity[0] = 1;
    let weak = c
        .admin
        .register_payer(RegisterPayerRequest {
            id: "weak".into(),
            display_name: String::new(),
            keys: vec![identity],
            credit_limits: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(weak.code(), tonic::Code::InvalidArgument);
    assert!(weak.message().contains("small order"), "{}", weak.message());
    let again = c
        .admin
        .register_payee(RegisterPayeeRequest {
            payee: Some(proto::Payee { id: "site-a.example".into(), ..Default::default() }),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);

    // A batch over the limit is refused whole, before any work.
    let ious: Vec<proto::Iou> = (0..4_097).map(|n| signed_iou(&signer(1), "site-a.example", 1, nonce(5, n))).collect();
    let status = c.ingest.submit_batch(SubmitBatchRequest { batch_id: 1, ious }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Health reports SERVING for the server and for each service.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "tally.v1.Ingest", "tally.v1.Query", "tally.v1.Admin"] {
        let response =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(
            response.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_tally_services_on_v1_and_v1alpha() {
    let mut server = InProcess::start().await;
    let channel = connect(&server.addr).await;
    let wanted = ["tally.v1.Ingest", "tally.v1.Query", "tally.v1.Admin", "grpc.health.v1.Health"];

    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut client = ServerReflectionClient::new(channel.clone());
        let mut responses =
            client.server_reflection_info(futures::stream::iter(vec![request])).await.unwrap().into_inner();
        let response = responses.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("v1 reflection answers a service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for name in wanted {
            assert!(names.iter().any(|n| n == name), "v1 lists {name}: {names:?}");
        }
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut client = ServerReflectionClient::new(channel);
        let mut responses =
            client.server_reflection_info(futures::stream::iter(vec![request])).await.unwrap().into_inner();
        let response = responses.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("v1alpha reflection answers a service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for name in wanted {
            assert!(names.iter().any(|n| n == name), "v1alpha lists {name}: {names:?}");
        }
    }
    server.stop().await;
}

/// Failure 4 of issue 15, end to end through gRPC: a retry of an accepted
/// IOU that arrives after its `expires_at` (its nonce still kept) is told it
/// was charged (`DUPLICATE`, the original commitment), never `EXPIRED`. The
/// stateless validity pre-check used to answer `EXPIRED` before the ledger
/// was asked; the client then believed it had not been charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_retry_is_answered_with_its_original_commitment() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let now_ms = Arc::new(AtomicU64::new(1_800_000_000_000));
    let clock = {
        let now_ms = now_ms.clone();
        Arc::new(move || now_ms.load(Ordering::SeqCst)) as tally_ledger::Clock
    };
    let mut server = InProcess::start_with_clock(clock).await;
    let mut c = clients(&server.addr).await;
    register_basics(&mut c.admin, 1, 1_000_000).await;
    let key = signer(1);
    let issued_at_s = 1_800_000_000;
    let iou = Iou {
        network: NETWORK.into(),
        payer_key: key.verifying_key().to_bytes(),
        payee: "site-a.example".into(),
        asset: "USD".into(),
        amount: 250,
        nonce: nonce(70, 1),
        issued_at_s,
        expires_at_s: issued_at_s + 60,
        resource: "https://site-a.example/late".into(),
    };
    let first = submit(&mut c, 1, vec![signed_with(&key, iou.clone())]).await;
    assert_eq!(outcome(&first[0]), Outcome::Accepted);

    // Two minutes later (inside the replay index's retention margin).
    now_ms.store((issued_at_s + 120) * 1000, Ordering::SeqCst);
    let late = submit(&mut c, 2, vec![signed_with(&key, iou.clone())]).await;
    assert_eq!(outcome(&late[0]), Outcome::Duplicate, "told it was charged: {late:?}");
    assert_eq!(late[0].commitment, first[0].commitment);
    assert!(first[0].commitment.is_some());
    // A fresh IOU with the same validity is expired, as it should be.
    let fresh = Iou { nonce: nonce(70, 2), ..iou };
    let refused = submit(&mut c, 3, vec![signed_with(&key, fresh)]).await;
    assert_eq!(outcome(&refused[0]), Outcome::Expired);
    server.stop().await;
}
