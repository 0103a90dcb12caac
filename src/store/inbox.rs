//! Messages to keys (ProfileStore's `MessageAsync`): anyone may post a JSON
//! message to any key, held or not, loaded or not; the key's holder reads
//! them, in order, and acknowledges them, which removes them durably.
//! Delivery is at least once: a message stays until acknowledged.
//!
//! The messages of key K in store S are one record, key K of the store
//! `S:inbox` (a name reserved for this), changed only by one-shot updates
//! (`update_unleased`), never by a session. So posting never waits for the
//! key's holder and fencing covers the inbox as it covers any record; each
//! change publishes a notice, which tells the holder (in this process or,
//! on PostgreSQL, in another) that messages wait.
//!
//! Deleting a key deletes its inbox first (`delete_inbox`, called by
//! `Store::delete`), so messages never outlive the key they were for.
//!
//! Must not: touch the key's own record or session.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, KeyId};
use crate::retry::{Contention, CONTENTION_WINDOW};
use crate::session::Session;
pub use crate::store::INBOX_SUFFIX;
use crate::store::{Store, StoreSpec};
use crate::types::{Document, Message};

/// A store's message delivery to the keys open here.
pub(crate) struct InboxState<T: Document> {
    /// Called for each message to a key open here (`Store::on_message`).
    handler: Mutex<Option<crate::store::MessageHandler<T>>>,
    /// Whether the task delivering messages to open keys runs.
    watched: AtomicBool,
    /// Keys whose messages are being delivered, and whether another
    /// delivery was asked meanwhile (one delivery per key at a time, so a
    /// message is not handed over twice by two racing deliveries).
    deliveries: Mutex<HashMap<String, bool>>,
}

impl<T: Document> Default for InboxState<T> {
    fn default() -> Self {
        Self { handler: Mutex::new(None), watched: AtomicBool::new(false), deliveries: Mutex::new(HashMap::new()) }
    }
}

/// Largest message, in bytes as JSON: a message is a notice (a gift, a
/// friend request), not a document; Roblox's MessagingService allows 1 KiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Most messages waiting in one key's inbox (ProfileStore's
/// `MAX_MESSAGE_QUEUE`); a post beyond it is refused with `InboxFull`.
pub const MAX_INBOX_MESSAGES: usize = 1000;

/// The stored inbox of one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inbox {
    /// The id the next message gets, minus one.
    #[serde(default)]
    pub last_id: u64,
    /// Waiting messages, oldest first.
    #[serde(default)]
    pub messages: Vec<Message>,
}

/// The name of `store`'s inbox store.
pub fn inbox_store_name(store: &str) -> String {
    format!("{store}{INBOX_SUFFIX}")
}

impl<T: Document> Store<T> {
    pub(crate) fn inbox(&self) -> Result<Store<Inbox>, Error> {
        Store::register(
            self.engine(),
            &inbox_store_name(self.name()),
            // Messages are acknowledged and gone: an inbox keeps no history.
            StoreSpec::new(Inbox::default()).retention(crate::Retention::off()),
            self.keepalive(),
        )
    }

    /// Deletes the inbox record of `key` (messages waiting for it), if
    /// this store has one. A post racing it either lands before (and is
    /// deleted) or after (and waits for the key's next holder).
    pub(crate) async fn delete_inbox(&self, key: &str) -> Result<(), Error> {
        if self.name().ends_with(INBOX_SUFFIX) {
            return Ok(());
        }
        let inbox = self.inbox()?;
        // Forced: a post holds the inbox only for its one write, and a post
        // cut off by the delete is answered as failed, never as delivered.
        // A post landing between our look and our delete makes the delete
        // miss its header: look again and delete what is there now.
        // `delete_if` reads the inbox itself (and answers `Ok(false)` when
        // there is none): no look of our own first.
        let mut contention = Contention::new(CONTENTION_WINDOW);
        loop {
            let outcome = Box::pin(inbox.delete_if(key, crate::store::Expect::Anything, true)).await;
            match (&outcome, contention.next_wait()) {
                (Err(Error::LeaseLost { .. } | Error::LeaseHeld { .. }), Some(wait)) => tokio::time::sleep(wait).await,
                _ => return outcome.map(|_| ()),
            }
        }
    }

    /// Deletes the record of `key` (if `record` holds) and its inbox (as
    /// it is now) in one all-or-nothing step, for a backend that can. The
    /// inbox's epoch floor is raised first, as for any deleted record; a
    /// post landing between our look at the inbox and the step makes the
    /// step refuse, and we look again. Answers whether the record was
    /// deleted; `PreconditionFailed` (with a version condition) or
    /// `LeaseLost` when the record moved, with nothing deleted.
    pub(crate) async fn delete_record_and_inbox(
        &self,
        key: &str,
        record: crate::storage::Precondition,
        expected: crate::store::Expect,
        tombstone: Option<bytes::Bytes>,
    ) -> Result<bool, Error> {
        use crate::storage::{AllOrNothing, Precondition, StorageKey, WriteOp};
        let engine = self.engine().clone();
        let inbox = self.inbox()?;
        let (name, inbox_name): (Arc<str>, Arc<str>) = (Arc::from(self.name()), Arc::from(inbox.name()));
        let key_arc: Arc<str> = Arc::from(key);
        let mut contention = Contention::new(CONTENTION_WINDOW);
        loop {
            let inbox_now = match inbox.inspect(key).await? {
                Some(r) => {
                    crate::epoch_floor::raise(&engine, &inbox_name, &key_arc, r.header.epoch).await?;
                    Precondition::Header(r.header)
                }
                None => Precondition::Absent,
            };
            let mut deleted = WriteOp::new(StorageKey::record(&name, &key_arc), record, None::<bytes::Bytes>);
            deleted.version = tombstone.clone();
            let ops =
                vec![deleted, WriteOp::new(StorageKey::record(&inbox_name, &key_arc), inbox_now, None::<bytes::Bytes>)];
            let refused = match engine.write_all(&name, &key_arc, ops, crate::types::Priority::Normal).await? {
                AllOrNothing::Applied => return Ok(true),
                AllOrNothing::Refused(refused) => refused,
            };
            match refused.iter().find(|(i, _)| *i == 0) {
                // Gone already: our own step whose answer was lost (the
                // queue retried it), or a delete racing ours. What was
                // asked for holds once the inbox is gone too.
                Some((_, None)) if self.inspect(key).await?.is_none() => {
                    self.delete_inbox(key).await?;
                    return Ok(true);
                }
                Some(_) if matches!(expected, crate::store::Expect::Version(_)) => {
                    return Err(Error::PreconditionFailed { at: KeyId::new(self.name().to_owned(), key.to_owned()) });
                }
                Some(_) => return Err(Error::LeaseLost { at: KeyId::new(self.name().to_owned(), key.to_owned()) }),
                // Only the inbox moved (a post): look at it again.
                None => match contention.next_wait() {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => {
                        return Err(Error::LeaseHeld {
                            at: KeyId::new(self.name().to_owned(), key.to_owned()),
                            holder: "messages being posted".to_owned(),
                            expires_at_ms: None,
                        })
                    }
                },
            }
        }
    }

    /// Posts `body` to `key`'s inbox; answers its id once durable.
    /// Refused with `MessageTooLarge` above [`MAX_MESSAGE_BYTES`], with
    /// `InboxFull` when `MAX_INBOX_MESSAGES` wait and with `InboxTooLarge`
    /// when the waiting messages would outgrow `max_document_bytes`.
    /// Errors name this store, never its inbox's.
    pub async fn post_message(&self, key: &str, body: Value) -> Result<u64, Error> {
        crate::store::validate_key(key)?;
        let size = serde_json::to_vec(&body).map_or(usize::MAX, |b| b.len());
        if size > MAX_MESSAGE_BYTES {
            let (store, key) = (self.name().to_owned(), key.to_owned());
            return Err(Error::MessageTooLarge { at: KeyId::new(store, key), size, limit: MAX_MESSAGE_BYTES });
        }
        let inbox = self.inbox()?;
        let now = self.engine().clock.now_ms();
        let max_bytes = self.engine().config.max_document_bytes;
        let (store, k) = (self.name().to_owned(), key.to_owned());
        let full = {
            let (store, key) = (store.clone(), k.clone());
            move || Error::InboxTooLarge { at: KeyId::new(store, key), limit: max_bytes }
        };
        let outcome = busy_retry(|| {
            let body = body.clone();
            let (store, k) = (store.clone(), k.clone());
            let inbox = inbox.clone();
            let full = full.clone();
            async move {
                inbox
                    .update_unleased(k.clone(), crate::store::Expect::Anything, move |ib| {
                        if ib.messages.len() >= MAX_INBOX_MESSAGES {
                            return Err(Error::InboxFull { at: KeyId::new(store, k), limit: MAX_INBOX_MESSAGES });
                        }
                        // The message's own bytes, its envelope, and what waits.
                        let waiting = serde_json::to_vec(&*ib).map_or(usize::MAX, |b| b.len());
                        if waiting.saturating_add(size).saturating_add(64) > max_bytes {
                            return Err(full());
                        }
                        ib.last_id += 1;
                        ib.messages.push(Message { id: ib.last_id, sent_at_ms: now, body });
                        Ok(ib.last_id)
                    })
                    .await
            }
        })
        .await;
        match outcome {
            Ok(outcome) => outcome.value,
            // The estimate above errs low only by the envelope's own bytes.
            Err(Error::DocumentTooLarge { .. }) => Err(full()),
            Err(e) => Err(self.in_own_terms(e)),
        }
    }

    /// `e` from the inbox store, said of this store (its key's inbox is an
    /// internal record; clients never name `S:inbox`).
    fn in_own_terms(&self, mut e: Error) -> Error {
        let inbox = inbox_store_name(self.name());
        if let Some(store) = e.store_mut().filter(|s| **s == inbox) {
            *store = self.name().to_owned();
        }
        e
    }

    /// The messages waiting for `key`, oldest first (a read; nothing changes).
    pub async fn messages(&self, key: &str) -> Result<Vec<Message>, Error> {
        crate::store::validate_key(key)?;
        let Some(rec) = self.inbox()?.inspect(key).await? else { return Ok(Vec::new()) };
        let inbox: Inbox = serde_json::from_slice(&rec.data).map_err(|e| Error::CorruptRecord {
            at: KeyId::new(inbox_store_name(self.name()), key.to_owned()),
            source: crate::storage::DecodeError::Body(e.to_string()),
        })?;
        Ok(inbox.messages)
    }

    /// Removes `key`'s messages up to and including `up_to`, durably;
    /// answers how many went and how many still wait. Acknowledging again
    /// (a retry after a lost answer) removes nothing and is no error.
    pub async fn ack_messages(&self, key: &str, up_to: u64) -> Result<(usize, usize), Error> {
        crate::store::validate_key(key)?;
        let inbox = self.inbox()?;
        if inbox.inspect(key).await?.is_none() {
            return Ok((0, 0));
        }
        let k = key.to_owned();
        let outcome = busy_retry(|| {
            let inbox = inbox.clone();
            let k = k.clone();
            async move {
                inbox
                    .update_unleased(k.as_str(), crate::store::Expect::Anything, move |ib| {
                        let before = ib.messages.len();
                        ib.messages.retain(|m| m.id > up_to);
                        (before - ib.messages.len(), ib.messages.len())
                    })
                    .await
            }
        })
        .await
        .map_err(|e| self.in_own_terms(e))?;
        Ok(outcome.value)
    }
}

impl<T: Document> Store<T> {
    /// Calls `handler` for every message to a key this instance has open
    /// (ProfileStore's `MessageHandler`): those waiting when the key opens,
    /// and each one posted while it is open (from any process), in order.
    /// A message the handler processed (`true`) is acknowledged; the first
    /// it does not process stops the delivery, and it and the later ones
    /// are offered again with the next message or the next open. Setting
    /// a handler again replaces it.
    pub fn on_message(&self, handler: impl Fn(&Session<T>, &Message) -> bool + Send + Sync + 'static) {
        let shared = self.shared();
        *shared.inbox.handler.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(handler));
        if !shared.inbox.watched.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // A sink, not a subscription to every notice: a burst of other
            // saves cannot make the watcher lag past an inbox's change (a
            // lag dropped it, and the message waited for the next one).
            let inbox = inbox_store_name(self.name());
            let changed = self.engine().backend.notices().forward(move |n| n.store == inbox);
            actix::spawn(self.for_engine().watch_inbox(changed));
        }
    }

    pub(crate) fn has_message_handler(&self) -> bool {
        self.shared().inbox.handler.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Offers `key`'s waiting messages to the handler, if the key is open;
    /// a delivery asked while one runs makes that one run again instead.
    pub(crate) async fn deliver_messages(self, key: String) {
        {
            let mut running = self.shared().inbox.deliveries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(again) = running.get_mut(&key) {
                *again = true;
                return;
            }
            running.insert(key.clone(), false);
        }
        loop {
            self.deliver_once(&key).await;
            let mut running = self.shared().inbox.deliveries.lock().unwrap_or_else(|p| p.into_inner());
            match running.get_mut(&key) {
                Some(again) if *again => *again = false,
                _ => {
                    running.remove(&key);
                    return;
                }
            }
        }
    }

    async fn deliver_once(&self, key: &str) {
        let key = key.to_owned();
        let handler = self.shared().inbox.handler.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (Some(handler), Some(session)) = (handler, self.get(key.as_str())) else { return };
        let Ok(waiting) = self.messages(&key).await else { return };
        let processed = waiting.iter().take_while(|m| handler(&session, m)).last().map(|m| m.id);
        if let Some(up_to) = processed {
            if let Err(e) = self.ack_messages(&key, up_to).await {
                tracing::warn!(target: "datastorer::inbox", store = %self.name(), %key, error = %e,
                    "processed messages could not be acknowledged; they will be offered again");
            }
        }
    }

    /// Delivers to open keys whenever their inbox changes (the keys whose
    /// inbox changed, from the sink `on_message` set up).
    async fn watch_inbox(self, mut changed: tokio::sync::mpsc::UnboundedReceiver<crate::storage::Notice>) {
        let registry = self.engine().registry.clone();
        loop {
            let notice = tokio::select! {
                n = changed.recv() => n,
                () = registry.stopped() => return,
            };
            match notice {
                Some(n) if self.is_loaded(n.key.as_str()) => {
                    actix::spawn(self.clone().deliver_messages(n.key));
                }
                Some(_) => {}
                None => return,
            }
        }
    }
}

/// Runs `attempt` again while another owner's one-shot update holds the
/// inbox (it lets go after one write), within the contention window.
async fn busy_retry<F, Fut, R>(mut attempt: F) -> Result<R, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, Error>>,
{
    let mut contention = Contention::new(CONTENTION_WINDOW);
    loop {
        let outcome = attempt().await;
        match (&outcome, contention.next_wait()) {
            (Err(Error::LeaseHeld { .. }), Some(wait)) => tokio::time::sleep(wait).await,
            _ => return outcome,
        }
    }
}
