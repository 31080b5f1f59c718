//! Failpoints for fault-injection tests: when `SLUICE_FAILPOINT` names a point, the process
//! aborts there, as if killed ([`hit`]), or the code asks whether it is armed to misbehave
//! otherwise ([`armed`], e.g. to panic inside a call). Unset in production; a single
//! environment read per hit.

/// Whether `SLUICE_FAILPOINT` equals `name`.
pub fn armed(name: &str) -> bool {
    std::env::var("SLUICE_FAILPOINT").is_ok_and(|v| v == name)
}

/// Aborts the process if `SLUICE_FAILPOINT` equals `name`.
pub fn hit(name: &str) {
    if armed(name) {
        eprintln!("failpoint {name} hit: aborting");
        std::process::abort();
    }
}

/// Panics (instead of aborting) if `SLUICE_FAILPOINT` equals `name`: for proving that a panic
/// is caught where it happens and the process lives on.
pub fn panic_at(name: &str) {
    if std::env::var("SLUICE_FAILPOINT").is_ok_and(|v| v == name) {
        panic!("failpoint {name} hit: panicking");
    }
}
