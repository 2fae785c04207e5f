//! The host page store: where a store plugin keeps page bytes so that they outlive any one
//! plugin instance. Keyed by page offset, one namespace per pool; the host accounts every byte.
//!
//! In a Wasm build these are imports from the host (`tmem::pages_*`, see
//! [`tmem_api::abi`]). In a native build (a plugin's own unit tests, doc tests) they are
//! backed by a thread-local map, so a store can be tested with `cargo test` like any crate.

/// The host could not find room for the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocFailed;

/// Keeps `data` under `offset`, replacing what was there.
pub fn put(offset: u64, data: &[u8]) -> Result<(), AllocFailed> {
    match imp::put(offset, data) {
        0 => Ok(()),
        _ => Err(AllocFailed),
    }
}

/// Copies the bytes kept under `offset` into `out` and returns their length; `None` if nothing
/// is kept there (or `out` is too small, which a correctly sized I/O buffer never is).
pub fn get(offset: u64, out: &mut [u8]) -> Option<usize> {
    let n = imp::get(offset, out);
    usize::try_from(n).ok()
}

/// Drops `offset`; returns whether anything was there.
pub fn delete(offset: u64) -> bool {
    imp::delete(offset) == 1
}

/// Drops every page of the pool.
pub fn clear() {
    imp::clear()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    #[link(wasm_import_module = "tmem")]
    unsafe extern "C" {
        fn pages_put(offset: i64, ptr: i32, len: i32) -> i32;
        fn pages_get(offset: i64, ptr: i32, cap: i32) -> i32;
        fn pages_delete(offset: i64) -> i32;
        fn pages_clear();
    }

    pub fn put(offset: u64, data: &[u8]) -> i32 {
        // SAFETY: the host reads `len` bytes at `ptr` from this instance's memory.
        unsafe { pages_put(offset as i64, data.as_ptr() as i32, data.len() as i32) }
    }

    pub fn get(offset: u64, out: &mut [u8]) -> i32 {
        // SAFETY: the host writes at most `cap` bytes at `ptr` in this instance's memory.
        unsafe { pages_get(offset as i64, out.as_mut_ptr() as i32, out.len() as i32) }
    }

    pub fn delete(offset: u64) -> i32 {
        // SAFETY: no pointers are passed.
        unsafe { pages_delete(offset as i64) }
    }

    pub fn clear() {
        // SAFETY: no pointers are passed.
        unsafe { pages_clear() }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use tmem_api::abi::pages;

    thread_local! {
        static PAGES: RefCell<HashMap<u64, Vec<u8>>> = RefCell::new(HashMap::new());
    }

    pub fn put(offset: u64, data: &[u8]) -> i32 {
        PAGES.with(|p| p.borrow_mut().insert(offset, data.to_vec()));
        0
    }

    pub fn get(offset: u64, out: &mut [u8]) -> i32 {
        PAGES.with(|p| match p.borrow().get(&offset) {
            None => pages::ABSENT,
            Some(bytes) if bytes.len() > out.len() => pages::TOO_SMALL,
            Some(bytes) => {
                out[..bytes.len()].copy_from_slice(bytes);
                bytes.len() as i32
            }
        })
    }

    pub fn delete(offset: u64) -> i32 {
        PAGES.with(|p| p.borrow_mut().remove(&offset).is_some() as i32)
    }

    pub fn clear() {
        PAGES.with(|p| p.borrow_mut().clear())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn native_page_store_behaves_like_the_host() {
        assert!(super::put(7, b"abc").is_ok());
        let mut out = [0u8; 8];
        assert_eq!(super::get(7, &mut out), Some(3));
        assert_eq!(&out[..3], b"abc");
        assert_eq!(super::get(7, &mut out[..2]), None, "too small is not a hit");
        assert!(super::delete(7));
        assert!(!super::delete(7));
        assert_eq!(super::get(7, &mut out), None);
    }
}
