//! Metrics in Prometheus text format.
//!
//! The data-plane threads keep plain `u64` counters (no atomics on the hot path) and
//! publish a snapshot of [`Sample`]s to the shared [`Board`] a few times a second. A
//! prometheus-client [`Collector`] turns the latest snapshots into the exposition
//! format on each scrape, and [`http`] serves it.

pub mod http;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// Counter (monotonic) or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One value of one metric, with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Without the `hasync_` prefix; counters without the `_total` suffix (the encoder adds it).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Sample {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Sample {
        Sample {
            name,
            help,
            kind: Kind::Counter,
            labels: Vec::new(),
            value: value as f64,
        }
    }

    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Sample {
        Sample {
            name,
            help,
            kind: Kind::Gauge,
            labels: Vec::new(),
            value,
        }
    }

    pub fn label(mut self, key: &'static str, value: impl Into<String>) -> Sample {
        self.labels.push((key, value.into()));
        self
    }
}

/// The latest snapshot of every source (capture, sender, receiver, installer, ...).
#[derive(Debug, Default, Clone)]
pub struct Board {
    sources: Arc<Mutex<BTreeMap<&'static str, Vec<Sample>>>>,
}

impl Board {
    /// Replaces `source`'s snapshot.
    pub fn publish(&self, source: &'static str, samples: Vec<Sample>) {
        if let Ok(mut s) = self.sources.lock() {
            s.insert(source, samples);
        }
    }

    /// Every sample, grouped by metric name (stable order).
    pub fn snapshot(&self) -> BTreeMap<&'static str, Vec<Sample>> {
        let mut by_name: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
        if let Ok(sources) = self.sources.lock() {
            for sample in sources.values().flatten() {
                by_name.entry(sample.name).or_default().push(sample.clone());
            }
        }
        by_name
    }

    /// The value of one metric with exactly these labels, if published (tests, status).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let sources = self.sources.lock().ok()?;
        sources.values().flatten().find_map(|s| {
            let same = s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v));
            same.then_some(s.value)
        })
    }

    /// The sum of one metric over all its label sets (e.g. every peer), 0 if absent.
    pub fn sum(&self, name: &str) -> f64 {
        let Ok(sources) = self.sources.lock() else {
            return 0.0;
        };
        sources
            .values()
            .flatten()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// A registry whose scrape reads this board.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("hasync");
        registry.register_collector(Box::new(BoardCollector(self.clone())));
        registry
    }

    /// The exposition text.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry())?;
        Ok(out)
    }
}

#[derive(Debug)]
struct BoardCollector(Board);

impl Collector for BoardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, samples) in self.0.snapshot() {
            let Some(first) = samples.first() else {
                continue;
            };
            let metric_type = match first.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(name, first.help, None, metric_type)?;
            if let [only] = samples.as_slice()
                && only.labels.is_empty()
            {
                encode_value(only, metric)?;
                continue;
            }
            for s in &samples {
                let labels: Vec<(String, String)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), v.clone()))
                    .collect();
                encode_value(s, metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn encode_value(s: &Sample, m: MetricEncoder) -> Result<(), std::fmt::Error> {
    match s.kind {
        Kind::Counter => ConstCounter::new(s.value as u64).encode(m),
        Kind::Gauge => ConstGauge::new(s.value).encode(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges_with_labels() {
        let board = Board::default();
        board.publish(
            "receiver",
            vec![
                Sample::counter("sync_rejected", "Datagrams rejected", 3).label("reason", "auth"),
                Sample::counter("sync_rejected", "Datagrams rejected", 1)
                    .label("reason", "version"),
                Sample::gauge("replica_entries", "Entries held for the peer", 42.0),
            ],
        );
        let text = board.render().unwrap();
        assert!(
            text.contains("# TYPE hasync_sync_rejected counter"),
            "{text}"
        );
        assert!(
            text.contains("hasync_sync_rejected_total{reason=\"auth\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("hasync_sync_rejected_total{reason=\"version\"} 1"),
            "{text}"
        );
        assert!(text.contains("hasync_replica_entries 42.0"), "{text}");
        assert_eq!(
            board.value("sync_rejected", &[("reason", "auth")]),
            Some(3.0)
        );
    }

    #[test]
    fn a_new_snapshot_replaces_the_old_one() {
        let board = Board::default();
        board.publish("s", vec![Sample::counter("x", "x", 1)]);
        board.publish("s", vec![Sample::counter("x", "x", 5)]);
        assert_eq!(board.value("x", &[]), Some(5.0));
    }
}
