//! Capture: the eBPF netfilter program, its loader, and the ring-buffer reader.
//!
//! [`Capture::start`] reads struct offsets from BTF ([`btf`]), loads the embedded
//! object with them ([`loader`]), attaches it at the configured hooks of the calling
//! thread's network namespace, and then [`Capture::drain`] turns ring-buffer records
//! into [`Change`]s ([`event`]).

pub mod btf;
pub mod event;
pub mod filter;
pub mod hz;
pub mod loader;

use std::{
    os::fd::{AsFd as _, AsRawFd, OwnedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering, fence},
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
};
use ha_common::{CaptureTuning, CtSeen, FilterRule, MAX_FILTERS, counter, names, reader};

use crate::conntrack::Change;
pub use event::BadEvent;

/// The eBPF object built by `build.rs` (empty when built with AYA_BUILD_SKIP).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hasync-ebpf"));

/// `lo` has index 1 in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Where and how to capture.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Ring-buffer size in bytes (power of two, multiple of the page size).
    pub ring_buffer_size: u32,
    /// Entries of the in-kernel dedup table.
    pub dedup_table_size: u32,
    /// How long a record may wait for the reader's drain timer: a reader that sleeps
    /// with its timer due within this is not woken by the program (see
    /// [`Capture::reader_sleeps`]).
    pub max_wait: Duration,
    /// Netfilter hook priority.
    pub priority: i32,
    /// `(family, hook)` pairs to attach to.
    pub hooks: Vec<(u32, u32)>,
    /// Interfaces whose traffic is never reported, by index (loopback and the sync
    /// link by default; 0 = unused slot).
    pub ignore_ifindex: [u32; 3],
    /// Sync filters, evaluated in the program (at most `MAX_FILTERS`).
    pub filters: Vec<FilterRule>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        // Every packet passes exactly one of these two: forwarded and locally sent
        // ones POST_ROUTING, locally received ones LOCAL_IN. (FORWARD would see each
        // forwarded packet a second time.)
        let mut hooks = Vec::new();
        for pf in [loader::NFPROTO_IPV4, loader::NFPROTO_IPV6] {
            for hook in [loader::NF_INET_LOCAL_IN, loader::NF_INET_POST_ROUTING] {
                hooks.push((pf, hook));
            }
        }
        CaptureConfig {
            ring_buffer_size: 16 << 20,
            dedup_table_size: 262_144,
            max_wait: Duration::from_micros(100),
            priority: loader::DEFAULT_PRIORITY,
            hooks,
            // Loopback is always ifindex 1 in every namespace.
            ignore_ifindex: [LOOPBACK_IFINDEX, 0, 0],
            filters: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "this hasync binary was built without its eBPF program (AYA_BUILD_SKIP); rebuild it normally"
    )]
    NoProgram,
    #[error(transparent)]
    Layout(#[from] btf::LayoutError),
    #[error(transparent)]
    Hz(#[from] hz::HzError),
    #[error("loading the eBPF object: {0}")]
    Load(String),
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    #[error("eBPF map `{0}`: {1}")]
    Map(&'static str, String),
    #[error("invalid capture setting: {0}")]
    Config(String),
}

/// Counters kept by the program (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgramCounters {
    pub calls: u64,
    pub with_ct: u64,
    pub new: u64,
    pub update: u64,
    pub refresh: u64,
    /// Events lost because the ring buffer was full.
    pub ringbuf_full: u64,
    pub read_error: u64,
    pub wakeups: u64,
    pub skipped: u64,
    /// Events not emitted because of a filter (the sync interface, sync filters).
    pub filtered: u64,
}

/// A loaded and attached capture program.
pub struct Capture {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    seen: HashMap<MapData, u64, CtSeen>,
    reader: ReaderWord,
    hz: u32,
    /// Optional kernel fields this kernel lacks (logged at start).
    pub missing_fields: Vec<String>,
    /// Records that could not be decoded.
    pub bad_events: u64,
    // Dropping these detaches the program; `_ebpf` owns the maps.
    _links: Vec<OwnedFd>,
    _prog: OwnedFd,
    _ebpf: aya::Ebpf,
}

impl Capture {
    /// Loads the program and attaches it in the calling thread's network namespace.
    pub fn start(cfg: &CaptureConfig) -> Result<Capture, CaptureError> {
        if EBPF_OBJECT.is_empty() {
            return Err(CaptureError::NoProgram);
        }
        if cfg.filters.len() > MAX_FILTERS as usize {
            return Err(CaptureError::Config(format!(
                "{} sync filters configured; at most {MAX_FILTERS} are supported",
                cfg.filters.len()
            )));
        }
        if !cfg.ring_buffer_size.is_power_of_two() || cfg.ring_buffer_size < 4096 {
            return Err(CaptureError::Config(format!(
                "ring_buffer_size {} must be a power of two >= 4096",
                cfg.ring_buffer_size
            )));
        }
        let layout = btf::kernel_layout()?;
        let hz = hz::kernel_hz()?;
        let tuning = CaptureTuning {
            max_wait_ns: cfg.max_wait.as_nanos() as u64,
            new_hooks: (1 << loader::NF_INET_LOCAL_IN) | (1 << loader::NF_INET_POST_ROUTING),
            ignore_ifindex: cfg.ignore_ifindex,
            filters: cfg.filters.len() as u32,
            include_filters: cfg.filters.iter().filter(|f| f.exclude == 0).count() as u32,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(names::LAYOUT, &layout.kernel, true)
            .override_global(names::TUNING, &tuning, true)
            .map_max_entries(names::EVENTS, cfg.ring_buffer_size)
            .map_max_entries(names::SEEN, cfg.dedup_table_size.max(1024))
            .load(EBPF_OBJECT)
            .map_err(|e| CaptureError::Load(e.to_string()))?;
        // Rules go in before the program is attached: no packet is judged without them.
        {
            let map = ebpf
                .map_mut(names::FILTERS)
                .ok_or_else(|| CaptureError::Map(names::FILTERS, "not in the object".into()))?;
            let mut rules: aya::maps::Array<&mut MapData, FilterRule> =
                aya::maps::Array::try_from(map)
                    .map_err(|e| CaptureError::Map(names::FILTERS, e.to_string()))?;
            for (i, rule) in cfg.filters.iter().enumerate() {
                rules
                    .set(i as u32, rule, 0)
                    .map_err(|e| CaptureError::Map(names::FILTERS, e.to_string()))?;
            }
        }
        let prog = loader::load_netfilter(&ebpf, EBPF_OBJECT, names::PROGRAM)?;
        let links = cfg
            .hooks
            .iter()
            .map(|(pf, hook)| loader::attach_netfilter(&prog, *pf, *hook, cfg.priority))
            .collect::<Result<Vec<_>, _>>()?;
        let ring = take_map(&mut ebpf, names::EVENTS, RingBuf::try_from)?;
        let counters = take_map(&mut ebpf, names::COUNTERS, PerCpuArray::try_from)?;
        let seen = take_map(&mut ebpf, names::SEEN, HashMap::try_from)?;
        let reader = ReaderWord::map(take_map(&mut ebpf, names::READER, |m| match m {
            aya::maps::Map::Array(data) => Ok(data),
            _ => Err("not an array"),
        })?)?;
        Ok(Capture {
            ring,
            counters,
            seen,
            reader,
            hz,
            missing_fields: layout.missing,
            bad_events: 0,
            _links: links,
            _prog: prog,
            _ebpf: ebpf,
        })
    }

    /// The kernel's tick rate used to convert timeouts.
    pub fn hz(&self) -> u32 {
        self.hz
    }

    /// Hands up to `max` pending events to `f` (with the kernel timestamp,
    /// CLOCK_MONOTONIC ns) and returns how many were read.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(Change, u64)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.ring.next() else { break };
            n += 1;
            match event::parse_record(&item)
                .and_then(|ev| Ok((event::to_change(&ev, self.hz)?, ev.ts_ns)))
            {
                Ok((change, ts)) => f(change, ts),
                Err(_) => self.bad_events += 1,
            }
        }
        n
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> Result<ProgramCounters, CaptureError> {
        let sum = |idx: u32| -> Result<u64, CaptureError> {
            let per_cpu = self
                .counters
                .get(&idx, 0)
                .map_err(|e| CaptureError::Map(names::COUNTERS, e.to_string()))?;
            Ok(per_cpu.iter().sum())
        };
        Ok(ProgramCounters {
            calls: sum(counter::CALLS)?,
            with_ct: sum(counter::WITH_CT)?,
            new: sum(counter::NEW)?,
            update: sum(counter::UPDATE)?,
            refresh: sum(counter::REFRESH)?,
            ringbuf_full: sum(counter::RINGBUF_FULL)?,
            read_error: sum(counter::READ_ERROR)?,
            wakeups: sum(counter::WAKEUPS)?,
            skipped: sum(counter::SKIPPED_UNCONFIRMED)?,
            filtered: sum(counter::FILTERED)?,
        })
    }
}

impl Capture {
    /// Tells the program the reader runs: it looks at the ring again before it sleeps,
    /// so records need not wake it. Call on every return from the wait.
    pub fn reader_awake(&self) {
        self.reader.publish(reader::AWAKE);
    }

    /// Tells the program the reader is about to sleep, to be woken by its own drain
    /// timer at `timer` or, without one, only by the program. A record that went in
    /// before this call may not have woken it: drain once more after it and sleep only
    /// if that finds nothing.
    pub fn reader_sleeps(&self, timer: Option<Instant>) {
        let state = match timer {
            None => reader::IDLE,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                // Never one of the special values (IDLE = 0, AWAKE, WAKING).
                (monotonic_ns() + left.as_nanos() as u64).clamp(1, reader::WAKING - 1)
            }
        };
        self.reader.publish(state);
    }

    /// Entries the program's dedup table holds. Walks the whole table with one system
    /// call per entry: for diagnostics and tests, not for a metrics scrape.
    pub fn dedup_records(&self) -> usize {
        self.seen.keys().filter(Result::is_ok).count()
    }
}

impl AsRawFd for Capture {
    /// The ring buffer's fd: readable when the program woke the reader.
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

fn take_map<T, E: std::fmt::Display>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, E>,
) -> Result<T, CaptureError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| CaptureError::Map(name, "not in the object".into()))?;
    convert(map).map_err(|e| CaptureError::Map(name, e.to_string()))
}

/// The program's `READER` word, mapped into this process: published with a store, not
/// a system call, because the reader does it around every sleep.
struct ReaderWord {
    word: NonNull<AtomicU64>,
    len: usize,
    // Keeps the map alive as long as the mapping.
    _map: MapData,
}

// SAFETY: the mapping is shared memory accessed only through the atomic.
unsafe impl Send for ReaderWord {}

impl ReaderWord {
    fn map(map: MapData) -> Result<ReaderWord, CaptureError> {
        // SAFETY: plain sysconf.
        let len = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: maps the (mmapable) array's value page; checked below, unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(CaptureError::Map(
                names::READER,
                format!("mmap: {}", std::io::Error::last_os_error()),
            ));
        }
        let word = NonNull::new(ptr.cast::<AtomicU64>()).ok_or_else(|| {
            CaptureError::Map(names::READER, "mmap returned a null mapping".into())
        })?;
        Ok(ReaderWord {
            word,
            len,
            _map: map,
        })
    }

    /// Stores `state`, then a full fence: the caller's next look at the ring must not
    /// be ordered before the store (the program looks at the word after its commit).
    fn publish(&self, state: u64) {
        // SAFETY: the mapping is live and 8-aligned (a page) for as long as `self`.
        unsafe { self.word.as_ref() }.store(state, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
}

impl Drop for ReaderWord {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe { libc::munmap(self.word.as_ptr().cast(), self.len) };
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the program's `bpf_ktime_get_ns` clock.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
