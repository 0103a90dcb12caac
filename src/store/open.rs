//! The open flow up to the moment the key actor takes over: the key table
//! (join the session this instance has, or register a new actor where the
//! engine says), waiting for an actor of the other kind to finish.
//!
//! Must not: run the acquire itself; the key actor does (`lease::acquire`).

#[allow(unused_imports)]
use super::*;

/// Key actors that may stop under one open (each awaited) before the open
/// gives up with the last one's close reason.
const STOPPED_ACTORS_TOLERATED: u32 = 3;

impl<T: Document> Store<T> {
    pub(super) async fn open_key(
        self,
        key: String,
        user_ids: Vec<String>,
        policy: AcquirePolicy,
        exclusive: bool,
    ) -> Result<Session<T>, Error> {
        validate_key(&key)?;
        let shared = &self.shared;
        // Actors that stopped before reading our message: each is awaited
        // (`CloseSignal::wait`), then the key is loaded afresh. Stopping
        // again and again means the engine is stopping under us: say so
        // rather than start actors that stop at once.
        let mut stopped = 0;
        loop {
            if shared.engine.registry.is_shutting_down() {
                return Err(Error::ShuttingDown);
            }
            let found = {
                let mut keys = shared.keys();
                match keys.get(key.as_str()) {
                    // A session joins the session this instance is opening or has open.
                    Some(cell) if !exclusive && !cell.signal().is_one_shot() => Found::Join(cell.clone()),
                    Some(cell) if exclusive && !cell.signal().is_one_shot() && cell.signal().is_open() => {
                        return Err(Error::LeaseHeld {
                            at: KeyId::new(shared.name.to_string(), key),
                            holder: shared.engine.owner.to_string(),
                            expires_at_ms: None,
                        });
                    }
                    // A one-shot never shares a session's actor (nor a
                    // session a one-shot's): both would write under one
                    // epoch with nothing fencing one from the other. A
                    // session still opening is waited for (then refused if
                    // it opened); a one-shot is waited out.
                    Some(cell) => Found::Busy(cell.clone()),
                    None => {
                        let key_arc: Arc<str> = Arc::from(key.as_str());
                        let home = match shared.engine.config.keys_on_caller_arbiter {
                            true => Arbiter::try_current().unwrap_or_else(|| shared.engine.arbiter.clone()),
                            false => shared.engine.arbiter.clone(),
                        };
                        let cell = KeyCell::start(shared.def.clone(), key_arc.clone(), exclusive, &home);
                        keys.insert(key_arc, cell.clone());
                        Found::Created(cell)
                    }
                }
            };
            let (cell, created) = match found {
                Found::Join(cell) => (cell, false),
                Found::Created(cell) => (cell, true),
                Found::Busy(cell) => {
                    if cell.signal().is_one_shot() || cell.signal().reason().is_some() {
                        cell.signal().wait().await;
                        shared.remove(cell.key(), cell.signal());
                    } else {
                        cell.signal().wait_settled().await;
                    }
                    continue;
                }
            };
            let opened = match cell.send(Open { user_ids: user_ids.clone(), policy, one_shot: exclusive }) {
                Some(request) => request.await,
                None => Err(actix::MailboxError::Closed),
            };
            match opened {
                Ok(Ok(())) => {
                    let session = Session::new(cell, self.keepalive());
                    // An open that waited (for a lease held elsewhere) can
                    // complete after the shutdown took its snapshot of the
                    // keys to release: give the key back now and answer
                    // what a caller arriving during the shutdown gets.
                    if created && shared.engine.registry.is_shutting_down() {
                        let _ = session.release_as(Priority::Emergency, CloseReason::Shutdown).await;
                        return Err(Error::ShuttingDown);
                    }
                    // Messages that waited for the key reach its handler now.
                    if created && self.has_message_handler() {
                        actix::spawn(self.for_engine().deliver_messages(key));
                    }
                    return Ok(session);
                }
                // An actor that is closing: wait for it to finish, then load afresh.
                Ok(Err(Error::SessionClosed { .. })) => {
                    cell.signal().wait().await;
                    shared.remove(cell.key(), cell.signal());
                }
                // The actor stopped before reading our message (it was closing):
                // load afresh.
                Err(_) => {
                    cell.signal().wait().await;
                    shared.remove(cell.key(), cell.signal());
                    stopped += 1;
                    if stopped >= STOPPED_ACTORS_TOLERATED {
                        let reason = cell.signal().reason().unwrap_or(CloseReason::Stopped);
                        return Err(Error::SessionClosed { at: KeyId::new(shared.name.to_string(), key), reason });
                    }
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}

/// What `open_key` found in the key table.
enum Found<T: Document> {
    /// The session this instance has (or is opening): send it the open.
    Join(Arc<KeyCell<T>>),
    /// A new key, just registered.
    Created(Arc<KeyCell<T>>),
    /// A key of the other kind (or one closing): wait, then look again.
    Busy(Arc<KeyCell<T>>),
}
