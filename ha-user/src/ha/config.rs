//! What the election needs from the configuration, checked once.

use std::time::Duration;

use super::heartbeat::{MAX_INTERVAL, MIN_INTERVAL};
use crate::config::{Config, FailbackMode, Ha};

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("node id must be non-zero")]
    ZeroNodeId,
    #[error("epoch must be non-zero")]
    ZeroEpoch,
    #[error("heartbeat interval {0:?} is outside 1 ms ..= 60 s")]
    Interval(Duration),
    #[error("failure threshold must be at least 1")]
    ZeroThreshold,
}

/// Election parameters. `mode` (primary / replica) is deliberately absent: a restarting
/// node must never take the role on the strength of its configuration (the peer may be
/// serving after a failover), and at a cold start of both `priority` decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    pub node_id: u32,
    /// This run's epoch (random per start, shared with the heartbeat receiver).
    pub epoch: u32,
    /// Lower wins.
    pub priority: u8,
    pub interval: Duration,
    /// Missed heartbeats before the peer is declared dead.
    pub threshold: u32,
    pub failback: FailbackMode,
    pub failback_delay: Duration,
    /// Whether a bulk sync must finish before this node counts as synced. `false`
    /// (conntrack sync disabled): there is nothing to wait for, it starts synced.
    pub require_sync: bool,
}

impl ElectionConfig {
    /// The defaults of the `ha` block.
    pub fn new(node_id: u32, epoch: u32) -> ElectionConfig {
        ElectionConfig::from_ha(&Ha::default(), node_id, epoch)
    }

    pub fn from_ha(ha: &Ha, node_id: u32, epoch: u32) -> ElectionConfig {
        ElectionConfig {
            node_id,
            epoch,
            priority: ha.priority,
            interval: ha.heartbeat_interval,
            threshold: ha.failure_threshold,
            failback: ha.failback_mode,
            failback_delay: ha.failback_delay,
            require_sync: ha.conntrack_sync.enabled,
        }
    }

    /// From a loaded configuration; `node_id` from `agent::settings::node_id`, `epoch`
    /// from `sync::random_epoch`.
    pub fn from_config(cfg: &Config, node_id: u32, epoch: u32) -> Result<Self, ConfigError> {
        let c = ElectionConfig::from_ha(&cfg.replication.ha, node_id, epoch);
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::ZeroNodeId);
        }
        if self.epoch == 0 {
            return Err(ConfigError::ZeroEpoch);
        }
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            return Err(ConfigError::Interval(self.interval));
        }
        if self.threshold == 0 {
            return Err(ConfigError::ZeroThreshold);
        }
        Ok(())
    }

    /// `interval x threshold`: silence after which the peer is dead.
    pub fn dead_interval(&self) -> Duration {
        self.interval.saturating_mul(self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = ElectionConfig::new(1, 2);
        assert_eq!(c.priority, 100);
        assert_eq!(c.dead_interval(), Duration::from_secs(3));
        assert_eq!(c.failback_delay, Duration::from_secs(60));
        assert!(c.validate().is_ok());
        let bad = |f: fn(&mut ElectionConfig)| {
            let mut c = ElectionConfig::new(1, 2);
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(bad(|c| c.node_id = 0), ConfigError::ZeroNodeId);
        assert_eq!(bad(|c| c.epoch = 0), ConfigError::ZeroEpoch);
        assert_eq!(bad(|c| c.threshold = 0), ConfigError::ZeroThreshold);
        assert!(matches!(
            bad(|c| c.interval = Duration::ZERO),
            ConfigError::Interval(_)
        ));
        assert!(matches!(
            bad(|c| c.interval = Duration::from_secs(61)),
            ConfigError::Interval(_)
        ));
        let mut cfg = Config::default();
        cfg.replication.ha.heartbeat_interval = Duration::from_millis(100);
        cfg.replication.ha.conntrack_sync.enabled = true;
        let c = ElectionConfig::from_config(&cfg, 3, 4).unwrap();
        assert_eq!(c.dead_interval(), Duration::from_millis(300));
        assert!(c.require_sync);
    }
}
