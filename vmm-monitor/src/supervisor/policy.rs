//! When a dying device process is restarted, and when its VM is stopped
//! instead.

use std::time::Duration;

/// When a dying device is restarted, and when the VM is stopped instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// A process that dies within this of its start "died quickly".
    pub quick: Duration,
    /// Delay before the first restart after a quick death; it doubles with
    /// each further quick death in a row. After a process that lived
    /// longer, the restart is immediate.
    pub first_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// Quick deaths in a row after which the VM is stopped; 0: no process
    /// is restarted (the first death stops the VM, as in OpenBSD's vmd).
    pub max_streak: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            quick: Duration::from_millis(250),
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(2),
            max_streak: 10,
        }
    }
}

impl RestartPolicy {
    /// The default policy with at most `max_streak` quick deaths in a row
    /// (vm.conf's `restarts`).
    pub fn with_max_streak(max_streak: u32) -> Self {
        Self {
            max_streak,
            ..Self::default()
        }
    }

    /// Whether dead processes are restarted at all.
    pub fn restarts(&self) -> bool {
        self.max_streak > 0
    }

    /// The delay before restarting after `streak` quick deaths in a row
    /// (0: the last one lived long enough), or `None` to give up.
    pub fn delay(&self, streak: u32) -> Option<Duration> {
        if !self.restarts() || streak > self.max_streak {
            return None;
        }
        if streak == 0 {
            return Some(Duration::ZERO);
        }
        let factor = 1u32.checked_shl(streak - 1).unwrap_or(u32::MAX);
        Some(self.first_delay.saturating_mul(factor).min(self.max_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_immediate_after_a_long_life_and_back_off_in_a_crash_loop() {
        let policy = RestartPolicy::default();
        assert_eq!(policy.delay(0), Some(Duration::ZERO));
        let delays: Vec<Duration> = (1..=policy.max_streak)
            .map(|streak| policy.delay(streak).unwrap())
            .collect();
        assert_eq!(delays[0], policy.first_delay);
        assert_eq!(delays[1], policy.first_delay * 2);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), policy.max_delay);
        assert_eq!(
            policy.delay(policy.max_streak + 1),
            None,
            "then it gives up"
        );
        // A long streak never overflows the doubling.
        let patient = RestartPolicy {
            max_streak: 100,
            ..policy
        };
        assert_eq!(patient.delay(64), Some(patient.max_delay));
    }

    #[test]
    fn restarts_0_never_restarts_even_after_a_long_life() {
        let never = RestartPolicy::with_max_streak(0);
        assert!(!never.restarts());
        assert_eq!(never.delay(0), None);
        assert_eq!(never.delay(1), None);
        assert_eq!(RestartPolicy::with_max_streak(3).delay(4), None);
        assert!(RestartPolicy::with_max_streak(3).delay(3).is_some());
    }
}
