//! What the tracer knows about a process apart from its probes: its
//! `/proc` entries ([`procfs`]), its container ([`cgroup`]) and pod
//! ([`pods`]), the resulting [`Labels`], and the one [`Selector`] that
//! decides whether a process is looked at.

pub mod cgroup;
mod labels;
pub mod memory;
pub mod pods;
pub mod procfs;
mod selector;

pub use labels::{Labels, labels_of};
pub use selector::Selector;
