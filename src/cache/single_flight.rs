//! Single-flight: concurrent requests for the same key share one piece of
//! work. The first caller becomes the leader and does it; the others wait
//! for the leader's result.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

/// Work in progress, by key.
pub(crate) struct SingleFlight<K, V> {
    in_flight: Mutex<HashMap<K, watch::Receiver<Option<V>>>>,
}

/// What a caller must do for a key.
pub(crate) enum Role<'a, K: Eq + Hash + Copy, V: Clone> {
    /// Nobody is working on the key: do the work and [`Leader::complete`].
    Leader(Leader<'a, K, V>),
    /// Someone is: [`Follower::wait`] for their result.
    Follower(Follower<V>),
}

impl<K: Eq + Hash + Copy, V: Clone> SingleFlight<K, V> {
    /// Nothing in flight.
    pub fn new() -> Self {
        SingleFlight {
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, watch::Receiver<Option<V>>>> {
        // Only inserts and removes happen under the lock; it cannot be left
        // half-done.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the work on `key`, as its leader if nobody is doing it.
    pub fn join(&self, key: K) -> Role<'_, K, V> {
        let mut in_flight = self.lock();
        if let Some(receiver) = in_flight.get(&key) {
            return Role::Follower(Follower {
                receiver: receiver.clone(),
            });
        }
        let (sender, receiver) = watch::channel(None);
        in_flight.insert(key, receiver);
        Role::Leader(Leader {
            flights: self,
            key,
            sender,
        })
    }

    /// How many keys are being worked on.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The caller doing the work for a key. Dropping it without completing
/// (the leader's future was cancelled) releases the followers, who then
/// start over.
pub(crate) struct Leader<'a, K: Eq + Hash + Copy, V: Clone> {
    flights: &'a SingleFlight<K, V>,
    key: K,
    sender: watch::Sender<Option<V>>,
}

impl<K: Eq + Hash + Copy, V: Clone> Leader<'_, K, V> {
    /// Hands the result to every follower and ends the flight.
    pub fn complete(self, value: V) {
        self.sender.send_replace(Some(value));
    }
}

impl<K: Eq + Hash + Copy, V: Clone> Drop for Leader<'_, K, V> {
    fn drop(&mut self) {
        // Only this leader removes its key, and nobody inserts the key while
        // it is present, so the entry is this flight's.
        self.flights.lock().remove(&self.key);
    }
}

/// A caller waiting for a leader.
pub(crate) struct Follower<V> {
    receiver: watch::Receiver<Option<V>>,
}

impl<V: Clone> Follower<V> {
    /// The leader's result, or `None` if the leader gave up without one.
    pub async fn wait(mut self) -> Option<V> {
        let value = self.receiver.wait_for(Option::is_some).await.ok()?;
        value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_result_and_the_flight_ends() {
        let flights = SingleFlight::<u32, String>::new();
        let Role::Leader(leader) = flights.join(1) else {
            panic!("first caller must lead");
        };
        let Role::Follower(follower) = flights.join(1) else {
            panic!("second caller must follow");
        };
        assert!(matches!(flights.join(2), Role::Leader(_)));
        let waiting = tokio::spawn(follower.wait());
        leader.complete("done".to_string());
        assert_eq!(waiting.await.unwrap().as_deref(), Some("done"));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_leader_that_gives_up_releases_its_followers() {
        let flights = SingleFlight::<u32, String>::new();
        let leader = flights.join(1);
        let Role::Follower(follower) = flights.join(1) else {
            panic!("second caller must follow");
        };
        drop(leader);
        assert_eq!(follower.wait().await, None);
        assert!(matches!(flights.join(1), Role::Leader(_)));
    }
}
