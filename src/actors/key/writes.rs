//! Every write of the key: save, renewal, release, close and the autosave
//! that starts them, the record encoded from the kept encoding, and the
//! answer taken (applied, conflict, failure, an uncertain outcome).
//!
//! Must not: change the document; only `document.rs` runs closures on it.

use super::document::encode_within;
use super::*;

impl<T: Document> KeyActor<T> {
    /// The document as JSON bytes and their checksum: the encoding its
    /// last change made (taken: a saved key keeps no second copy), or a
    /// fresh one.
    fn encode_data(&mut self) -> Result<(Bytes, u64), Error> {
        // The key's name is copied into an error only when there is one
        // (this runs on every save).
        let (store, key) = (&self.store.name, &self.key);
        let Some(doc) = self.doc.as_mut() else { return Err(self.closed_error()) };
        let bytes = match doc.encoded.take() {
            Some(bytes) => *bytes,
            None => encode_within(&doc.data, usize::MAX, doc.encoded_len_hint)
                .map_err(|fault| Error::Serialize { at: KeyId::new(&**store, &**key), message: fault.message() })?,
        };
        doc.encoded_len_hint = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let checksum = seahash::hash(&bytes);
        Ok((bytes, checksum))
    }

    fn is_dirty(&self, checksum: u64) -> bool {
        self.doc.as_ref().is_some_and(|d| d.saved_checksum != checksum || d.meta_generation != d.saved_meta_generation)
    }

    /// Queues a write of `kind`: starts it now, or folds it into the pending
    /// write when one is in flight (a newer save never joins the one on the wire).
    fn request_write(
        &mut self,
        kind: WriteKind,
        priority: Priority,
        receipts: Vec<ReceiptTx>,
        ctx: &mut Context<Self>,
    ) {
        match self.writes.request(kind, priority, receipts) {
            Requested::Start(w) => self.start_write(w.kind, w.priority, w.receipts, None, ctx),
            Requested::Queued { superseded } => {
                if !superseded.is_empty() {
                    // A close drops unsaved data: the saves waiting for it cannot succeed.
                    let err = Error::SessionClosed { at: self.key_id(), reason: CloseReason::Closed };
                    for r in superseded {
                        let _ = r.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    fn start_write(
        &mut self,
        kind: WriteKind,
        priority: Priority,
        receipts: Vec<ReceiptTx>,
        encoded: Option<(Bytes, u64)>,
        ctx: &mut Context<Self>,
    ) {
        if let WriteKind::Close(reason) = kind {
            self.start_close(reason, priority, receipts, ctx);
            return;
        }
        let write = kind.name();
        let fail = |act: &Self, receipts: Vec<ReceiptTx>, err: Error| act.fail_before_storage(write, receipts, err);
        let releasing = matches!(kind, WriteKind::Release(_));
        let (mut bytes, mut checksum) = match encoded.map_or_else(|| self.encode_data(), Ok) {
            Ok(e) => e,
            Err(err) => {
                self.write_aborted(releasing);
                return fail(self, receipts, err);
            }
        };
        let dirty = self.is_dirty(checksum);
        if kind == WriteKind::Save && !dirty {
            let revision = self.doc.as_ref().map_or(0, |d| d.header.revision);
            for r in receipts {
                let _ = r.send(Ok(SaveOutcome { revision }));
            }
            return;
        }
        if dirty && kind != WriteKind::Renew {
            if let Some(hook) = self.store.hooks.before_save.clone() {
                let Some(doc) = self.doc.as_mut() else { return };
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| hook(&mut doc.data))) {
                    let err = self.panicked("before-save hook", &*p);
                    self.write_aborted(releasing);
                    return fail(self, receipts, err);
                }
                match self.encode_data() {
                    Ok((b, c)) => (bytes, checksum) = (b, c),
                    Err(err) => {
                        self.write_aborted(releasing);
                        return fail(self, receipts, err);
                    }
                }
            }
        }
        let engine = self.store.engine.clone();
        // Changes are checked when made; only a before-save hook can grow
        // the document past the limit here.
        if bytes.len() > engine.config.max_document_bytes {
            let err = Error::DocumentTooLarge { at: self.key_id(), limit: engine.config.max_document_bytes };
            self.write_aborted(releasing);
            return fail(self, receipts, err);
        }
        let Some(doc) = self.doc.as_ref() else {
            return fail(self, receipts, self.closed_error());
        };
        let now_ms = engine.clock.now_ms();
        let expires_at_ms = if releasing { 0 } else { now_ms + engine.config.lease_ttl.as_millis() as u64 };
        let header = RecordHeader { epoch: doc.header.epoch, revision: doc.header.revision + 1 };
        let record = RecordRef {
            header,
            data_version: doc.data_version,
            data: &bytes,
            metadata: &doc.metadata_json,
            user_ids: &doc.user_ids,
            lease: (!releasing).then_some(LeaseRef { owner: &engine.owner, expires_at_ms }),
            created_at_ms: doc.created_at_ms,
            updated_at_ms: now_ms,
        };
        // What the actor already holds goes along, for a backend that
        // stores it in columns of its own (it would otherwise decode it
        // back out of the bytes).
        // A write that changes what is stored is a save, and leaves a
        // version when the store keeps them (a renewal of a saved
        // document does not).
        let changed = self.is_dirty(checksum);
        let keeps_version = self.store.retention.enabled && changed;
        // A change also (re)indexes the record's user ids.
        let index = (changed || engine.backend.capabilities().indexes_records).then(|| RecordIndex {
            header,
            lease_owner: (!releasing).then(|| engine.owner.to_string()),
            lease_expires_ms: if releasing { 0 } else { expires_at_ms },
            user_ids: doc.user_ids.to_vec(),
        });
        let value = Bytes::from(record.encode());
        let version = keeps_version.then(|| value.clone());
        let op = WriteOp {
            key: self.storage_key(),
            precondition: Precondition::Header(doc.header),
            value: Some(value),
            index,
            version,
        };
        debug!(
            target: "datastorer::key", store = %self.store.name, key = %self.key,
            write = kind.name(), revision = header.revision, lane = priority.as_str(), "write queued"
        );
        let written = Written { priority, checksum, meta_generation: doc.meta_generation, header, expires_at_ms };
        self.writes.started(kind, receipts, written);
        let fut = engine.write(&self.store.name, &self.key, op, priority);
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| act.write_done(res, ctx)));
    }

    /// A write that fails before it reaches the queue is as much a failed
    /// save as one the backend refused: logged and counted the same way.
    fn fail_before_storage(&self, write: &'static str, receipts: Vec<ReceiptTx>, err: Error) {
        let reason = crate::SaveFailureReason::of(&err);
        self.store.engine.save_failures.count(reason, &self.store.name, &self.key);
        warn!(
            target: "datastorer::key", store = %self.store.name, key = %self.key, write,
            reason = reason.as_str(), error = %err, "write failed before reaching storage; data kept in memory"
        );
        for r in receipts {
            let _ = r.send(Err(err.clone()));
        }
    }

    /// A release that could not even start leaves the session open.
    fn write_aborted(&mut self, releasing: bool) {
        if releasing && matches!(self.phase, Phase::Closing(_)) {
            self.phase = Phase::Open;
        }
    }

    /// Clears the lease without writing the in-memory document: reads the
    /// record, checks it is still ours, writes it back with no lease.
    fn start_close(
        &mut self,
        reason: CloseReason,
        priority: Priority,
        receipts: Vec<ReceiptTx>,
        ctx: &mut Context<Self>,
    ) {
        let Some(doc) = self.doc.as_ref() else {
            for r in receipts {
                let _ = r.send(Err(self.closed_error()));
            }
            return;
        };
        let expected = doc.header;
        let header = RecordHeader { epoch: expected.epoch, revision: expected.revision + 1 };
        let written = Written {
            priority,
            checksum: doc.saved_checksum,
            meta_generation: doc.saved_meta_generation,
            header,
            expires_at_ms: 0,
        };
        self.writes.started(WriteKind::Close(reason), receipts, written);
        let fut = self.clear_lease(expected, priority);
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| act.write_done(res, ctx)));
    }

    /// The read-check-write that clears the lease on the stored record if
    /// its header is still `expected`.
    pub(super) fn clear_lease(
        &self,
        expected: RecordHeader,
        priority: Priority,
    ) -> impl std::future::Future<Output = Result<WriteOutcome, Error>> + 'static {
        let header = RecordHeader { epoch: expected.epoch, revision: expected.revision + 1 };
        let engine = self.store.engine.clone();
        let (store, key, skey) = (self.store.name.clone(), self.key.clone(), self.storage_key());
        async move {
            let Some(bytes) = engine.get(&store, &key, skey.clone(), priority).await? else {
                return Ok(WriteOutcome::Conflict { current: None });
            };
            let mut record = Record::decode(&bytes).map_err(|source| Error::CorruptRecord {
                at: KeyId::new(store.to_string(), key.to_string()),
                source,
            })?;
            if record.header != expected {
                return Ok(WriteOutcome::Conflict { current: Some(record.header) });
            }
            record.header = header;
            record.lease = None;
            record.updated_at_ms = engine.clock.now_ms();
            let op = WriteOp {
                key: skey,
                precondition: Precondition::Header(expected),
                value: Some(record.encode().into()),
                index: Some(record.index()),
                version: None,
            };
            engine.write(&store, &key, op, priority).await
        }
    }

    fn write_done(&mut self, result: Result<WriteOutcome, Error>, ctx: &mut Context<Self>) {
        let Some(done) = self.writes.completed() else {
            return;
        };
        let OnWire { kind, receipts, meta: inf } = *done;
        let mut renewed = false;
        match result {
            Ok(WriteOutcome::Applied) => {
                renewed = kind == WriteKind::Renew;
                let closing = matches!(kind, WriteKind::Release(_) | WriteKind::Close(_));
                if let Some(doc) = self.doc.as_mut() {
                    doc.header = inf.header;
                    doc.expires_at_ms = inf.expires_at_ms;
                    doc.saved_checksum = inf.checksum;
                    doc.saved_meta_generation = inf.meta_generation;
                    doc.uncertain = None;
                }
                let revision = inf.header.revision;
                debug!(
                    target: "datastorer::key", store = %self.store.name, key = %self.key,
                    write = kind.name(), revision, outcome = "durable", "write done"
                );
                self.publish(match &kind {
                    WriteKind::Release(reason) | WriteKind::Close(reason) => {
                        NoticeKind::Released { revision, how: EndKind::from(reason) }
                    }
                    WriteKind::Save | WriteKind::Renew => NoticeKind::Saved { revision },
                });
                // A closing write deregisters the key before its receipts
                // resolve, so a caller that reopens at once gets a new actor.
                if let WriteKind::Release(reason) | WriteKind::Close(reason) = &kind {
                    self.finish(reason.clone(), ctx);
                }
                for r in receipts {
                    let _ = r.send(Ok(SaveOutcome { revision }));
                }
                if closing {
                    return;
                }
            }
            // The stored record is what an earlier write of ours whose
            // outcome was unknown would have made it: that write did apply
            // (only this session writes under its epoch). Adopt it and send
            // this write again on top of it, instead of fencing ourselves off.
            Ok(WriteOutcome::Conflict { current: Some(stored) })
                if self.doc.as_ref().and_then(|d| d.uncertain.as_deref()).is_some_and(|u| u.header == stored) =>
            {
                if let Some(doc) = self.doc.as_mut() {
                    if let Some(u) = doc.uncertain.take() {
                        debug!(
                            target: "datastorer::key", store = %self.store.name, key = %self.key,
                            revision = u.header.revision, "an earlier write of unknown outcome had applied: adopted"
                        );
                        doc.header = u.header;
                        doc.expires_at_ms = u.expires_at_ms;
                        doc.saved_checksum = u.checksum;
                        doc.saved_meta_generation = u.meta_generation;
                    }
                }
                self.start_write(kind, inf.priority, receipts, None, ctx);
                return;
            }
            Ok(WriteOutcome::Conflict { current }) => {
                warn!(
                    target: "datastorer::key", store = %self.store.name, key = %self.key,
                    ours = ?inf.header, stored = ?current, "fencing check failed: lease lost"
                );
                let err = Error::LeaseLost { at: self.key_id() };
                self.store.engine.save_failures.count(crate::SaveFailureReason::LeaseLost, &self.store.name, &self.key);
                for r in receipts {
                    let _ = r.send(Err(err.clone()));
                }
                self.finish(CloseReason::LeaseLost, ctx);
                return;
            }
            Err(err) => {
                let reason = crate::SaveFailureReason::of(&err);
                self.store.engine.save_failures.count(reason, &self.store.name, &self.key);
                warn!(
                    target: "datastorer::key", store = %self.store.name, key = %self.key,
                    write = kind.name(), reason = reason.as_str(), error = %err, "write failed; data kept in memory"
                );
                for r in receipts {
                    let _ = r.send(Err(err.clone()));
                }
                // It may have applied all the same: remember what it meant
                // to store, for the next write to recognise.
                if let Some(doc) = self.doc.as_mut() {
                    doc.uncertain = Some(Box::new(crate::lease::Uncertain {
                        header: inf.header,
                        checksum: inf.checksum,
                        meta_generation: inf.meta_generation,
                        expires_at_ms: inf.expires_at_ms,
                    }));
                }
                let closing_failed = matches!(kind, WriteKind::Release(_) | WriteKind::Close(_));
                if closing_failed && matches!(self.phase, Phase::Closing(_)) {
                    // Stay open so the application can retry; nothing is lost.
                    self.phase = Phase::Open;
                }
            }
        }
        if let Some(next) = self.writes.next() {
            self.start_write(next.kind, next.priority, next.receipts, None, ctx);
        }
        // A key woken only to renew its lease sleeps again at once.
        if renewed {
            self.try_hibernate(ctx);
        }
    }

    /// Ends the session: reports `reason`, fails what is still waiting,
    /// deregisters and stops the actor.
    pub(super) fn finish(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        debug!(target: "datastorer::key", store = %self.store.name, key = %self.key, reason = %reason, "session closed");
        let waiting = self.writes.abandon();
        // Built only when someone waits: a shutdown finishes every key here.
        if !waiting.is_empty() {
            let err = Error::SessionClosed { at: self.key_id(), reason: reason.clone() };
            for w in waiting {
                let _ = w.send(Err(err.clone()));
            }
        }
        self.phase = Phase::Closed;
        self.cell.set_gone();
        self.store.remove(&self.key, self.cell.signal());
        self.cell.signal().close(reason);
        ctx.stop();
    }

    /// Whether the close under way drops unsaved changes (a close, not a
    /// release): a save asked for meanwhile cannot succeed.
    fn dropping_changes(&self) -> bool {
        self.writes.dropping_data()
    }

    fn begin_closing(&mut self, kind: WriteKind, priority: Priority, receipt: ReceiptTx, ctx: &mut Context<Self>) {
        match &self.phase {
            Phase::Open => {
                let reason = match &kind {
                    WriteKind::Release(r) | WriteKind::Close(r) => r.clone(),
                    _ => CloseReason::Released,
                };
                self.phase = Phase::Closing(Box::new(reason));
                self.request_write(kind, priority, vec![receipt], ctx);
            }
            // Already closing: resolve together with the close under way.
            Phase::Closing(_) => {
                if let Err(receipt) = self.writes.join(priority, receipt) {
                    let _ = receipt.send(Err(self.closed_error()));
                }
            }
            Phase::Opening | Phase::Closed | Phase::Asleep => {
                let _ = receipt.send(Err(self.closed_error()));
            }
        }
    }

    fn autosave(&mut self, ctx: &mut Context<Self>) {
        if self.handled == self.handled_at_tick {
            self.idle_ticks = self.idle_ticks.saturating_add(1);
        } else {
            self.idle_ticks = 0;
            self.handled_at_tick = self.handled;
        }
        if self.phase != Phase::Open || !self.writes.idle() {
            return;
        }
        let encoded = match self.encode_data() {
            Ok(e) => e,
            // A failed save like any other: logged and counted.
            Err(err) => return self.fail_before_storage("autosave", Vec::new(), err),
        };
        if self.is_dirty(encoded.1) {
            self.start_write(WriteKind::Save, Priority::Normal, Vec::new(), Some(encoded), ctx);
            return;
        }
        let engine = &self.store.engine;
        let expires = self.doc.as_ref().map_or(0, |d| d.expires_at_ms);
        if engine.clock.now_ms() > engine.renew_at_ms(expires) {
            self.start_write(WriteKind::Renew, Priority::Normal, Vec::new(), Some(encoded), ctx);
            return;
        }
        self.try_hibernate(ctx);
    }

    /// Falls asleep if the key has been idle long enough and holds nothing
    /// unsaved or under way (see `cell.rs`); the session goes on.
    fn try_hibernate(&mut self, ctx: &mut Context<Self>) {
        let engine = &self.store.engine;
        let Some(after) = engine.config.hibernate_after else { return };
        let ticks = after.as_nanos().div_ceil(engine.config.autosave_interval.as_nanos().max(1));
        let needed = u8::try_from(ticks.max(1)).unwrap_or(u8::MAX - 1);
        // Idle since the last tick too: the document is still the one the
        // tick found saved.
        if self.idle_ticks < needed
            || self.handled != self.handled_at_tick
            || self.phase != Phase::Open
            || !self.writes.idle()
            || self.reads > 0
            || self.signal().is_one_shot()
            || engine.registry.is_shutting_down()
        {
            return;
        }
        let Some(doc) = self.doc.as_ref() else { return };
        if doc.uncertain.is_some() || doc.encoded.is_some() || doc.meta_generation != doc.saved_meta_generation {
            return;
        }
        if self.cell.fall_asleep(self.handled, &mut self.doc) {
            debug!(target: "datastorer::key", store = %self.store.name, key = %self.key, "idle: asleep");
            engine.fell_asleep.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.phase = Phase::Asleep;
            ctx.stop();
        }
    }
}

impl<T: Document> KeyActor<T> {
    /// After a notice gap (a transport reconnected, a receiver lagged): a
    /// `Stolen` notice may have been lost, so the record is read back. A
    /// write in flight checks the lease itself and needs no read.
    /// Reads the record and ends the session with `lost` if another holder
    /// took it (a later epoch, or no record). Nothing is closed on a
    /// notice's word alone: a `Stolen` notice is checked here too, so a
    /// forged or stale one costs a read, never a live session.
    fn verify_lease(&mut self, lost: CloseReason, ctx: &mut Context<Self>) {
        if self.phase != Phase::Open || self.writes.busy() {
            return;
        }
        let Some(ours) = self.doc.as_ref().map(|d| d.header.epoch) else { return };
        let engine = self.store.engine.clone();
        let read = engine.get(&self.store.name, &self.key, self.storage_key(), Priority::Normal);
        self.reads += 1;
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| {
            act.reads -= 1;
            let Ok(stored) = res else { return };
            let stored = stored.as_deref().and_then(RecordHeader::peek).map(|h| h.epoch);
            if act.phase == Phase::Open && stored != Some(ours) {
                warn!(target: "datastorer::lease", store = %act.store.name, key = %act.key, epoch = ours,
                    stored = ?stored, reason = %lost, "the lease was taken");
                act.finish(lost, ctx);
            }
        }));
    }
}

impl<T: Document> Handler<CheckLease> for KeyActor<T> {
    type Result = ResponseActFuture<Self, Result<(), Error>>;

    fn handle(&mut self, _msg: CheckLease, _ctx: &mut Self::Context) -> Self::Result {
        self.counted();
        let ours = match (&self.phase, self.doc.as_ref()) {
            (Phase::Open, Some(doc)) => doc.header.epoch,
            _ => return Box::pin(fut::ready(Err(self.closed_error()))),
        };
        let engine = self.store.engine.clone();
        let read = engine.get(&self.store.name, &self.key, self.storage_key(), Priority::Normal);
        self.reads += 1;
        Box::pin(read.into_actor(self).map(move |res, act, ctx| {
            act.reads -= 1;
            let stored = res?.as_deref().and_then(RecordHeader::peek).map(|h| h.epoch);
            if act.phase != Phase::Open {
                return Err(act.closed_error());
            }
            if stored == Some(ours) {
                return Ok(());
            }
            let reason = if stored.is_none() { CloseReason::Deleted } else { CloseReason::LeaseLost };
            warn!(target: "datastorer::lease", store = %act.store.name, key = %act.key, epoch = ours,
                stored = ?stored, reason = %reason, "checked on request: the lease was taken");
            act.finish(reason, ctx);
            Err(act.closed_error())
        }))
    }
}

impl<T: Document> Handler<Save> for KeyActor<T> {
    type Result = ();

    fn handle(&mut self, msg: Save, ctx: &mut Self::Context) {
        self.counted();
        match &self.phase {
            Phase::Open => self.request_write(WriteKind::Save, msg.priority, vec![msg.receipt], ctx),
            // Updates are refused while a release runs, so its write covers this save.
            Phase::Closing(_) if self.dropping_changes() => {
                let _ = msg.receipt.send(Err(self.closed_error()));
            }
            Phase::Closing(_) => self.begin_closing(WriteKind::Save, msg.priority, msg.receipt, ctx),
            Phase::Opening | Phase::Closed | Phase::Asleep => {
                let _ = msg.receipt.send(Err(self.closed_error()));
            }
        }
    }
}

impl<T: Document> Handler<Release> for KeyActor<T> {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Self::Context) {
        self.counted();
        self.release(msg, ctx);
    }
}

impl<T: Document> KeyActor<T> {
    fn release(&mut self, msg: Release, ctx: &mut Context<Self>) {
        // A release promises the changes are saved: joining a close under
        // way (which drops them) would answer "saved" for changes never written.
        if matches!(self.phase, Phase::Closing(_)) && self.dropping_changes() {
            let _ = msg.receipt.send(Err(self.closed_error()));
            return;
        }
        self.begin_closing(WriteKind::Release(msg.reason), msg.priority, msg.receipt, ctx);
    }
}

impl<T: Document> Handler<Close> for KeyActor<T> {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        self.counted();
        self.begin_closing(WriteKind::Close(msg.reason), Priority::Normal, msg.receipt, ctx);
    }
}

impl<T: Document> Handler<Control> for KeyActor<T> {
    type Result = ();

    fn handle(&mut self, msg: Control, ctx: &mut Self::Context) {
        // The cell counts every control but the tick.
        if !matches!(msg, Control::Autosave) {
            self.counted();
        }
        match msg {
            Control::Autosave => self.autosave(ctx),
            Control::Notice(NoticeKind::ReleaseRequested { requester, because, .. }) => {
                if self.phase == Phase::Open {
                    debug!(target: "datastorer::lease", store = %self.store.name, key = %self.key, %requester, because = because.as_str(), "release requested");
                    let reason = match because {
                        EndKind::Restored => CloseReason::Restored,
                        EndKind::Erased => CloseReason::Erased,
                        _ => CloseReason::ReleaseRequested,
                    };
                    let (tx, _rx) = tokio::sync::oneshot::channel();
                    self.begin_closing(WriteKind::Release(reason), Priority::Emergency, tx, ctx);
                }
            }
            Control::Notice(NoticeKind::Restored) => {
                if matches!(self.phase, Phase::Open | Phase::Closing(_)) {
                    self.verify_lease(CloseReason::Restored, ctx);
                }
            }
            Control::Notice(NoticeKind::Erased) => {
                if matches!(self.phase, Phase::Open | Phase::Closing(_)) {
                    self.verify_lease(CloseReason::Erased, ctx);
                }
            }
            Control::Notice(NoticeKind::Stolen { by, .. }) => {
                if matches!(self.phase, Phase::Open | Phase::Closing(_)) {
                    debug!(target: "datastorer::lease", store = %self.store.name, key = %self.key, %by, "steal announced: checking the record");
                    self.verify_lease(CloseReason::Stolen, ctx);
                }
            }
            Control::Notice(NoticeKind::Deleted) => {
                if matches!(self.phase, Phase::Open | Phase::Closing(_)) {
                    warn!(target: "datastorer::lease", store = %self.store.name, key = %self.key, "record deleted by force: session ends");
                    self.finish(CloseReason::Deleted, ctx);
                }
            }
            Control::Notice(_) => {}
            Control::VerifyLease => self.verify_lease(CloseReason::LeaseLost, ctx),
            #[cfg(feature = "harness")]
            Control::Abort => {
                if self.phase != Phase::Closed {
                    self.finish(CloseReason::Crashed, ctx);
                }
            }
            Control::Release(msg) => self.release(msg, ctx),
            Control::Close(msg) => {
                self.begin_closing(WriteKind::Close(msg.reason), Priority::Emergency, msg.receipt, ctx)
            }
        }
    }
}
