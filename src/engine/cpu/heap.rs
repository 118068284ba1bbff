//! How the process's heap treats large buffers.
//!
//! A decode step of a batch allocates and frees buffers of hundreds of kilobytes to a few
//! megabytes (a 16-row step's activations, its logits: 16 × 600 KB on a 150k vocabulary).
//! glibc serves each one from a fresh `mmap` and gives it back with `munmap` on free, so
//! every step faults and zeroes its pages again: measured, 14% of a 16-row step on the 0.5B
//! model went to the kernel. Raising the mmap threshold keeps such buffers on the heap, and
//! raising the trim threshold keeps the freed top of the heap for the next step. Both stay
//! bounded (32 MiB, 64 MiB), so what is kept is small beside a model's weights.

/// Buffers below this size come from the heap, not from their own `mmap`.
const MMAP_THRESHOLD: usize = 32 << 20;
/// Free memory at the top of the heap is given back to the system only past this size.
const TRIM_THRESHOLD: usize = 64 << 20;

/// Sets the heap's thresholds for this process. Call once, early; elsewhere than glibc it
/// does nothing.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's allocation parameters; any value is valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}
