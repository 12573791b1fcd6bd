//! Client keys for Heroku Exec: a fresh RSA-2048 key per session (as Heroku's CLI makes one per
//! command), taken from a small pool that is refilled in the background on the blocking
//! thread pool, so session setup does not wait for key generation once the pool is warm.
//!
//! Keys are never reused: each is handed out once and dropped with its session. The pool
//! holds at most `size` keys in memory; nothing is written to disk or logged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::RsaKeypair;

/// RSA modulus size, as Heroku's CLI (`keypair` defaults).
pub const RSA_BITS: usize = 2048;

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate an SSH key: {0}")]
pub struct KeyError(String);

/// A pool of fresh RSA keys.
#[derive(Clone)]
pub struct KeyPool {
    inner: Arc<Inner>,
}

struct Inner {
    size: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    ready: VecDeque<PrivateKey>,
    /// Keys being generated right now (counted so refills do not overshoot).
    pending: usize,
}

impl std::fmt::Debug for KeyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ready, pending) = self
            .inner
            .state
            .lock()
            .map(|s| (s.ready.len(), s.pending))
            .unwrap_or_default();
        f.debug_struct("KeyPool")
            .field("size", &self.inner.size)
            .field("ready", &ready)
            .field("pending", &pending)
            .finish()
    }
}

/// Generates one RSA-2048 key (CPU-bound: call on a blocking thread).
pub fn generate() -> Result<PrivateKey, KeyError> {
    let pair =
        RsaKeypair::random(&mut rand::rng(), RSA_BITS).map_err(|e| KeyError(e.to_string()))?;
    Ok(PrivateKey::from(pair))
}

impl KeyPool {
    /// An empty pool that keeps up to `size` keys ready. Call [`KeyPool::refill`] from inside
    /// a tokio runtime to start filling it.
    pub fn new(size: usize) -> KeyPool {
        KeyPool {
            inner: Arc::new(Inner {
                size,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Keys ready now.
    pub fn ready(&self) -> usize {
        self.inner.state.lock().map(|s| s.ready.len()).unwrap_or(0)
    }

    /// Starts generating keys until `size` are ready or being made. Needs a tokio runtime;
    /// without one it does nothing (the next [`KeyPool::take`] refills).
    pub fn refill(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let missing = {
            let Ok(mut s) = self.inner.state.lock() else {
                return;
            };
            let missing = self.inner.size.saturating_sub(s.ready.len() + s.pending);
            s.pending += missing;
            missing
        };
        for _ in 0..missing {
            let inner = self.inner.clone();
            runtime.spawn_blocking(move || {
                let key = generate();
                if let Ok(mut s) = inner.state.lock() {
                    s.pending = s.pending.saturating_sub(1);
                    match key {
                        Ok(k) => s.ready.push_back(k),
                        Err(e) => {
                            tracing::warn!(error = %e, "background ssh key generation failed")
                        }
                    }
                }
            });
        }
    }

    /// A fresh key: from the pool when one is ready, else generated now (off the async
    /// threads). Either way the pool is topped up in the background.
    pub async fn take(&self) -> Result<PrivateKey, KeyError> {
        let ready = self
            .inner
            .state
            .lock()
            .ok()
            .and_then(|mut s| s.ready.pop_front());
        self.refill();
        match ready {
            Some(k) => Ok(k),
            None => tokio::task::spawn_blocking(generate)
                .await
                .map_err(|e| KeyError(e.to_string()))?,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_rsa_2048_fresh_and_the_pool_refills() {
        let pool = KeyPool::new(2);
        let a = pool.take().await.unwrap();
        let b = pool.take().await.unwrap();
        assert!(a.algorithm().is_rsa());
        assert_ne!(a.public_key().key_data(), b.public_key().key_data());
        let line = a.public_key().to_openssh().unwrap();
        assert!(line.starts_with("ssh-rsa "), "{line}");
        match a.key_data() {
            russh::keys::ssh_key::private::KeypairData::Rsa(k) => {
                assert_eq!(
                    k.public().n().as_positive_bytes().map(<[u8]>::len),
                    Some(RSA_BITS / 8)
                );
            }
            _ => unreachable!(),
        }
    }
}
