//! The key directory: registered payer keys, decompressed once.
//!
//! Verification runs before the writer and must not touch the disk, and
//! decompressing an Ed25519 point costs about as much as a third of a
//! verification. The writer publishes every registered key here, already
//! parsed, and the verification stage looks keys up under a read lock.
//! Whether the payer is active, and what it may owe, is decided later by the
//! writer alone: this directory only answers "is this a key we know".
//!
//! It also answers Web Bot Auth's question "which key has this `keyid`":
//! the RFC 7638 JWK thumbprint of every key is indexed when it is published.

use std::collections::HashMap;
use std::sync::RwLock;

use ed25519_dalek::VerifyingKey;
use tally_core::PublicKeyBytes;
use tally_core::evidence::jwk_thumbprint;

#[derive(Default)]
pub struct KeyDirectory {
    keys: RwLock<HashMap<PublicKeyBytes, VerifyingKey>>,
    by_thumbprint: RwLock<HashMap<String, PublicKeyBytes>>,
}

impl KeyDirectory {
    /// Looks up many keys under one read lock; `None` for unknown keys.
    pub fn lookup_many<'a>(&self, keys: impl Iterator<Item = &'a PublicKeyBytes>) -> Vec<Option<VerifyingKey>> {
        let map = self.keys.read().expect("key directory lock poisoned");
        keys.map(|key| map.get(key).copied()).collect()
    }

    pub fn lookup(&self, key: &PublicKeyBytes) -> Option<VerifyingKey> {
        self.keys.read().expect("key directory lock poisoned").get(key).copied()
    }

    /// Publishes keys. Called by the writer after the registering batch is
    /// durable, so a key is never usable before its registration is.
    pub(crate) fn publish(&self, keys: impl Iterator<Item = VerifyingKey>) {
        let mut map = self.keys.write().expect("key directory lock poisoned");
        let mut thumbprints = self.by_thumbprint.write().expect("key directory lock poisoned");
        for key in keys {
            thumbprints.insert(jwk_thumbprint(&key.to_bytes()), key.to_bytes());
            map.insert(key.to_bytes(), key);
        }
    }

    /// The registered key whose JWK thumbprint is `keyid`.
    pub fn lookup_thumbprint(&self, keyid: &str) -> Option<PublicKeyBytes> {
        self.by_thumbprint.read().expect("key directory lock poisoned").get(keyid).copied()
    }

    pub fn len(&self) -> usize {
        self.keys.read().expect("key directory lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
