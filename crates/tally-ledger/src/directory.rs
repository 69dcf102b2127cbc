//! The key directory: registered payer keys, decompressed once.
//!
//! Verification runs before the writer and must not touch the disk, and
//! decompressing an Ed25519 point costs about as much as a third of a
//! verification. The writer publishes every registered key here, already
//! parsed, and the verification stage looks keys up under a read lock.
//! Whether the payer is active, and what it may owe, is decided later by the
//! writer alone: this directory only answers "is this a key we know".

use std::collections::HashMap;
use std::sync::RwLock;

use ed25519_dalek::VerifyingKey;
use tally_core::PublicKeyBytes;

#[derive(Default)]
pub struct KeyDirectory {
    keys: RwLock<HashMap<PublicKeyBytes, VerifyingKey>>,
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
        for key in keys {
            map.insert(key.to_bytes(), key);
        }
    }

    pub fn len(&self) -> usize {
        self.keys.read().expect("key directory lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
