//! Join-token records in the distributed store: `{baton}:jt:<sha256 hex>` holds the same
//! JSON record as the data directory's file, and expires with the token (`PXAT`), so an
//! unused token needs no purge. Claiming a record is `DEL`: of any number of replicas
//! redeeming one token, one deletes it.

use redis::Commands as _;

use super::{JoinTokenError, Record};
use crate::shared::SharedStore;

/// Most records `list` and `revoke` look at: a bound on one admin command's work.
const MAX_RECORDS: usize = 100_000;

fn key(hash_hex: &str) -> String {
    SharedStore::key(&format!("jt:{hash_hex}"))
}

fn unavailable(store: &SharedStore, e: &redis::RedisError) -> JoinTokenError {
    JoinTokenError::Shared(store.unavailable(e))
}

/// Stores a new record; it expires with the token.
pub(super) fn insert(
    store: &SharedStore,
    hash_hex: &str,
    record: &Record,
) -> Result<(), JoinTokenError> {
    let json = serde_json::to_vec(record).map_err(|_| JoinTokenError::Random)?;
    let mut conn = store.connection()?;
    let stored: Option<String> = redis::cmd("SET")
        .arg(key(hash_hex))
        .arg(json)
        .arg("NX")
        .arg("PXAT")
        .arg(record.expires_at.saturating_mul(1000))
        .query(&mut *conn)
        .map_err(|e| unavailable(store, &e))?;
    // 256 random bits never collide; a second insert of one hash is a bug or an attack.
    stored.map(drop).ok_or(JoinTokenError::Random)
}

/// The record of `hash_hex`, if it is there.
pub(super) fn get(store: &SharedStore, hash_hex: &str) -> Result<Option<Record>, JoinTokenError> {
    let mut conn = store.connection()?;
    let bytes: Option<Vec<u8>> = conn
        .get(key(hash_hex))
        .map_err(|e| unavailable(store, &e))?;
    Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// Deletes the record of `hash_hex`; says whether this call deleted it.
pub(super) fn claim(store: &SharedStore, hash_hex: &str) -> Result<bool, JoinTokenError> {
    let mut conn = store.connection()?;
    let deleted: u64 = conn
        .del(key(hash_hex))
        .map_err(|e| unavailable(store, &e))?;
    Ok(deleted == 1)
}

/// Every stored record with its hash.
pub(super) fn all(store: &SharedStore) -> Result<Vec<(String, Record)>, JoinTokenError> {
    let mut conn = store.connection()?;
    let pattern = key("*");
    let keys: Vec<String> = conn
        .scan_match::<_, String>(&pattern)
        .map_err(|e| unavailable(store, &e))?
        .take(MAX_RECORDS)
        .collect::<Result<_, _>>()
        .map_err(|e| unavailable(store, &e))?;
    let prefix = key("");
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(chunk)
            .query(&mut *conn)
            .map_err(|e| unavailable(store, &e))?;
        for (name, value) in chunk.iter().zip(values) {
            let (Some(hash), Some(record)) = (
                name.strip_prefix(&prefix),
                value.and_then(|b| serde_json::from_slice::<Record>(&b).ok()),
            ) else {
                continue;
            };
            out.push((hash.to_owned(), record));
        }
    }
    Ok(out)
}
