//! What a session does to the document: read and change it (closures run
//! one at a time, a panic restores it, a change checked for size at once
//! and its encoding kept for the save), metadata, user ids and the lease
//! it reports.
//!
//! Must not: start a write; changes are saved by `writes.rs`.

use super::*;

impl<T: Document, F, R> Handler<Read<T, F, R>> for KeyActor<T>
where
    F: FnOnce(&T) -> R + Send + 'static,
    R: Send + 'static,
{
    type Result = MessageResult<Read<T, F, R>>;

    fn handle(&mut self, msg: Read<T, F, R>, _ctx: &mut Self::Context) -> Self::Result {
        self.counted();
        MessageResult(self.read(msg.0))
    }
}

impl<T: Document, F, R> Handler<Update<T, F, R>> for KeyActor<T>
where
    F: FnOnce(&mut T) -> R + Send + 'static,
    R: Send + 'static,
{
    type Result = MessageResult<Update<T, F, R>>;

    fn handle(&mut self, msg: Update<T, F, R>, _ctx: &mut Self::Context) -> Self::Result {
        self.counted();
        MessageResult(self.update(msg.0))
    }
}

impl<T: Document, F, R> Handler<UpdateEncoded<T, F, R>> for KeyActor<T>
where
    F: FnOnce(&mut T) -> R + Send + 'static,
    R: Send + 'static,
{
    type Result = MessageResult<UpdateEncoded<T, F, R>>;

    fn handle(&mut self, msg: UpdateEncoded<T, F, R>, _ctx: &mut Self::Context) -> Self::Result {
        self.counted();
        let updated = self.update(msg.0).and_then(|out| {
            // `update` keeps the encoding it checked the size with.
            let bytes = self.current_encoding().ok_or_else(|| self.closed_error())?;
            Ok((out, bytes))
        });
        MessageResult(updated)
    }
}

impl<T: Document> KeyActor<T> {
    fn read<R>(&self, f: impl FnOnce(&T) -> R) -> Result<R, Error> {
        if !matches!(self.phase, Phase::Open | Phase::Closing(_)) {
            return Err(self.closed_error());
        }
        let doc = self.doc.as_ref().ok_or_else(|| self.closed_error())?;
        catch_unwind(AssertUnwindSafe(|| f(&doc.data))).map_err(|p| self.panicked("read closure", &*p))
    }

    fn update<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> Result<R, Error> {
        if self.phase != Phase::Open {
            return Err(self.closed_error());
        }
        let now_ms = self.store.engine.clock.now_ms();
        let expired_at_ms = self.doc.as_ref().ok_or(Error::NotRunning)?.expires_at_ms;
        // A lease that lapsed without a renewal reaching storage may belong
        // to another process by now: serving changes on this copy would be
        // two owners at once (and lose them at the next write's fencing).
        if expired_at_ms <= now_ms {
            return Err(Error::LeaseExpired { at: self.key_id(), expired_at_ms });
        }
        let doc = self.doc.as_mut().ok_or(Error::NotRunning)?;
        // The copy restores the document if the closure panics half-way, or
        // if its result could never be saved. The encoding of the document
        // before the change is stale whatever happens.
        doc.encoded = None;
        let before = doc.data.clone();
        let out = match catch_unwind(AssertUnwindSafe(|| f(&mut doc.data))) {
            Ok(out) => out,
            Err(p) => {
                doc.data = before;
                return Err(self.panicked("update closure", &*p));
            }
        };
        // Checked here, at the change, not at the next save: a change that
        // cannot be saved would otherwise sit in memory failing every
        // autosave until the process exits and loses it. The encoding the
        // check makes is the one the next save writes.
        let limit = self.store.engine.config.max_document_bytes;
        match encode_within(&doc.data, limit, doc.encoded_len_hint) {
            Ok(bytes) => {
                doc.encoded_len_hint = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                doc.encoded = Some(Box::new(bytes));
                Ok(out)
            }
            Err(fault) => {
                doc.data = before;
                let (store, key) = (self.store.name.to_string(), self.key.to_string());
                Err(match fault {
                    SizeFault::TooLarge => Error::DocumentTooLarge { at: KeyId::new(store, key), limit },
                    SizeFault::Unserializable(message) => Error::Serialize { at: KeyId::new(store, key), message },
                })
            }
        }
    }

    /// The encoding the last change made (see `update`), shared.
    fn current_encoding(&self) -> Option<Bytes> {
        self.doc.as_ref().and_then(|d| d.encoded.as_deref().cloned())
    }
}

pub(super) enum SizeFault {
    TooLarge,
    Unserializable(String),
}

impl SizeFault {
    pub(super) fn message(self) -> String {
        match self {
            SizeFault::TooLarge => "the document grew past the limit while encoding".to_owned(),
            SizeFault::Unserializable(m) => m,
        }
    }
}

/// `doc` as JSON, if it encodes to at most `limit` bytes (stopping as soon
/// as it passes the limit). `hint`, the length of the last encoding, sizes
/// the buffer so a 1 KiB document is not grown through a chain of
/// reallocations on every change.
pub(super) fn encode_within<T: serde::Serialize + 'static>(
    doc: &T,
    limit: usize,
    hint: u32,
) -> Result<Bytes, SizeFault> {
    let capacity = (hint as usize).saturating_add(16).min(limit.saturating_add(1));
    // A `Value` (every document of the server) has an encoder of its own
    // that scans strings sixteen bytes at a time, byte for byte what
    // serde_json writes.
    if let Some(value) = (doc as &dyn std::any::Any).downcast_ref::<serde_json::Value>() {
        let mut out = Vec::with_capacity(capacity);
        return match crate::json_encode::write_value(&mut out, value, limit) {
            Ok(()) => Ok(Bytes::from(out)),
            Err(crate::json_encode::OverLimit) => Err(SizeFault::TooLarge),
        };
    }
    struct Bounded {
        out: Vec<u8>,
        limit: usize,
    }
    impl std::io::Write for Bounded {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.out.len() + buf.len() > self.limit {
                return Err(std::io::Error::other("over the limit"));
            }
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = Bounded { out: Vec::with_capacity(capacity), limit };
    match serde_json::to_writer(&mut w, doc) {
        Ok(()) => Ok(Bytes::from(w.out)),
        Err(e) if e.is_io() => Err(SizeFault::TooLarge),
        Err(e) => Err(SizeFault::Unserializable(e.to_string())),
    }
}

impl<T: Document> Handler<GetMetadata> for KeyActor<T> {
    type Result = Result<Value, Error>;

    fn handle(&mut self, _msg: GetMetadata, _ctx: &mut Self::Context) -> Self::Result {
        self.counted();
        let doc = self.doc.as_ref().ok_or_else(|| self.closed_error())?;
        serde_json::from_slice(&doc.metadata_json)
            .map_err(|e| Error::Serialize { at: self.key_id(), message: format!("metadata: {e}") })
    }
}

impl<T: Document> Handler<SetMetadata> for KeyActor<T> {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: SetMetadata, _ctx: &mut Self::Context) -> Self::Result {
        self.counted();
        if self.phase != Phase::Open {
            return Err(self.closed_error());
        }
        let json = serde_json::to_vec(&msg.0)
            .map_err(|e| Error::Serialize { at: self.key_id(), message: format!("metadata: {e}") })?;
        let doc = self.doc.as_mut().ok_or(Error::NotRunning)?;
        if *doc.metadata_json != *json {
            doc.metadata_json = json.into_boxed_slice();
            doc.meta_generation = doc.meta_generation.wrapping_add(1);
        }
        Ok(())
    }
}

impl<T: Document> Handler<RemoveUserId> for KeyActor<T> {
    type Result = Result<bool, Error>;

    fn handle(&mut self, msg: RemoveUserId, _ctx: &mut Self::Context) -> Self::Result {
        self.counted();
        if self.phase != Phase::Open {
            return Err(self.closed_error());
        }
        let doc = self.doc.as_mut().ok_or(Error::NotRunning)?;
        if !doc.user_ids.contains(&msg.0) {
            return Ok(false);
        }
        doc.user_ids = doc.user_ids.iter().filter(|id| **id != msg.0).cloned().collect();
        doc.meta_generation = doc.meta_generation.wrapping_add(1);
        Ok(true)
    }
}

impl<T: Document> Handler<AddUserId> for KeyActor<T> {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: AddUserId, _ctx: &mut Self::Context) -> Self::Result {
        self.counted();
        if self.phase != Phase::Open {
            return Err(self.closed_error());
        }
        let doc = self.doc.as_mut().ok_or(Error::NotRunning)?;
        if !doc.user_ids.contains(&msg.0) {
            let mut ids = std::mem::take(&mut doc.user_ids).into_vec();
            ids.push(msg.0);
            doc.user_ids = ids.into_boxed_slice();
            doc.meta_generation = doc.meta_generation.wrapping_add(1);
        }
        Ok(())
    }
}

impl<T: Document> Handler<GetUserIds> for KeyActor<T> {
    type Result = Result<Vec<String>, Error>;

    fn handle(&mut self, _msg: GetUserIds, _ctx: &mut Self::Context) -> Self::Result {
        self.counted();
        self.doc.as_ref().map(|d| d.user_ids.to_vec()).ok_or_else(|| self.closed_error())
    }
}

impl<T: Document> Handler<GetLease> for KeyActor<T> {
    type Result = Result<LeaseInfo, Error>;

    fn handle(&mut self, _msg: GetLease, _ctx: &mut Self::Context) -> Self::Result {
        self.counted();
        if !matches!(self.phase, Phase::Open | Phase::Closing(_)) {
            return Err(self.closed_error());
        }
        let doc = self.doc.as_ref().ok_or_else(|| self.closed_error())?;
        Ok(LeaseInfo {
            owner: self.store.engine.owner.to_string(),
            epoch: doc.header.epoch,
            expires_at_ms: doc.expires_at_ms,
            revision: doc.header.revision,
        })
    }
}
