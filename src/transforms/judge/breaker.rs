//! The judge's circuit breaker: after `failures` consecutive failed calls the judge is left
//! alone for `cooldown`; then exactly one call probes it. A good probe closes the breaker,
//! a failed one opens it for another cooldown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cooldown is over; `probing` while the one probe call is out.
    HalfOpen {
        probing: bool,
    },
}

pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// Leave to call the judge. Report how the call went with [`Ticket::succeeded`] or
/// [`Ticket::failed`]; a ticket dropped without a report (the call never happened, or
/// the request went away) frees the probe slot without counting either way.
#[must_use]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave a half-written state: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the judge may be called now; `None` while the breaker is open.
    pub fn admit(&self, now: Instant) -> Option<Ticket<'_>> {
        let mut state = self.state();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                true
            }
            State::Open { .. } | State::HalfOpen { probing: true } => return None,
        };
        Some(Ticket {
            breaker: self,
            probe,
            reported: false,
        })
    }

    /// Whether calls are being refused right now.
    #[cfg(test)]
    pub fn is_open(&self, now: Instant) -> bool {
        match *self.state() {
            State::Closed { .. } | State::HalfOpen { probing: false } => false,
            State::Open { until } => now < until,
            State::HalfOpen { probing: true } => true,
        }
    }
}

impl Ticket<'_> {
    pub fn succeeded(mut self) {
        self.reported = true;
        *self.breaker.state() = State::Closed { failures: 0 };
    }

    /// Counts a failure; returns whether this one opened the breaker.
    pub fn failed(mut self, now: Instant) -> bool {
        self.reported = true;
        let breaker = self.breaker;
        let mut state = breaker.state();
        let open = State::Open {
            until: now + breaker.cooldown,
        };
        match *state {
            _ if self.probe => {
                *state = open;
                true
            }
            State::Closed { failures } if failures + 1 >= breaker.threshold => {
                *state = open;
                true
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            // Already open, or a probe is deciding: a late failure from before changes
            // nothing.
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            let mut state = self.breaker.state();
            if *state == (State::HalfOpen { probing: true }) {
                *state = State::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3, COOLDOWN);
        let t0 = Instant::now();
        assert!(!b.admit(t0).unwrap().failed(t0));
        assert!(!b.admit(t0).unwrap().failed(t0));
        // A success in between resets the count.
        b.admit(t0).unwrap().succeeded();
        assert!(!b.admit(t0).unwrap().failed(t0));
        assert!(!b.admit(t0).unwrap().failed(t0));
        assert!(b.admit(t0).is_some(), "two failures in a row: still closed");
        assert!(b.admit(t0).unwrap().failed(t0), "the third opens it");
        assert!(b.is_open(t0));
        assert!(b.admit(t0 + Duration::from_secs(29)).is_none());
    }

    #[test]
    fn after_the_cooldown_one_probe_decides() {
        let b = Breaker::new(1, COOLDOWN);
        let t0 = Instant::now();
        assert!(b.admit(t0).unwrap().failed(t0));
        let later = t0 + COOLDOWN;
        let probe = b.admit(later).expect("the cooldown is over: one probe");
        assert!(b.admit(later).is_none(), "only one probe at a time");
        assert!(probe.failed(later), "a failed probe reopens");
        assert!(b.admit(later + Duration::from_secs(1)).is_none());
        let probe = b.admit(later + COOLDOWN).expect("next probe");
        probe.succeeded();
        assert!(!b.is_open(later + COOLDOWN));
        let a = b.admit(later + COOLDOWN).unwrap();
        let c = b.admit(later + COOLDOWN).unwrap();
        drop((a, c));
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let b = Breaker::new(1, COOLDOWN);
        let t0 = Instant::now();
        assert!(b.admit(t0).unwrap().failed(t0));
        let later = t0 + COOLDOWN;
        drop(b.admit(later).unwrap());
        assert!(
            b.admit(later).is_some(),
            "a probe that never reported lets the next request probe"
        );
    }

    #[test]
    fn late_failures_while_open_do_not_extend_it() {
        let b = Breaker::new(2, COOLDOWN);
        let t0 = Instant::now();
        let (first, second, third) = (
            b.admit(t0).unwrap(),
            b.admit(t0).unwrap(),
            b.admit(t0).unwrap(),
        );
        assert!(!first.failed(t0));
        assert!(second.failed(t0));
        assert!(!third.failed(t0 + Duration::from_secs(20)));
        assert!(
            b.admit(t0 + COOLDOWN).is_some(),
            "the cooldown ran from the opening"
        );
    }
}
