//! Settlements coalesced into few script calls (a group commit). A settlement that finds no
//! flush under way becomes the flusher: it waits [`GATHER`], then sends everything queued by
//! then, and keeps sending what queued meanwhile until the queue is empty. Settlements that
//! find a flush under way only queue. Under load a call carries many settlements, so the
//! limiter's Redis commands per request approach one (the admission); when idle a settlement
//! waits only the gather window.
//!
//! Exactness does not change: the script applies every entry as a call of its own would, in
//! order, and stays idempotent per admission id. A call carries the entries of one hash slot
//! only (a cluster refuses a script whose keys span slots), at most [`MAX_ENTRIES`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::util::redis_keyslot;

/// How long a flusher waits for company before its first call.
pub const GATHER: Duration = Duration::from_millis(2);
/// The most settlements one script call carries (bounds its time inside Redis).
pub const MAX_ENTRIES: usize = 256;

/// One admission's settlement, as the script takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key_id: Arc<str>,
    /// The key's tokens-per-minute cap (0: none).
    pub tokens_cap: u64,
    /// Tokens given back (positive) or charged (negative).
    pub adjustment: i64,
    pub id: u64,
}

/// Settlements waiting for the flusher.
#[derive(Debug, Default)]
pub struct SettleQueue {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pending: Vec<Entry>,
    flushing: bool,
}

impl SettleQueue {
    /// Queues `entry`. True when the caller is now the flusher and must call [`Self::take`]
    /// until it returns `None`.
    pub fn push(&self, entry: Entry) -> bool {
        let mut state = self.lock();
        state.pending.push(entry);
        !std::mem::replace(&mut state.flushing, true)
    }

    /// Everything queued, or `None` (ending the caller's turn as flusher) when nothing is.
    pub fn take(&self) -> Option<Vec<Entry>> {
        let mut state = self.lock();
        if state.pending.is_empty() {
            state.flushing = false;
            return None;
        }
        Some(std::mem::take(&mut state.pending))
    }

    /// Ends the flusher's turn whatever is left, so the next settlement flushes: called when a
    /// flusher stops early (it was cancelled or panicked), lest settlements queue for ever.
    pub fn abandon_turn(&self) {
        self.lock().flushing = false;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Splits a batch into script calls: the entries of one hash slot together, in their order,
/// at most [`MAX_ENTRIES`] per call. `key_of` is the key an entry's script call names (its
/// hash tag decides the slot).
pub fn calls(batch: Vec<Entry>, key_of: impl Fn(&str) -> String) -> Vec<Vec<Entry>> {
    let mut by_slot: BTreeMap<u16, Vec<Vec<Entry>>> = BTreeMap::new();
    for entry in batch {
        let calls = by_slot
            .entry(redis_keyslot(key_of(&entry.key_id).as_bytes()))
            .or_default();
        match calls.last_mut() {
            Some(call) if call.len() < MAX_ENTRIES => call.push(entry),
            _ => calls.push(vec![entry]),
        }
    }
    by_slot.into_values().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key_id: &str, id: u64) -> Entry {
        Entry {
            key_id: key_id.into(),
            tokens_cap: 100,
            adjustment: -1,
            id,
        }
    }

    #[test]
    fn the_first_settlement_flushes_and_later_ones_ride_along() {
        let queue = SettleQueue::default();
        assert!(
            queue.push(entry("a", 1)),
            "nobody flushing: the caller flushes"
        );
        assert!(!queue.push(entry("a", 2)), "a flush is under way");
        assert_eq!(queue.take().map(|b| b.len()), Some(2));
        assert!(!queue.push(entry("a", 3)), "still the same flusher's turn");
        assert_eq!(queue.take().map(|b| b.len()), Some(1));
        assert_eq!(queue.take(), None, "empty: the turn ends");
        assert!(
            queue.push(entry("a", 4)),
            "the next settlement flushes again"
        );
    }

    #[test]
    fn calls_keep_one_slot_each_in_order_and_bounded() {
        let mut batch: Vec<Entry> = (0..300).map(|i| entry("busy", i)).collect();
        batch.insert(10, entry("other", 1000));
        let calls = calls(batch, |id| format!("p:{{{id}}}:tpm"));
        assert_eq!(
            calls.len(),
            3,
            "300 of one key in two calls, the other key in its own"
        );
        for call in &calls {
            assert!(call.len() <= MAX_ENTRIES);
            let slot = redis_keyslot(call[0].key_id.as_bytes());
            assert!(
                call.iter()
                    .all(|e| redis_keyslot(e.key_id.as_bytes()) == slot)
            );
        }
        let busy: Vec<u64> = calls
            .iter()
            .flatten()
            .filter(|e| &*e.key_id == "busy")
            .map(|e| e.id)
            .collect();
        assert_eq!(
            busy,
            (0..300).collect::<Vec<_>>(),
            "one key's entries keep their order"
        );
    }
}
