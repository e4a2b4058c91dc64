//! The kernel's tick rate (CONFIG_HZ): conntrack timeouts are in jiffies.

use std::{io::Read as _, path::Path, time::Duration};

/// The tick rates Linux can be configured with.
const KNOWN: [u32; 5] = [100, 250, 300, 1000, 1024];

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot tell the kernel's tick rate (CONFIG_HZ): no /proc/config.gz, no /boot/config-<release>, and /proc/timer_list is unreadable"
)]
pub struct HzError;

/// Reads CONFIG_HZ from the kernel config, or measures it from /proc/timer_list.
pub fn kernel_hz() -> Result<u32, HzError> {
    if let Some(hz) = from_config_gz(Path::new("/proc/config.gz")) {
        return Ok(hz);
    }
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        let path = format!("/boot/config-{}", release.trim());
        if let Some(hz) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| config_hz(&t))
        {
            return Ok(hz);
        }
    }
    measure().ok_or(HzError)
}

fn from_config_gz(path: &Path) -> Option<u32> {
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .ok()?;
    config_hz(&text)
}

/// `CONFIG_HZ=<n>` from a kernel config.
pub fn config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

/// Counts jiffies over 100 ms and rounds to the nearest configurable rate.
fn measure() -> Option<u32> {
    let j0 = timer_list_jiffies()?;
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    let j1 = timer_list_jiffies()?;
    let rate = (j1.wrapping_sub(j0)) as f64 / t0.elapsed().as_secs_f64();
    nearest(rate)
}

fn nearest(rate: f64) -> Option<u32> {
    KNOWN
        .iter()
        .copied()
        .min_by_key(|k| (rate - *k as f64).abs() as u64)
}

fn timer_list_jiffies() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/timer_list").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("jiffies: "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_config() {
        assert_eq!(
            config_hz("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(config_hz("CONFIG_HZ_1000=y\n"), None);
    }

    #[test]
    fn measurement_agrees_with_config() {
        let configured = kernel_hz().unwrap();
        assert_eq!(measure(), Some(configured));
    }

    #[test]
    fn rounds_to_a_known_rate() {
        assert_eq!(nearest(247.0), Some(250));
        assert_eq!(nearest(990.0), Some(1000));
        assert_eq!(nearest(104.0), Some(100));
    }
}
