//! The host's memory allocator: mimalloc, set up to give memory back as soon as it is free.
//!
//! A job's path allocates and frees many small buffers (the library's replies and job hashes, the plugin
//! ABI's JSON); glibc's malloc took a quarter of the host's CPU at concurrency 50 (docs/performance.md).
//! Plugins keep their own allocator: every value that crosses the plugin ABI is freed by the side that
//! allocated it (abi_stable's types carry their own drop), so the two never free each other's memory. A
//! plugin process runs this same binary, so it gets the same allocator.
//!
//! mimalloc's defaults hold on to memory: it commits its first arena up front and returns freed pages to
//! the kernel only after a second. That kept the idle host ~5 MiB above glibc's malloc. The first is turned
//! off at build time (`MI_DEFAULT_ARENA_EAGER_COMMIT=0` in `.cargo/config.toml`: the option is read before
//! the first allocation, so it cannot be set from here), the second by [`give_memory_back`].

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_t`, mimalloc.h): how many milliseconds freed
/// pages are kept before they are returned to the kernel (default 1000).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc return freed pages to the kernel at once. An operator can still choose otherwise with
/// `MIMALLOC_PURGE_DELAY` (mimalloc reads its environment first).
#[allow(unsafe_code)]
pub fn give_memory_back() {
    // SAFETY: plain integers; mimalloc reads this option whenever it purges.
    unsafe { libmimalloc_sys::mi_option_set_default(PURGE_DELAY, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_named() {
        // The option's documented default identifies it: a mimalloc release that renumbered its options
        // would make this read some other option's value.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads an option.
            assert_eq!(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }, 1000);
        }
    }
}
