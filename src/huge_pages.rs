//! Transparent huge pages, off for this process by default.
//!
//! mimalloc asks the kernel for huge pages on all of its memory. Then the
//! first write to each 2 MiB region makes the kernel clear a whole huge page,
//! even when only a few kilobytes of it are ever used. The `aggregate`
//! processor fills its tables with random writes, so it touches most of those
//! regions early. On virtual machines whose host backs guest memory lazily,
//! that clearing was up to a fifth of a whole 2 M-event run
//! (docs/performance.md). With 4 KiB pages, memory is made only where it is
//! written, and the resident set stays closer to what the state holds. Redis
//! advises the same.

/// The variable that keeps huge pages on (mimalloc's own option: `1` allows
/// them, as mimalloc does by default).
pub const ALLOW_VAR: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process, unless
/// [`ALLOW_VAR`] is set (to anything: mimalloc then reads it itself).
///
/// Call it first thing in `main`: the setting applies to every page faulted
/// in afterwards, whatever mimalloc asked for when it reserved its memory.
pub fn disable_unless_allowed() {
    #[cfg(target_os = "linux")]
    if std::env::var_os(ALLOW_VAR).is_none() {
        // SAFETY: PR_SET_THP_DISABLE reads no pointers; it sets one flag of
        // this process. A kernel without it returns an error, which leaves
        // huge pages as they were: nothing to handle.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}
