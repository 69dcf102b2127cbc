//! Protobuf ⇄ domain conversions. The only place that knows both shapes.
//!
//! Decoding is total: a protobuf IOU whose byte fields have the wrong length
//! becomes `Err(Outcome::Malformed)` for that IOU alone, never an error for
//! the whole batch and never a panic.

use tally_core::{CommitmentId, Iou, Outcome, SignedIou};
use tally_ledger::AppendResult;

use crate::proto;

/// A protobuf IOU as the pipeline wants it.
pub fn iou_from_proto(iou: proto::Iou) -> Result<SignedIou, Outcome> {
    let payer_key = iou.payer_key.as_slice().try_into().map_err(|_| Outcome::Malformed)?;
    let nonce = iou.nonce.as_slice().try_into().map_err(|_| Outcome::Malformed)?;
    let signature = iou.signature.as_slice().try_into().map_err(|_| Outcome::Malformed)?;
    Ok(SignedIou {
        iou: Iou {
            network: iou.network,
            payer_key,
            payee: iou.payee,
            asset: iou.asset,
            amount: iou.amount,
            nonce,
            issued_at_s: iou.issued_at,
            expires_at_s: iou.expires_at,
            resource: iou.resource,
        },
        signature,
    })
}

/// A protobuf IOU of a batch-signed commitment: its own `signature` must be empty.
pub fn batch_iou_from_proto(iou: proto::Iou) -> Result<Iou, Outcome> {
    if !iou.signature.is_empty() {
        return Err(Outcome::Malformed);
    }
    Ok(Iou {
        network: iou.network,
        payer_key: iou.payer_key.as_slice().try_into().map_err(|_| Outcome::Malformed)?,
        payee: iou.payee,
        asset: iou.asset,
        amount: iou.amount,
        nonce: iou.nonce.as_slice().try_into().map_err(|_| Outcome::Malformed)?,
        issued_at_s: iou.issued_at,
        expires_at_s: iou.expires_at,
        resource: iou.resource,
    })
}

/// A batch-signed request as the pipeline wants it. `None` when its root or
/// signature has the wrong length (every IOU is then `MALFORMED`), or it has
/// more IOUs than a batch statement can count. The payer key is the first
/// IOU's; the pipeline refuses a batch that names two keys.
pub fn signed_batch_from_proto(request: proto::SubmitSignedBatchRequest) -> Option<crate::pipeline::SignedBatch> {
    if request.ious.len() > tally_core::batch::BATCH_IOUS_MAX {
        return None;
    }
    let payer_key = request.ious.first().and_then(|iou| iou.payer_key.as_slice().try_into().ok()).unwrap_or([0; 32]);
    Some(crate::pipeline::SignedBatch {
        payer_key,
        batch_seq: request.batch_seq,
        root: request.root.as_slice().try_into().ok()?,
        signature: request.signature.as_slice().try_into().ok()?,
        ious: request.ious.into_iter().map(batch_iou_from_proto).collect(),
    })
}

pub fn iou_to_proto(signed: &SignedIou) -> proto::Iou {
    let iou = &signed.iou;
    proto::Iou {
        network: iou.network.clone(),
        payer_key: iou.payer_key.to_vec(),
        payee: iou.payee.clone(),
        asset: iou.asset.clone(),
        amount: iou.amount,
        nonce: iou.nonce.to_vec(),
        issued_at: iou.issued_at_s,
        expires_at: iou.expires_at_s,
        resource: iou.resource.clone(),
        signature: signed.signature.to_vec(),
    }
}

pub fn code_to_proto(outcome: Outcome) -> proto::IouCode {
    proto::IouCode::try_from(i32::from(outcome as u8)).expect("proto IouCode mirrors Outcome")
}

pub fn code_from_proto(code: i32) -> Option<Outcome> {
    u8::try_from(code).ok().and_then(Outcome::from_u8)
}

pub fn commitment_to_proto(id: &CommitmentId) -> proto::CommitmentId {
    proto::CommitmentId { seq: id.seq, hash: id.hash.to_vec() }
}

pub fn commitment_from_proto(id: &proto::CommitmentId) -> Option<CommitmentId> {
    Some(CommitmentId { seq: id.seq, hash: id.hash.as_slice().try_into().ok()? })
}

pub fn result_to_proto(result: &AppendResult) -> proto::IouResult {
    proto::IouResult {
        code: code_to_proto(result.outcome) as i32,
        commitment: result.commitment.as_ref().map(commitment_to_proto),
        epoch: result.epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_a_proto_code() {
        for outcome in Outcome::ALL {
            let code = code_to_proto(outcome);
            assert_eq!(code_from_proto(code as i32), Some(outcome));
            assert_eq!(code.as_str_name().trim_start_matches("IOU_CODE_").to_lowercase(), outcome.as_str());
        }
        assert_eq!(code_from_proto(0), None);
    }

    #[test]
    fn wrong_lengths_are_malformed() {
        let good =
            proto::Iou { payer_key: vec![1; 32], nonce: vec![2; 16], signature: vec![3; 64], ..Default::default() };
        assert!(iou_from_proto(good.clone()).is_ok());
        for broken in [
            proto::Iou { payer_key: vec![1; 31], ..good.clone() },
            proto::Iou { nonce: vec![], ..good.clone() },
            proto::Iou { signature: vec![3; 65], ..good.clone() },
        ] {
            assert_eq!(iou_from_proto(broken), Err(Outcome::Malformed));
        }
    }
}
