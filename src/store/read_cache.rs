//! Reads without a lease (Lapis's `read`) and a read-through cache of them
//! (PPDB's `getCached`): a key's document as an open would load it
//! (migrated, reconciled; no hooks, nothing saved), kept for a TTL and
//! dropped as soon as a change notice for the key arrives (from this
//! process or, on PostgreSQL, another), so a cached read is never older
//! than the last notice plus the bus's delay, and never older than the TTL.
//!
//! Must not: take leases or write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::error::{Error, KeyId};
use crate::storage::NoticeKind;
use crate::store::{validate_key, Store};
use crate::types::Document;

/// The cached answers and how many invalidations happened: a read that
/// raced an invalidation is not kept (it may predate the change).
struct Cached<T> {
    map: HashMap<String, (Instant, Option<T>)>,
    generation: u64,
}

type Entries<T> = Mutex<Cached<T>>;

impl<T: Document> Store<T> {
    /// The stored document of `key` as an open would load it (migrated and
    /// reconciled, not saved, no hooks run), without a lease; `None` when
    /// nothing is stored. A read, so it may be older than what a holder
    /// has in memory.
    pub async fn read(&self, key: &str) -> Result<Option<T>, Error> {
        validate_key(key)?;
        let Some(rec) = self.inspect(key).await? else { return Ok(None) };
        let doc = crate::lease::current_document(self.def(), key, &rec)?;
        serde_json::from_value(doc).map(Some).map_err(|e| Error::Deserialize {
            at: KeyId::new(self.name().to_owned(), key.to_owned()),
            message: e.to_string(),
        })
    }

    /// A read-through cache of [`read`](Self::read) keeping answers for
    /// `ttl`, invalidated by change notices. Call inside the engine's
    /// runtime (it starts a task that ends with the cache).
    pub fn read_cache(&self, ttl: Duration) -> ReadCache<T> {
        let entries: Arc<Entries<T>> = Arc::new(Mutex::new(Cached { map: HashMap::new(), generation: 0 }));
        let weak = Arc::downgrade(&entries);
        let notices = self.engine().backend.notices().subscribe();
        let store = self.name().to_owned();
        actix::spawn(invalidate(weak, store, notices));
        ReadCache { store: self.clone(), ttl, entries }
    }
}

/// Drops cached keys the notice bus says changed, until the cache is gone.
async fn invalidate<T: Document>(
    entries: Weak<Entries<T>>,
    store: String,
    mut notices: tokio::sync::broadcast::Receiver<crate::storage::Notice>,
) {
    loop {
        let notice = notices.recv().await;
        let Some(entries) = entries.upgrade() else { return };
        let mut cached = entries.lock().unwrap_or_else(|p| p.into_inner());
        match notice {
            Ok(n) if n.kind == NoticeKind::Resync => cached.map.clear(),
            Ok(n) if n.store == store => {
                cached.map.remove(&n.key);
            }
            Ok(_) => continue,
            // Notices were missed: anything may have changed.
            Err(RecvError::Lagged(_)) => cached.map.clear(),
            Err(RecvError::Closed) => return,
        }
        cached.generation += 1;
    }
}

/// See [`Store::read_cache`]. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct ReadCache<T: Document> {
    store: Store<T>,
    ttl: Duration,
    entries: Arc<Entries<T>>,
}

impl<T: Document> ReadCache<T> {
    /// `key`'s document, from the cache while fresh, else read (and kept).
    pub async fn get(&self, key: &str) -> Result<Option<T>, Error> {
        let now = Instant::now();
        let generation = {
            let cached = self.lock();
            if let Some((at, doc)) = cached.map.get(key) {
                if now.duration_since(*at) < self.ttl {
                    return Ok(doc.clone());
                }
            }
            cached.generation
        };
        let doc = self.store.read(key).await?;
        let mut cached = self.lock();
        if cached.generation == generation {
            cached.map.insert(key.to_owned(), (now, doc.clone()));
        }
        Ok(doc)
    }

    /// Forgets `key` (the next `get` reads).
    pub fn invalidate(&self, key: &str) {
        let mut cached = self.lock();
        cached.map.remove(key);
        cached.generation += 1;
    }

    /// How many keys are cached.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached<T>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}
