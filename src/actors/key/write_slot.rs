//! The key actor's write slot, as plain logic: at most one write on the
//! wire, at most one waiting behind it. A request made while a write is on
//! the wire folds into the waiting one: the stronger kind wins (renew <
//! save < release < close), the higher lane wins, and receipts accumulate
//! — a newer save never joins the write already on the wire, whose bytes
//! predate it. A close that folds over waiting saves fails their receipts,
//! because it drops the data they wait for.
//!
//! Owns: which write is on the wire, which waits, and whose receipts ride
//! on each. Must not: encode, write or answer anything itself; the key
//! actor does, and this has no actix, backend or document in it (so the
//! rules are unit-tested below, table by table).

use crate::types::Priority;

/// What the slot needs to know of a write's kind.
pub(crate) trait SlotKind {
    /// Precedence when two requests fold into one: the higher wins.
    fn rank(&self) -> u8;
    /// Whether the write drops unsaved data (a close): saves waiting for it
    /// cannot succeed.
    fn drops_data(&self) -> bool;
}

/// A write waiting for its turn (or about to start).
#[derive(Debug)]
pub(crate) struct Waiting<K, R> {
    pub kind: K,
    pub priority: Priority,
    pub receipts: Vec<R>,
}

/// The write on the wire: its kind, its receipts, and what the actor needs
/// back when it completes (`M`).
#[derive(Debug)]
pub(crate) struct OnWire<K, R, M> {
    pub kind: K,
    pub receipts: Vec<R>,
    pub meta: M,
}

/// What became of a request.
#[derive(Debug)]
pub(crate) enum Requested<K, R> {
    /// Nothing is on the wire: start this write now (then `started`).
    Start(Waiting<K, R>),
    /// Folded into the waiting write; `superseded` receipts must be failed
    /// (a close took over the saves they waited for).
    Queued { superseded: Vec<R> },
}

/// At most one write on the wire and one waiting. Two pointers: a loaded
/// key is small, and most of the time both are empty.
#[derive(Debug)]
pub(crate) struct WriteSlot<K, R, M> {
    on_wire: Option<Box<OnWire<K, R, M>>>,
    waiting: Option<Box<Waiting<K, R>>>,
}

impl<K, R, M> Default for WriteSlot<K, R, M> {
    fn default() -> Self {
        Self { on_wire: None, waiting: None }
    }
}

impl<K: SlotKind, R, M> WriteSlot<K, R, M> {
    /// Whether a write is on the wire.
    pub(crate) fn busy(&self) -> bool {
        self.on_wire.is_some()
    }

    /// Whether nothing is on the wire or waiting.
    pub(crate) fn idle(&self) -> bool {
        self.on_wire.is_none() && self.waiting.is_none()
    }

    /// A new request: start it, or fold it into the waiting write.
    pub(crate) fn request(&mut self, kind: K, priority: Priority, receipts: Vec<R>) -> Requested<K, R> {
        if self.on_wire.is_none() {
            return Requested::Start(Waiting { kind, priority, receipts });
        }
        let Some(w) = self.waiting.as_mut() else {
            self.waiting = Some(Box::new(Waiting { kind, priority, receipts }));
            return Requested::Queued { superseded: Vec::new() };
        };
        let mut superseded = Vec::new();
        if kind.rank() > w.kind.rank() {
            if kind.drops_data() {
                superseded = std::mem::take(&mut w.receipts);
            }
            w.kind = kind;
        }
        w.priority = w.priority.max(priority);
        w.receipts.extend(receipts);
        Requested::Queued { superseded }
    }

    /// The write `kind` went on the wire.
    pub(crate) fn started(&mut self, kind: K, receipts: Vec<R>, meta: M) {
        self.on_wire = Some(Box::new(OnWire { kind, receipts, meta }));
    }

    /// The write on the wire completed: answers it, and the waiting write
    /// (to start next) is left for `next`.
    pub(crate) fn completed(&mut self) -> Option<Box<OnWire<K, R, M>>> {
        self.on_wire.take()
    }

    /// The waiting write, to start now that the wire is free.
    pub(crate) fn next(&mut self) -> Option<Waiting<K, R>> {
        self.waiting.take().map(|w| *w)
    }

    /// A receipt that resolves with the close under way: joins the waiting
    /// write (raising its lane), else the one on the wire; handed back when
    /// there is neither.
    pub(crate) fn join(&mut self, priority: Priority, receipt: R) -> Result<(), R> {
        if let Some(w) = self.waiting.as_mut() {
            w.priority = w.priority.max(priority);
            w.receipts.push(receipt);
            Ok(())
        } else if let Some(o) = self.on_wire.as_mut() {
            o.receipts.push(receipt);
            Ok(())
        } else {
            Err(receipt)
        }
    }

    /// Whether the write on the wire or the waiting one drops unsaved data.
    pub(crate) fn dropping_data(&self) -> bool {
        self.on_wire.as_ref().is_some_and(|o| o.kind.drops_data())
            || self.waiting.as_ref().is_some_and(|w| w.kind.drops_data())
    }

    /// Empties the slot: every receipt still riding on it, to be failed.
    pub(crate) fn abandon(&mut self) -> Vec<R> {
        let on_wire = self.on_wire.take().map(|o| o.receipts).unwrap_or_default();
        let waiting = self.waiting.take().map(|w| w.receipts).unwrap_or_default();
        on_wire.into_iter().chain(waiting).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum K {
        Renew,
        Save,
        Release,
        Close,
    }

    impl SlotKind for K {
        fn rank(&self) -> u8 {
            *self as u8
        }
        fn drops_data(&self) -> bool {
            *self == K::Close
        }
    }

    type Slot = WriteSlot<K, u32, ()>;

    fn busy_slot() -> Slot {
        let mut s = Slot::default();
        s.started(K::Save, vec![0], ());
        s
    }

    #[test]
    fn an_idle_slot_starts_the_request_as_it_is() {
        let mut s = Slot::default();
        match s.request(K::Release, Priority::Emergency, vec![1, 2]) {
            Requested::Start(w) => {
                assert_eq!((w.kind, w.priority, w.receipts), (K::Release, Priority::Emergency, vec![1, 2]))
            }
            other => panic!("expected Start, got {other:?}"),
        }
        assert!(s.idle(), "starting is the caller's move: nothing is on the wire yet");
    }

    /// (waiting kind, new kind) → the kind that waits afterwards, and
    /// whether the waiting receipts were superseded.
    #[test]
    fn folding_keeps_the_stronger_kind_and_a_close_supersedes_waiting_saves() {
        let cases = [
            (K::Renew, K::Save, K::Save, false),
            (K::Save, K::Renew, K::Save, false),
            (K::Save, K::Save, K::Save, false),
            (K::Save, K::Release, K::Release, false),
            (K::Release, K::Save, K::Release, false),
            (K::Save, K::Close, K::Close, true),
            (K::Release, K::Close, K::Close, true),
            (K::Close, K::Save, K::Close, false),
            (K::Close, K::Release, K::Close, false),
        ];
        for (waiting, new, after, superseded) in cases {
            let mut s = busy_slot();
            assert!(
                matches!(s.request(waiting, Priority::Normal, vec![1]), Requested::Queued { ref superseded } if superseded.is_empty())
            );
            let Requested::Queued { superseded: gone } = s.request(new, Priority::Normal, vec![2]) else {
                panic!("a busy slot queues");
            };
            assert_eq!(gone.is_empty(), !superseded, "{waiting:?} then {new:?}");
            let next = s.next().expect("one waiting write");
            assert_eq!(next.kind, after, "{waiting:?} then {new:?}");
            let expected: Vec<u32> = if superseded { vec![2] } else { vec![1, 2] };
            assert_eq!(next.receipts, expected, "{waiting:?} then {new:?}");
            assert!(s.next().is_none(), "at most one waits");
        }
    }

    #[test]
    fn the_higher_lane_wins_and_never_goes_back() {
        for (first, second, after) in [
            (Priority::Normal, Priority::Emergency, Priority::Emergency),
            (Priority::Emergency, Priority::Normal, Priority::Emergency),
            (Priority::Normal, Priority::Normal, Priority::Normal),
        ] {
            let mut s = busy_slot();
            let _ = s.request(K::Save, first, vec![]);
            let _ = s.request(K::Save, second, vec![]);
            assert_eq!(s.next().map(|w| w.priority), Some(after), "{first:?} then {second:?}");
        }
    }

    #[test]
    fn a_newer_save_never_joins_the_write_on_the_wire() {
        let mut s = busy_slot();
        let _ = s.request(K::Save, Priority::Normal, vec![7]);
        let done = s.completed().expect("on the wire");
        assert_eq!(done.receipts, vec![0], "only the receipts it carried when it started");
        assert_eq!(s.next().map(|w| w.receipts), Some(vec![7]));
    }

    #[test]
    fn joining_prefers_the_waiting_write_then_the_one_on_the_wire() {
        let mut s = Slot::default();
        assert_eq!(s.join(Priority::Normal, 5), Err(5), "nothing to join");
        s.started(K::Release, vec![1], ());
        assert_eq!(s.join(Priority::Emergency, 2), Ok(()));
        let _ = s.request(K::Close, Priority::Normal, vec![3]);
        assert_eq!(s.join(Priority::Emergency, 4), Ok(()));
        assert!(s.dropping_data(), "a close waits");
        let waiting = s.next().expect("the close");
        assert_eq!((waiting.receipts, waiting.priority), (vec![3, 4], Priority::Emergency));
        assert_eq!(s.completed().map(|o| o.receipts), Some(vec![1, 2]));
    }

    #[test]
    fn abandoning_hands_back_every_receipt() {
        let mut s = busy_slot();
        let _ = s.request(K::Save, Priority::Normal, vec![1, 2]);
        assert_eq!(s.abandon(), vec![0, 1, 2]);
        assert!(s.idle());
    }
}
