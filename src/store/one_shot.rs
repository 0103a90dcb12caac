//! One-shot updates of a key nobody holds (`update_unleased`): a fair turn
//! per key on this instance, an open with `Fail`, the change, a release.
//!
//! Must not: share a key actor with a session (`open_key` keeps them apart).

#[allow(unused_imports)]
use super::*;

impl<T: Document> Store<T> {
    /// Changes the document of `key` without keeping a session (Roblox's
    /// `UpdateAsync`, PPDB's `update(key, fn)`): takes the lease, loads,
    /// migrates and reconciles as an open does, applies `change`, saves and
    /// releases, answering once durable. A key nobody has stored yet starts
    /// from the template. Refused with `LeaseHeld` while a session holds
    /// the key (here or in another process); another one-shot update of the
    /// same key on this instance is waited for, as is a session of it that
    /// this instance is still opening (then refused if it opened).
    ///
    /// `expected` makes it conditional: `Expect::Version(h)` (HTTP's
    /// `If-Match`) applies only while the stored record is at exactly that
    /// epoch and revision; `Expect::Absent` (HTTP's `If-None-Match: *`)
    /// only creates, decided by the backend in the same step as the
    /// create, across processes too. When the condition fails, nothing
    /// changes and the answer is `PreconditionFailed`. When the save fails,
    /// the change is dropped with the lease and the error answered.
    pub async fn update_unleased<R: Send + 'static>(
        &self,
        key: impl Into<Key>,
        expected: Expect,
        change: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> Result<Updated<R>, Error> {
        self.one_shot(key.into(), expected, move |session| Box::pin(async move { session.update(change).await })).await
    }

    /// [`Store::update_unleased`] that also sets the record's metadata and
    /// user ids (Roblox's `SetAsync` with user ids and `SetMetadata`, and
    /// `UpdateAsync`'s transform, which answers all three): `change` gets
    /// the document and the record's [`RecordParts`] as stored, and what it
    /// leaves in the parts is saved with the document, in the one write.
    pub async fn update_unleased_record<R: Send + 'static>(
        &self,
        key: impl Into<Key>,
        expected: Expect,
        change: impl FnOnce(&mut T, &mut RecordParts) -> R + Send + 'static,
    ) -> Result<Updated<R>, Error> {
        self.one_shot(key.into(), expected, move |session| {
            Box::pin(async move {
                let mut parts =
                    RecordParts { metadata: session.metadata().await?, user_ids: session.user_ids().await? };
                let before = parts.clone();
                let (value, parts) = session
                    .update(move |doc| {
                        let value = change(doc, &mut parts);
                        (value, parts)
                    })
                    .await?;
                if parts.metadata != before.metadata {
                    session.set_metadata(parts.metadata).await?;
                }
                for gone in before.user_ids.iter().filter(|u| !parts.user_ids.contains(u)) {
                    session.remove_user_id(gone).await?;
                }
                for new in parts.user_ids.iter().filter(|u| !before.user_ids.contains(u)) {
                    session.add_user_id(new).await?;
                }
                Ok(value)
            })
        })
        .await
    }

    /// The one-shot procedure around `step`, which changes the open
    /// session before it is saved and released.
    async fn one_shot<R: Send + 'static>(
        &self,
        key: Key,
        expected: Expect,
        step: impl FnOnce(Session<T>) -> std::pin::Pin<Box<dyn Future<Output = Result<R, Error>> + Send>>,
    ) -> Result<Updated<R>, Error> {
        let key = key.0;
        validate_key(&key)?;
        let name = self.shared.name.to_string();
        let failed = || Error::PreconditionFailed { at: KeyId::new(name.clone(), key.clone()) };
        // A cheap look first, so a condition that fails already costs no
        // lease (whose take and give-back would change the record's ETag);
        // again after waiting for our turn, since the update before us may
        // have changed the record: an acquire on a stale condition would
        // move the ETag on for nothing and fail every other writer's too.
        let holds = |record: Option<Record>| match expected {
            Expect::Version(want) => record.is_some_and(|r| r.header == want),
            Expect::Absent => record.is_none(),
            Expect::Anything => true,
        };
        if expected != Expect::Anything && !holds(self.inspect(key.as_str()).await?) {
            return Err(failed());
        }
        let turn = self.one_shot_turn(&key).await?;
        if turn.waited && expected != Expect::Anything && !holds(self.inspect(key.as_str()).await?) {
            return Err(failed());
        }
        let session = self.clone().open_key(key.clone(), Vec::new(), AcquirePolicy::Fail, true).await?;
        let lease = session.lease().await?;
        // The acquire is the one write since the record was read as
        // expected exactly when it moved the header on by one in both parts;
        // a create is the only acquire that answers revision 1.
        let held_as_expected = match expected {
            Expect::Version(b) => lease.epoch == b.epoch + 1 && lease.revision == b.revision + 1,
            Expect::Absent => lease.revision == 1,
            Expect::Anything => true,
        };
        if !held_as_expected {
            let _ = session.close().await;
            return Err(failed());
        }
        let value = match step(session.clone()).await {
            Ok(v) => v,
            Err(e) => {
                let _ = session.close().await;
                return Err(e);
            }
        };
        match session.release(Priority::Normal).await {
            Ok(outcome) => Ok(Updated { value, epoch: lease.epoch, revision: outcome.revision }),
            Err(e) => {
                // No session is left behind holding the key: the caller is
                // told the update failed and may try again.
                let _ = session.close().await;
                Err(e)
            }
        }
    }

    /// Waits until no other one-shot update of `key` runs here (in the
    /// order they asked: a fair lock per key), then holds the turn until
    /// the answer is dropped. Gives up after the contention window.
    async fn one_shot_turn(&self, key: &str) -> Result<OneShotTurn<T>, Error> {
        let gate = self.shared.one_shots().entry(key.to_owned()).or_default().clone();
        let (held, waited) = match gate.clone().try_lock_owned() {
            Ok(held) => (Some(held), false),
            Err(_) => (tokio::time::timeout(CONTENTION_WINDOW, gate.lock_owned()).await.ok(), true),
        };
        let turn = OneShotTurn { store: self.shared.clone(), key: key.to_owned(), held, waited };
        if turn.held.is_none() {
            return Err(Error::LeaseHeld {
                at: KeyId::new(self.shared.name.to_string(), key.to_owned()),
                holder: self.shared.engine.owner.to_string(),
                expires_at_ms: None,
            });
        }
        Ok(turn)
    }
}

/// A one-shot update's turn on its key; given back when dropped.
struct OneShotTurn<T: Document> {
    store: Arc<StoreShared<T>>,
    key: String,
    /// `None` for a wait that timed out (which still tidies the table).
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// Another update of the key ran first.
    waited: bool,
}

impl<T: Document> Drop for OneShotTurn<T> {
    fn drop(&mut self) {
        self.held = None;
        let mut gates = self.store.one_shots();
        // The table keeps a key's lock only while someone holds or awaits it.
        if gates.get(&self.key).is_some_and(|g| Arc::strong_count(g) == 1) {
            gates.remove(&self.key);
        }
    }
}

/// The parts of a record beside its document, as a one-shot update may set
/// them (`Store::update_unleased_record`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordParts {
    /// The metadata (a JSON object).
    pub metadata: Value,
    /// The user ids.
    pub user_ids: Vec<String>,
}

/// What [`Store::update_unleased`] answers: the change's own answer and
/// the record's header once durable (epoch and revision: its `ETag`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated<R> {
    /// What the change returned.
    pub value: R,
    /// The epoch the update held the key under.
    pub epoch: u64,
    /// The revision it made durable.
    pub revision: u64,
}
