//! Input memory budgets: client input is counted in bytes, per session and for the whole
//! agent, from the moment the engine routes it until the backend has consumed it.
//!
//! A charge holds permits of two semaphores (the session's, then the agent's). The permits
//! travel inside the data itself ([`Bytes::from_owner`]), so they are returned exactly when
//! the last copy of the packet is dropped, wherever that happens (a backend's write, a
//! discarded packet, a torn-down queue). A session whose process stops reading therefore
//! pins at most its budget, and all of them together at most the agent's.
//!
//! It does not decide what to do when a budget stays exhausted; the engine ends the session.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The least a packet costs, so that a flood of tiny packets is counted too.
const MIN_COST: usize = 64;

/// One byte budget.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    bytes: usize,
}

/// Which budget stayed exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Exhausted {
    #[error("the session's input budget stayed exhausted")]
    Session,
    #[error("the agent's input budget stayed exhausted")]
    Agent,
}

impl Budget {
    /// A budget of `bytes`.
    pub(crate) fn new(bytes: usize) -> Budget {
        let bytes = bytes.clamp(MIN_COST, u32::MAX as usize);
        Budget {
            permits: Arc::new(Semaphore::new(bytes)),
            bytes,
        }
    }

    /// The budget's size in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes not charged right now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.permits.available_permits()
    }

    async fn acquire(&self, len: usize, until: Instant) -> Option<OwnedSemaphorePermit> {
        // A packet larger than the whole budget takes all of it (it must still fit alone).
        let cost = len.clamp(MIN_COST, self.bytes);
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        tokio::time::timeout_at(until, Arc::clone(&self.permits).acquire_many_owned(cost))
            .await
            .ok()?
            .ok()
    }
}

/// The permits a charged packet holds, and its bytes.
struct Charged {
    data: Bytes,
    _session: OwnedSemaphorePermit,
    _agent: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// Charges `data` to `session`, then to `agent`, waiting for either until `until`. The
/// returned bytes are the same bytes; dropping the last copy returns the budget.
pub(crate) async fn charge(
    session: &Budget,
    agent: &Budget,
    data: Bytes,
    until: Instant,
) -> Result<Bytes, Exhausted> {
    let len = data.len();
    let session_permit = session
        .acquire(len, until)
        .await
        .ok_or(Exhausted::Session)?;
    let agent_permit = agent.acquire(len, until).await.ok_or(Exhausted::Agent)?;
    Ok(Bytes::from_owner(Charged {
        data,
        _session: session_permit,
        _agent: agent_permit,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn mib(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n << 20])
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_holds_at_most_its_budget_until_the_data_is_dropped() {
        let agent = Budget::new(64 << 20);
        let session = Budget::new(4 << 20);
        let soon = || Instant::now() + Duration::from_secs(2);
        let a = charge(&session, &agent, mib(3), soon()).await.unwrap();
        assert_eq!(session.available(), 1 << 20);
        assert_eq!(agent.available(), 61 << 20);
        let started = Instant::now();
        assert_eq!(
            charge(&session, &agent, mib(2), soon()).await.unwrap_err(),
            Exhausted::Session
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // A slice of the packet still holds the budget; the last copy returns it.
        let tail = a.slice(1..);
        drop(a);
        assert_eq!(session.available(), 1 << 20);
        drop(tail);
        assert_eq!(session.available(), 4 << 20);
        assert_eq!(agent.available(), 64 << 20);
        // A packet larger than the budget takes all of it, alone.
        let big = charge(&session, &agent, mib(17), soon()).await.unwrap();
        assert_eq!(big.len(), 17 << 20);
        assert_eq!(session.available(), 0);
        drop(big);
        // Tiny packets cost at least MIN_COST.
        let tiny = charge(&session, &agent, Bytes::from_static(b"x"), soon())
            .await
            .unwrap();
        assert_eq!(session.available(), (4 << 20) - MIN_COST);
        drop(tiny);
    }

    #[tokio::test(start_paused = true)]
    async fn the_agent_budget_caps_all_sessions_together() {
        let agent = Budget::new(5 << 20);
        let one = Budget::new(4 << 20);
        let two = Budget::new(4 << 20);
        let soon = || Instant::now() + Duration::from_secs(2);
        let held = charge(&one, &agent, mib(4), soon()).await.unwrap();
        assert_eq!(
            charge(&two, &agent, mib(2), soon()).await.unwrap_err(),
            Exhausted::Agent
        );
        // The failed charge gave its session permits back.
        assert_eq!(two.available(), 4 << 20);
        // Waiting charges proceed as soon as budget is returned.
        let later = tokio::spawn({
            let (two, agent) = (two.clone(), agent.clone());
            async move {
                charge(
                    &two,
                    &agent,
                    mib(2),
                    Instant::now() + Duration::from_secs(2),
                )
                .await
                .map(|b| b.len())
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        assert_eq!(later.await.unwrap(), Ok(2 << 20));
    }
}
