//! The memory allocator of every `skein` process: jemalloc, with one background thread
//! that hands freed pages back to the system five seconds after they were last used, even
//! when the process is idle.
//!
//! Measured with `skein-bench memory` (docs/BENCHMARKS.md, "Memory that comes back"): a
//! proxy that came to hold 5,001 destinations and then, the mesh shrunk, 11, kept 48.8 MiB
//! of private memory under glibc's malloc (43.7 MiB with two arenas and fixed trim and mmap
//! thresholds), against 1.0 MiB for a fresh proxy: freed configuration lies scattered
//! through heaps that glibc can only trim from the top. mimalloc 2.0 came back to 11.8
//! MiB; jemalloc to 9.1 with its defaults and to 6.7–7.1 with these settings (`dirty_decay_ms`
//! 5 s; `muzzy_decay_ms` 0, so freed pages are released with `MADV_DONTNEED` and leave the
//! RSS at once, rather than with `MADV_FREE`, which the kernel takes back only under
//! pressure). The price: an idle proxy's private memory is 1.4 MiB instead of 1.0-1.2.
//! docs/ARCHITECTURE.md ("Binary size and memory") says why for readers of the design.

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (`malloc_conf`, under the prefix the crate
/// builds jemalloc with).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[export_name = "_rjem_malloc_conf"]
#[used]
static MALLOC_CONF: Conf = Conf(
    c"background_thread:true,max_background_threads:1,dirty_decay_ms:5000,muzzy_decay_ms:0"
        .as_ptr(),
);

/// A C string pointer that may live in a static.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[repr(transparent)]
struct Conf(*const std::ffi::c_char);

// SAFETY: it points to a static, immutable, NUL-terminated string.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
unsafe impl Sync for Conf {}

/// Makes jemalloc's counters the source of the proxy's `skein_memory_heap_*` metrics.
/// jemalloc is built with its statistics on (the `stats` feature): they add counter
/// updates to each allocation (callgrind's count per request through the pair moved by
/// under 0.3 % across them and other changes, docs/BENCHMARKS.md), and are what tells a
/// proxy's live data from memory its allocator has yet to return.
pub fn install_heap_stats() {
    #[cfg(all(target_os = "linux", not(target_env = "musl")))]
    skein_proxy::heap::install(read);
}

/// jemalloc's counters now: `epoch` refreshes the cached totals first.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
fn read() -> Option<skein_proxy::heap::HeapStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(skein_proxy::heap::HeapStats {
        allocated: stats::allocated::read().ok()? as u64,
        active: stats::active::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}
