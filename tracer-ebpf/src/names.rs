//! Compile-time checks that the maps and programs user space opens by name
//! (`tracer_common::names`) are spelled that way here. aya's macros name an
//! item after its identifier, so the identifiers stay literal; a renamed map
//! or program then fails this build instead of failing to load at run time.

/// `check_names!(item => NAME, ...)`, next to the items: each `item` must be
/// in scope (a map static or a program function) and be spelled `NAME`.
macro_rules! check_names {
    ($($item:ident => $name:expr),* $(,)?) => {
        $(
            const _: () = {
                // Never called: it only has to compile, so `item` must exist.
                #[allow(dead_code)]
                fn exists() {
                    let _ = &$item;
                }
                assert!(
                    $crate::names::same(stringify!($item), $name),
                    concat!(stringify!($item), " is not named as in tracer_common::names")
                );
            };
        )*
    };
}
pub(crate) use check_names;

/// `a == b`, in a const context.
pub(crate) const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
