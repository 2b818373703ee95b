//! Asking the CPU to start loading memory before it is read.
//!
//! With a million accounts nearly every entry a decision touches is a cache miss, and each
//! lookup in a store locks a shard: a lock is an atomic read-modify-write, which waits for
//! every earlier load. So looked up one after another, the misses are paid one after another.
//! A prefetch is not a load: it never faults, never waits, and locks do not wait for it, so
//! a decision can start every miss first and then read what has arrived.

/// Starts loading the cache line holding `p` into every cache level, without waiting. Any
/// address is allowed, dangling or not: a prefetch reads nothing the program can see.
#[inline(always)]
#[allow(unsafe_code)]
pub fn line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint with no architectural effect; it never faults and reads
    // nothing the program observes, whatever the address. SSE is in the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Starts loading the first and the last element of `s` (an empty slice's dangling address
/// is fine for a prefetch).
#[inline(always)]
pub fn ends<T>(s: &[T]) {
    line(s.as_ptr());
    line(s.as_ptr().wrapping_add(s.len().saturating_sub(1)));
}

/// Starts loading the first `bytes` bytes of `s` (all of it when it is shorter).
#[inline(always)]
pub fn head<T>(s: &[T], bytes: usize) {
    self::bytes(s.as_ptr(), std::mem::size_of_val(s).min(bytes));
}

/// Starts loading the first `bytes` bytes from `p`, a cache line at a time.
#[inline(always)]
pub fn bytes<T>(p: *const T, bytes: usize) {
    let p = p.cast::<u8>();
    for off in (0..bytes).step_by(64) {
        line(p.wrapping_add(off));
    }
    // The last line too, when `p` is not at a line's start.
    if bytes > 0 {
        line(p.wrapping_add(bytes - 1));
    }
}

/// Whether prefetching does anything on this target (on others it is a no-op, and a lookup
/// started ahead would only cost its locks).
pub const ENABLED: bool = cfg!(target_arch = "x86_64");
