//! What the process's memory allocator holds, on `/metrics`: the bytes the proxy has
//! allocated and not freed, the pages those occupy, and all the allocator keeps resident.
//! Their differences say where a proxy's memory went: `allocated` grows with what it
//! holds (destinations, metric series, connections); `resident − active` is memory freed
//! but not yet handed back to the system, which the allocator returns within seconds.
//!
//! The allocator is the binary's choice (jemalloc in `skein`; see its `allocator.rs`),
//! so the binary installs a reader with [`install`] when it starts. Where none is
//! installed (this crate's tests, another allocator), the metrics are left out rather
//! than reported as zero.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::OnceLock;

/// Gives back a map's spare room once it holds under a quarter of it: maps that grew
/// with a large mesh (or a burst of metric series) shrink with it.
pub fn fit<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
    map: &mut std::collections::HashMap<K, V, S>,
) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

/// One reading of the allocator's counters, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Allocated by the program and not yet freed.
    pub allocated: u64,
    /// In pages that hold at least one allocation (≥ `allocated`).
    pub active: u64,
    /// Resident in memory and owned by the allocator: active pages, its own metadata, and
    /// freed pages not yet returned to the system.
    pub resident: u64,
}

/// Reads the allocator's counters; `None` when it cannot say.
pub type Reader = fn() -> Option<HeapStats>;

static READER: OnceLock<Reader> = OnceLock::new();

/// Makes `reader` the source of the heap metrics, once per process; a second call is
/// ignored (the allocator cannot change while the process runs).
pub fn install(reader: Reader) {
    let _ = READER.set(reader);
}

/// The allocator's counters now, if a reader is installed and answers.
pub fn read() -> Option<HeapStats> {
    READER.get().and_then(|r| r())
}

/// The heap gauges, registered with the proxy's metrics; encodes nothing without a reader.
#[derive(Debug, Default)]
pub(crate) struct HeapCollector;

impl Collector for HeapCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode(read(), encoder)
    }
}

/// The three gauges of `stats` (none for `None`).
fn encode(stats: Option<HeapStats>, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let Some(s) = stats else { return Ok(()) };
    for (name, help, v) in [
        (
            "memory_heap_allocated_bytes",
            "Bytes the proxy has allocated and not freed: what it holds now",
            s.allocated,
        ),
        (
            "memory_heap_active_bytes",
            "Bytes in the allocator's pages that hold at least one allocation",
            s.active,
        ),
        (
            "memory_heap_resident_bytes",
            "Bytes the allocator keeps resident: active pages, its metadata, and freed pages it has not yet returned to the system",
            s.resident,
        ),
    ] {
        let gauge = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v as i64).encode(gauge)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn exposition(stats: Option<HeapStats>) -> String {
        #[derive(Debug)]
        struct Fixed(Option<HeapStats>);
        impl Collector for Fixed {
            fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                encode(self.0, encoder)
            }
        }
        let mut reg = Registry::with_prefix("skein");
        reg.register_collector(Box::new(Fixed(stats)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn a_reading_becomes_three_gauges() {
        let text = exposition(Some(HeapStats {
            allocated: 1_000,
            active: 4_096,
            resident: 8_192,
        }));
        assert!(text.contains("# TYPE skein_memory_heap_allocated_bytes gauge\n"));
        assert!(text.contains("\nskein_memory_heap_allocated_bytes 1000\n"));
        assert!(text.contains("\nskein_memory_heap_active_bytes 4096\n"));
        assert!(text.contains("\nskein_memory_heap_resident_bytes 8192\n"));
    }

    #[test]
    fn without_a_reader_nothing_is_reported() {
        assert_eq!(exposition(None), "# EOF\n");
        // This crate's tests install none.
        assert_eq!(read(), None);
    }
}
