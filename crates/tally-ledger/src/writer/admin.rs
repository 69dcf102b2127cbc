//! Admin decisions: assets, payers and their keys, payees, links, signature
//! agents, query tokens, epochs and notices.
//!
//! Each command either refuses with a typed [`AdminError`] before it stages
//! anything or touches the writer's state, or stages its writes (as journal
//! effects, [`super::group::Group::stage`]) and updates the state. The writer
//! then journals it with its actor ([`super::WriterCore::apply_journaled`]).

use ed25519_dalek::VerifyingKey;
use tally_core::account::{
    DISPLAY_NAME_LEN_MAX, PAYER_KEYS_MAX, PAYOUT_DESTINATION_LEN_MAX, SIGNATURE_AGENT_LEN_MAX, is_valid_account_id,
    is_valid_signature_agent,
};
use tally_core::verify::parse_registration_key;
use tally_core::{Asset, Payee, Payer, PayerStatus, PublicKeyBytes};

use super::WriterCore;
use super::group::Group;
use crate::command::{AdminCommand, AdminError, AdminReply};
use crate::journal::EffectCf;
use crate::layout::*;
use crate::tokens::{QueryScope, QueryToken, TOKEN_NAME_LEN_MAX};

impl WriterCore {
    fn stage_account<T: serde::Serialize>(&self, group: &mut Group, prefix: &[u8], id: &[u8], record: &T) {
        group.stage(EffectCf::Accounts, account_key(prefix, id), Some(encode_bincode(record)));
    }

    fn payer(&self, payer_id: &str) -> Result<&Payer, AdminError> {
        self.state.payers.get(payer_id).ok_or_else(|| AdminError::NotFound(format!("payer {payer_id}")))
    }

    /// Stages the payer record and replaces the state's copy.
    fn put_payer(&mut self, group: &mut Group, payer: Payer) {
        self.stage_account(group, ACCOUNT_PAYER_PREFIX, payer.id.as_bytes(), &payer);
        self.state.payers.insert(payer.id.clone(), payer);
    }

    fn put_payee(&mut self, group: &mut Group, payee: Payee) {
        self.stage_account(group, ACCOUNT_PAYEE_PREFIX, payee.id.as_bytes(), &payee);
        self.state.payees.insert(payee.id.clone(), payee);
    }

    fn check_new_key(&self, group: &Group, key: &PublicKeyBytes) -> Result<VerifyingKey, AdminError> {
        let parsed =
            parse_registration_key(key).map_err(|e| AdminError::Invalid(format!("key {}: {e}", hex::encode(key))))?;
        if let Some(owner) = self.state.key_owner.get(key) {
            let revoked = self.state.payers.get(owner).is_some_and(|p| p.is_revoked(key));
            let state = if revoked { " (revoked; a key is never reused)" } else { "" };
            return Err(AdminError::AlreadyExists(format!("key {} belongs to payer {owner}{state}", hex::encode(key))));
        }
        debug_assert!(!group.new_keys.iter().any(|k| k.as_bytes() == key));
        Ok(parsed)
    }

    fn put_raw_key(&mut self, group: &mut Group, key: &PublicKeyBytes, payer_id: &str) {
        group.stage(EffectCf::Accounts, account_key(ACCOUNT_KEY_PREFIX, key), Some(payer_id.as_bytes().to_vec()));
        self.state.key_owner.insert(*key, payer_id.to_owned());
    }

    pub(super) fn apply_admin(&mut self, group: &mut Group, command: AdminCommand) -> Result<AdminReply, AdminError> {
        debug_assert!(!group.has_effects(), "a command starts with nothing staged");
        match command {
            AdminCommand::UpsertAsset(asset) => {
                Asset::new(&asset.code, asset.scale, asset.enabled).map_err(|e| AdminError::Invalid(e.to_string()))?;
                if let Some(existing) = self.state.assets.get(&asset.code)
                    && existing.scale != asset.scale
                {
                    return Err(AdminError::Invalid(format!(
                        "asset {} has scale {}; a scale never changes once registered",
                        asset.code, existing.scale
                    )));
                }
                self.stage_account(group, ACCOUNT_ASSET_PREFIX, asset.code.as_bytes(), &asset);
                self.state.assets.insert(asset.code.clone(), asset);
                Ok(AdminReply::Done)
            }
            AdminCommand::RegisterPayer { id, display_name, keys, credit_limits } => {
                check_id_and_name("payer", &id, &display_name)?;
                if self.state.payers.contains_key(&id) {
                    return Err(AdminError::AlreadyExists(format!("payer {id}")));
                }
                if keys.is_empty() || keys.len() > PAYER_KEYS_MAX {
                    return Err(AdminError::Invalid(format!("a payer has 1..={PAYER_KEYS_MAX} keys")));
                }
                let mut parsed = Vec::with_capacity(keys.len());
                for (i, key) in keys.iter().enumerate() {
                    if keys[..i].contains(key) {
                        return Err(AdminError::Invalid(format!("key {} listed twice", hex::encode(key))));
                    }
                    parsed.push(self.check_new_key(group, key)?);
                }
                let mut payer = Payer {
                    id: id.clone(),
                    display_name,
                    status: PayerStatus::Active,
                    keys,
                    credit_limits: vec![],
                    settles_with: None,
                    signature_agent: None,
                    revoked_keys: vec![],
                };
                for (asset, limit) in credit_limits {
                    if !self.state.assets.contains_key(&asset) {
                        return Err(AdminError::NotFound(format!("asset {asset}")));
                    }
                    payer.set_credit_limit(&asset, limit);
                }
                for key in payer.keys.clone() {
                    self.put_raw_key(group, &key, &id);
                }
                group.new_keys.extend(parsed);
                self.put_payer(group, payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::AddPayerKey { payer_id, key } => {
                let parsed = self.check_new_key(group, &key)?;
                let mut payer = self.payer(&payer_id)?.clone();
                if payer.keys.len() >= PAYER_KEYS_MAX {
                    return Err(AdminError::Invalid(format!("payer {payer_id} already has {PAYER_KEYS_MAX} keys")));
                }
                payer.keys.push(key);
                self.put_raw_key(group, &key, &payer_id);
                group.new_keys.push(parsed);
                self.put_payer(group, payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::RevokePayerKey { payer_id, key } => {
                let mut payer = self.payer(&payer_id)?.clone();
                if payer.is_revoked(&key) {
                    return Ok(AdminReply::Done);
                }
                let Some(position) = payer.keys.iter().position(|k| *k == key) else {
                    return Err(AdminError::NotFound(format!("key {} of payer {payer_id}", hex::encode(key))));
                };
                // The key stays bound to the payer (`key/` index) so its old IOUs
                // stay attributable and it can never be registered again.
                payer.keys.remove(position);
                payer.revoked_keys.push((key, group.now_ms));
                self.put_payer(group, payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::SetPayerStatus { payer_id, status } => {
                let mut payer = self.payer(&payer_id)?.clone();
                payer.status = status;
                self.put_payer(group, payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::SetCreditLimit { payer_id, asset, limit } => {
                if !self.state.assets.contains_key(&asset) {
                    return Err(AdminError::NotFound(format!("asset {asset}")));
                }
                let mut payer = self.payer(&payer_id)?.clone();
                payer.set_credit_limit(&asset, limit);
                self.put_payer(group, payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::RegisterPayee(payee) => {
                check_id_and_name("payee", &payee.id, &payee.display_name)?;
                check_payout(&payee.payout_destination)?;
                if self.state.payees.contains_key(&payee.id) {
                    return Err(AdminError::AlreadyExists(format!("payee {}", payee.id)));
                }
                self.put_payee(group, payee);
                Ok(AdminReply::Done)
            }
            AdminCommand::SetPayeePayout { payee_id, payout_destination } => {
                check_payout(&payout_destination)?;
                let mut payee = self.payee(&payee_id)?.clone();
                payee.payout_destination = payout_destination;
                self.put_payee(group, payee);
                Ok(AdminReply::Done)
            }
            AdminCommand::SetPayeeStatus { payee_id, status } => {
                let mut payee = self.payee(&payee_id)?.clone();
                payee.status = status;
                self.put_payee(group, payee);
                Ok(AdminReply::Done)
            }
            AdminCommand::LinkPayer { payer_id, payee_id } => {
                if let Some(payee_id) = &payee_id
                    && !self.state.payees.contains_key(payee_id)
                {
                    return Err(AdminError::NotFound(format!("payee {payee_id}")));
                }
                let mut payer = self.payer(&payer_id)?.clone();
                payer.settles_with = payee_id;
                self.put_payer(group, payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::SetSignatureAgent { payer_id, signature_agent } => {
                if let Some(agent) = &signature_agent {
                    if !is_valid_signature_agent(agent) {
                        return Err(AdminError::Invalid(format!(
                            "signature agent must be an https:// or http:// URL of at most \
                             {SIGNATURE_AGENT_LEN_MAX} printable ASCII bytes"
                        )));
                    }
                    // Bounded by the number of payers, and only on this admin path.
                    if let Some(owner) = self
                        .state
                        .payers
                        .values()
                        .find(|p| p.id != payer_id && p.signature_agent.as_deref() == Some(agent.as_str()))
                    {
                        return Err(AdminError::AlreadyExists(format!(
                            "signature agent {agent} belongs to payer {}",
                            owner.id
                        )));
                    }
                }
                let mut payer = self.payer(&payer_id)?.clone();
                let previous = std::mem::replace(&mut payer.signature_agent, signature_agent.clone());
                if let Some(previous) = previous
                    && signature_agent.as_ref() != Some(&previous)
                {
                    group.stage(EffectCf::Accounts, agent_index_key(&previous), None);
                }
                if let Some(agent) = &signature_agent {
                    group.stage(EffectCf::Accounts, agent_index_key(agent), Some(payer_id.as_bytes().to_vec()));
                }
                self.put_payer(group, payer);
                Ok(AdminReply::Done)
            }
            AdminCommand::CreateQueryToken { name, scope, digest } => {
                if !is_valid_account_id(&name) || name.len() > TOKEN_NAME_LEN_MAX {
                    return Err(AdminError::Invalid(
                        "token name must be 1..=64 characters of A-Z a-z 0-9 . _ -".into(),
                    ));
                }
                match &scope {
                    QueryScope::All => {}
                    QueryScope::Payer(id) => {
                        self.payer(id)?;
                    }
                    QueryScope::Payee(id) => {
                        self.payee(id)?;
                    }
                }
                if self.state.tokens.contains_key(&name) {
                    return Err(AdminError::AlreadyExists(format!("query token {name}")));
                }
                if self.state.tokens.values().any(|existing| *existing == digest) {
                    return Err(AdminError::AlreadyExists("a query token with this secret".into()));
                }
                let token = QueryToken { name: name.clone(), scope, created_at_ms: group.now_ms, revoked_at_ms: None };
                self.stage_account(group, ACCOUNT_QUERY_TOKEN_PREFIX, &digest, &token);
                self.state.tokens.insert(name, digest);
                Ok(AdminReply::Done)
            }
            AdminCommand::RevokeQueryToken { name } => {
                let digest =
                    *self.state.tokens.get(&name).ok_or_else(|| AdminError::NotFound(format!("query token {name}")))?;
                let key = account_key(ACCOUNT_QUERY_TOKEN_PREFIX, &digest);
                let stored = match group.staged_get(EffectCf::Accounts, &key) {
                    Some(value) => value.map(<[u8]>::to_vec),
                    None => self
                        .ledger
                        .db
                        .get_cf(self.ledger.cf(CF_ACCOUNTS), &key)
                        .map_err(|e| AdminError::Storage(e.to_string()))?,
                };
                let stored =
                    stored.ok_or_else(|| AdminError::Inconsistent(format!("query token {name} has no record")))?;
                let mut token: QueryToken =
                    decode_bincode("query token", &stored).map_err(|e| AdminError::Inconsistent(e.to_string()))?;
                if token.revoked_at_ms.is_some() {
                    return Ok(AdminReply::Done);
                }
                token.revoked_at_ms = Some(group.now_ms);
                self.stage_account(group, ACCOUNT_QUERY_TOKEN_PREFIX, &digest, &token);
                Ok(AdminReply::Done)
            }
            AdminCommand::RecordNotice(_) => Ok(AdminReply::Done),
            AdminCommand::Settlement(command) => self.apply_settlement(group, command),
            AdminCommand::SealEpoch => {
                let open = self.state.open_epoch.clone().expect("an epoch is always open");
                let sealed = EpochRecord {
                    status: EpochStatus::Sealed,
                    sealed_at_ms: Some(group.now_ms),
                    seq_last: Some(self.state.head_seq),
                    ..open
                };
                let opened = EpochRecord {
                    epoch: sealed.epoch + 1,
                    status: EpochStatus::Open,
                    opened_at_ms: group.now_ms,
                    sealed_at_ms: None,
                    seq_first: self.state.head_seq + 1,
                    seq_last: None,
                };
                group.stage(EffectCf::Epochs, sealed.epoch.to_be_bytes().to_vec(), Some(encode_bincode(&sealed)));
                group.stage(EffectCf::Epochs, opened.epoch.to_be_bytes().to_vec(), Some(encode_bincode(&opened)));
                self.state.open_epoch = Some(opened.clone());
                Ok(AdminReply::Sealed { sealed, opened })
            }
        }
    }

    fn payee(&self, payee_id: &str) -> Result<&Payee, AdminError> {
        self.state.payees.get(payee_id).ok_or_else(|| AdminError::NotFound(format!("payee {payee_id}")))
    }
}

fn check_id_and_name(kind: &str, id: &str, display_name: &str) -> Result<(), AdminError> {
    if !is_valid_account_id(id) {
        return Err(AdminError::Invalid(format!("{kind} id must be 1..=64 characters of A-Z a-z 0-9 . _ -")));
    }
    if display_name.len() > DISPLAY_NAME_LEN_MAX {
        return Err(AdminError::Invalid(format!("display name longer than {DISPLAY_NAME_LEN_MAX} bytes")));
    }
    Ok(())
}

/// An empty destination means "not provided yet"; anything else must parse.
fn check_payout(destination: &str) -> Result<(), AdminError> {
    if destination.len() > PAYOUT_DESTINATION_LEN_MAX {
        return Err(AdminError::Invalid(format!("payout destination longer than {PAYOUT_DESTINATION_LEN_MAX} bytes")));
    }
    if !destination.is_empty() {
        tally_core::PayoutDestination::parse(destination).map_err(|e| AdminError::Invalid(e.to_string()))?;
    }
    Ok(())
}
