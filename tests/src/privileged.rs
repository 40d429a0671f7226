//! What makes a test privileged: the [`privileged_test!`](crate::privileged_test)
//! opt-out every eBPF test starts with, and the lock that keeps the
//! timing-sensitive ones of one test binary from running side by side.
//!
//! Privileged tests run by default and *fail* when eBPF cannot load (no root,
//! no BTF, a locked-down kernel): a test that passes by testing nothing would
//! hide a broken CI. They skip only when `TRACER_SKIP_PRIVILEGED=1` is set
//! explicitly, and say so on stderr.

use std::sync::{Mutex, MutexGuard};

/// Starts a privileged test: when `TRACER_SKIP_PRIVILEGED=1` is set it prints
/// `SKIPPED <test>: TRACER_SKIP_PRIVILEGED=1` and returns `Ok(())` from the
/// enclosing test function (which must return a `Result`); otherwise it does
/// nothing and the test goes on.
///
/// The test's name is taken from the function it stands in; pass one
/// (`privileged_test!("name")`) only where that would not name the test.
///
/// ```text
/// #[test]
/// fn deadlock_is_reported() -> anyhow::Result<()> {
///     tracer_tests::privileged_test!();
///     let _serial = tracer_tests::serial();
///     // ...
///     Ok(())
/// }
/// ```
#[macro_export]
macro_rules! privileged_test {
    () => {
        $crate::privileged_test!({
            // A nested item's type name is `<crate>::<path>::<test fn>::here`.
            fn here() {}
            let name = ::std::any::type_name_of_val(&here);
            name.strip_suffix("::here").unwrap_or(name)
        })
    };
    ($test:expr) => {
        if !$crate::privileged_tests_enabled($test) {
            return Ok(());
        }
    };
}

/// False (after printing that `test` is skipped) when `TRACER_SKIP_PRIVILEGED=1`
/// is set explicitly (CI never sets it); true otherwise. Without root a test
/// that goes on then fails with the loader's error rather than pass. Tests use
/// it through [`privileged_test!`](crate::privileged_test).
pub fn privileged_tests_enabled(test: &str) -> bool {
    if std::env::var("TRACER_SKIP_PRIVILEGED").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED {test}: TRACER_SKIP_PRIVILEGED=1");
        return false;
    }
    true
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes the timing-sensitive privileged tests of one test binary: on two
/// cores, parallel fixtures would steal the CPU their lock holders spin on.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
