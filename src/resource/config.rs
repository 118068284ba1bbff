//! Per-resource tuning: timeouts, health thresholds, retry policy.

use std::time::Duration;

/// How a managed resource is driven. The defaults suit most resources; network resources
/// usually shorten the timeouts.
#[derive(Debug, Clone)]
pub struct ResourceConfig {
    /// Bound on one initialize attempt; passing it is an error naming the timeout.
    pub initialize_timeout: Duration,
    /// Bound on cleanup; past it the resource is Closed anyway and the timeout recorded.
    pub cleanup_timeout: Duration,
    /// Bound on one health check; a check that hangs counts as a failure.
    pub health_timeout: Duration,
    /// Consecutive failed health checks that take a resource from Degraded to Error.
    pub health_failure_threshold: u32,
    /// How many state changes each resource remembers.
    pub history_limit: usize,
    /// Retries of `with_connection` on transient errors.
    pub retry: RetryPolicy,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig {
            initialize_timeout: Duration::from_secs(30),
            cleanup_timeout: Duration::from_secs(10),
            health_timeout: Duration::from_secs(5),
            health_failure_threshold: 3,
            history_limit: 32,
            retry: RetryPolicy::default(),
        }
    }
}

/// Exponential backoff for transient errors.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// Wait before the second attempt.
    pub initial_backoff: Duration,
    /// Upper bound of the doubling wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}
