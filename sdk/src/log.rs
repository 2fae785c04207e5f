//! Logging from a plugin into the host's log (rate-limited and truncated by the host).
//! In a native build the lines go to standard error.

use tmem_api::abi::log_level;

/// Logs an error.
pub fn error(message: &str) {
    write(log_level::ERROR, message)
}

/// Logs a warning.
pub fn warn(message: &str) {
    write(log_level::WARN, message)
}

/// Logs information.
pub fn info(message: &str) {
    write(log_level::INFO, message)
}

/// Logs debugging detail.
pub fn debug(message: &str) {
    write(log_level::DEBUG, message)
}

#[cfg(target_arch = "wasm32")]
fn write(level: i32, message: &str) {
    #[link(wasm_import_module = "tmem")]
    unsafe extern "C" {
        fn log(level: i32, ptr: i32, len: i32);
    }
    // SAFETY: the host reads `len` bytes at `ptr` from this instance's memory.
    unsafe { log(level, message.as_ptr() as i32, message.len() as i32) }
}

#[cfg(not(target_arch = "wasm32"))]
fn write(level: i32, message: &str) {
    eprintln!("[plugin level {level}] {message}");
}
