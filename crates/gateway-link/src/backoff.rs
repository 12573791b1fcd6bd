//! Reconnect backoff: 1, 2, 4, then 8 s for every further failure, each shortened by up to
//! 25 % of jitter so that a fleet of agents does not reconnect in lockstep after a gateway
//! restart. The link resets it after a stream that stayed up for a stable minute.

use std::time::Duration;

/// Nominal delays; the last one repeats.
const STEPS_SECS: [u64; 4] = [1, 2, 4, 8];
/// Largest share of a delay that jitter may remove.
const JITTER: f64 = 0.25;

/// Exponential backoff state. Pure: the caller supplies the jitter sample.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    failures: usize,
}

impl Backoff {
    /// The delay before the next attempt, given a jitter sample in `[0, 1)`.
    pub fn next_delay(&mut self, jitter_sample: f64) -> Duration {
        let idx = self.failures.min(STEPS_SECS.len() - 1);
        let base = STEPS_SECS.get(idx).copied().unwrap_or(8);
        self.failures = self.failures.saturating_add(1);
        let factor = 1.0 - JITTER * jitter_sample.clamp(0.0, 1.0);
        Duration::from_secs(base).mul_f64(factor)
    }

    /// Jumps to the slowest step, for refusals that no retry soon can cure.
    pub fn saturate(&mut self) {
        self.failures = self.failures.max(STEPS_SECS.len() - 1);
    }

    /// Starts over at 1 s.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_an_eight_second_cap_and_resets() {
        let mut b = Backoff::default();
        let secs: Vec<u64> = (0..6).map(|_| b.next_delay(0.0).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 8, 8]);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_secs(1));
        b.saturate();
        assert_eq!(b.next_delay(0.0), Duration::from_secs(8));
    }

    #[test]
    fn jitter_only_shortens_within_a_quarter() {
        let mut b = Backoff::default();
        for _ in 0..3 {
            b.next_delay(0.0);
        }
        let d = b.next_delay(0.999);
        assert!(
            d <= Duration::from_secs(8) && d >= Duration::from_secs(6),
            "{d:?}"
        );
    }
}
