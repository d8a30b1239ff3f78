//! The process's memory allocator: jemalloc, for libtorch's CPU tensors as for everything else.

/// jemalloc serves every allocation of the process: Rust's through this declaration, and, built
/// unprefixed, the C and C++ libraries' `malloc` too, so libtorch's CPU tensors come from it.
/// glibc's malloc maps each block above 32 MiB (a batch's activations, from a width-64 ResNet on)
/// afresh and unmaps it when freed, so every step faulted its pages in again: a quarter of a CPU
/// step's time went to the kernel.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read from this symbol when the process starts (the `MALLOC_CONF`
/// environment variable still overrides them). Freed pages are never handed back to the kernel
/// (no decay), so the next step reuses them: a training process holds the peak of its working
/// set, as libtorch's CUDA caching allocator does on a GPU.
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static malloc_conf: MallocConf = MallocConf(c"dirty_decay_ms:-1,muzzy_decay_ms:-1".as_ptr());

/// A C string jemalloc reads at start-up.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points to a string literal, never written.
unsafe impl Sync for MallocConf {}

#[cfg(test)]
mod tests {
    use std::ffi::{c_char, c_int, c_void, CStr};

    extern "C" {
        fn mallctl(
            name: *const c_char,
            oldp: *mut c_void,
            oldlenp: *mut usize,
            newp: *mut c_void,
            newlen: usize,
        ) -> c_int;
    }

    fn option(name: &CStr) -> isize {
        let mut value: isize = 0;
        let mut len = std::mem::size_of::<isize>();
        // SAFETY: a NUL-terminated name and an out-value of the option's type (ssize_t).
        let rc = unsafe {
            mallctl(
                name.as_ptr(),
                (&mut value as *mut isize).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(rc, 0, "mallctl {name:?}");
        value
    }

    #[test]
    fn the_process_allocator_keeps_freed_pages_for_reuse() {
        // -1: never decay, i.e. never hand pages back (jemalloc's default is 10 s for dirty pages).
        assert_eq!(option(c"opt.dirty_decay_ms"), -1);
        assert_eq!(option(c"opt.muzzy_decay_ms"), -1);
    }

    #[test]
    fn libtorch_allocates_from_the_same_allocator() {
        // The `malloc` every shared library binds to (libtorch's CPU allocator calls
        // posix_memalign) is the one this executable defines, not libc's.
        let own = std::env::current_exe().unwrap().canonicalize().unwrap();
        for name in [c"malloc", c"posix_memalign", c"free"] {
            // SAFETY: a NUL-terminated name looked up in the global scope; dladdr fills `info`.
            let file = unsafe {
                let symbol = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
                assert!(!symbol.is_null(), "{name:?}");
                let mut info: libc::Dl_info = std::mem::zeroed();
                assert_ne!(libc::dladdr(symbol, &mut info), 0, "{name:?}");
                CStr::from_ptr(info.dli_fname)
                    .to_string_lossy()
                    .into_owned()
            };
            let file = std::path::Path::new(&file).canonicalize().unwrap();
            assert_eq!(file, own, "{name:?} comes from {}", file.display());
        }
    }
}
