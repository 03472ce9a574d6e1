//! Locks by key (an identity's refresh, a pipeline's run) that take turns inside this
//! instance. A key's lock exists only while someone holds it or waits for it: the map does
//! not grow with every identity and pipeline the instance ever touched.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

type Slots<K> = Arc<Mutex<HashMap<K, Arc<AsyncMutex<()>>>>>;

/// One asynchronous mutex per key, made on first use and dropped with its last user.
#[derive(Debug)]
pub(crate) struct KeyedLocks<K: Eq + Hash + Clone> {
    slots: Slots<K>,
}

impl<K: Eq + Hash + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            slots: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// The held lock of one key; dropping it lets the next waiter in, or forgets the key.
#[derive(Debug)]
pub(crate) struct KeyedGuard<K: Eq + Hash + Clone> {
    key: K,
    slots: Slots<K>,
    mutex: Arc<AsyncMutex<()>>,
    held: Option<OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    fn slot(&self, key: &K) -> Arc<AsyncMutex<()>> {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Wait for `key`'s lock.
    pub(crate) async fn lock(&self, key: K) -> KeyedGuard<K> {
        let mutex = self.slot(&key);
        let held = mutex.clone().lock_owned().await;
        KeyedGuard {
            key,
            slots: self.slots.clone(),
            mutex,
            held: Some(held),
        }
    }

    /// `key`'s lock if nobody holds it now.
    pub(crate) fn try_lock(&self, key: K) -> Option<KeyedGuard<K>> {
        let mutex = self.slot(&key);
        // Built before the attempt, so that a failed one also forgets an unused slot.
        let mut guard = KeyedGuard {
            key,
            slots: self.slots.clone(),
            mutex: mutex.clone(),
            held: None,
        };
        guard.held = Some(mutex.try_lock_owned().ok()?);
        Some(guard)
    }

    /// How many keys have a lock now (held or waited for).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyedGuard<K> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's copy and this one: nobody else holds or waits for the key (a new user
        // would first clone the map's copy, under the map's lock held here).
        if Arc::strong_count(&self.mutex) == 2 {
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_forgotten_when_its_last_user_lets_go() {
        let locks = KeyedLocks::<u32>::default();
        let first = locks.lock(1).await;
        assert!(
            locks.try_lock(1).is_none(),
            "held: a second user is refused"
        );
        assert_eq!(
            locks.len(),
            1,
            "a refused try leaves only the holder's slot"
        );
        let other = locks.try_lock(2);
        assert!(other.is_some());
        assert_eq!(locks.len(), 2);
        drop(other);
        drop(first);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_lock_after_the_holder_and_the_key_is_then_forgotten() {
        let locks = Arc::new(KeyedLocks::<u32>::default());
        let first = locks.lock(7).await;
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _second = locks.lock(7).await;
            })
        };
        // The waiter holds the key's slot while it waits.
        tokio::task::yield_now().await;
        drop(first);
        assert_eq!(locks.len(), 1, "the waiter keeps the key");
        waiting.await.expect("the waiter finishes");
        assert_eq!(locks.len(), 0);
    }
}
