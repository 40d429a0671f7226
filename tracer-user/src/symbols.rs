//! Source locations of recorded stacks: runtime addresses of one process
//! mapped back to functions, files and lines of its Go binary. Shared by every
//! feature that records stacks (locks, maps).

use serde::Serialize;

use crate::gobin::GoBinary;

/// A source location.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Site {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl Site {
    pub(crate) fn unknown(pc: u64) -> Self {
        Site {
            function: format!("?@{pc:#x}"),
            file: String::new(),
            line: 0,
        }
    }
}

/// `" at SITE"`, or nothing without a site: the tail of finding messages.
pub fn at_site(site: Option<&Site>) -> String {
    site.map_or(String::new(), |s| format!(" at {s}"))
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.file.is_empty() {
            write!(f, "{}", self.function)
        } else {
            let file = self.file.rsplit('/').next().unwrap_or(&self.file);
            write!(f, "{} {}:{}", self.function, file, self.line)
        }
    }
}

/// One return address of a stack with its source lines, innermost (inlined)
/// first: a pprof Location with one Line per inlined frame.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PcFrame {
    /// Runtime address inside the CALL (return address - 1).
    pub address: u64,
    pub lines: Vec<Site>,
}

/// One distinct stack and what was counted on it (kept for profiles; the
/// JSON report shows rows merged per call site instead).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackCount {
    /// Innermost first, starting at the call site (machinery trimmed).
    pub frames: Vec<PcFrame>,
    pub count: u64,
    /// Summed duration, ns (0 where nothing is timed, e.g. unlock wakeups).
    pub total_ns: u64,
}

/// Drops the first `skip` lines of a grouped stack (the lock or map
/// machinery), keeping the rest grouped by address.
pub fn trim_lines(frames: Vec<PcFrame>, mut skip: usize) -> Vec<PcFrame> {
    let mut out = Vec::with_capacity(frames.len());
    for mut f in frames {
        if skip >= f.lines.len() {
            skip -= f.lines.len();
            continue;
        }
        f.lines.drain(..skip);
        skip = 0;
        out.push(f);
    }
    out
}

/// How to map runtime addresses of one process back to link-time addresses.
pub struct Symbolizer<'a> {
    pub bin: &'a GoBinary,
    /// Load bias: runtime address minus link-time address (non-zero for PIE).
    pub bias: u64,
}

impl Symbolizer<'_> {
    /// Frames (innermost first, inlined ones included) for a return address.
    fn frames_for_return(&self, ret_pc: u64) -> PcFrame {
        // A return address points after the CALL; step back into it.
        let pc = ret_pc.wrapping_sub(self.bias).wrapping_sub(1);
        let frames = self.bin.symbolize(pc);
        let lines = if frames.is_empty() {
            vec![Site::unknown(ret_pc)]
        } else {
            frames
                .into_iter()
                .map(|f| Site {
                    function: f.function,
                    file: f.file,
                    line: f.line,
                })
                .collect()
        };
        PcFrame {
            address: ret_pc.wrapping_sub(1),
            lines,
        }
    }

    /// The recorded stack grouped by address: the slow path's return address,
    /// then the unwound frames past the caller (frame 0 of `stack` is the
    /// probed function itself).
    pub fn pc_stack(&self, caller_pc: u64, stack: Option<&[u64]>) -> Vec<PcFrame> {
        let mut pcs = Vec::with_capacity(16);
        if caller_pc != 0 {
            pcs.push(caller_pc);
        }
        if let Some(s) = stack {
            // Frame 0 is the probed PC. A probe inside a function's body
            // (past its prologue) also unwinds to the function's own return
            // address, which is `caller_pc` already.
            let skip = if caller_pc != 0 && s.get(1) == Some(&caller_pc) {
                2
            } else {
                1
            };
            pcs.extend(s.iter().skip(skip).copied().filter(|&p| p != 0));
        }
        pcs.into_iter()
            .map(|pc| self.frames_for_return(pc))
            .collect()
    }

    /// [`Symbolizer::pc_stack`] flattened: every source line, innermost first.
    pub fn sites(&self, caller_pc: u64, stack: Option<&[u64]>) -> Vec<Site> {
        flat_stack(&self.pc_stack(caller_pc, stack), |_| false).0
    }
}

/// Flattens a grouped stack; also returns the index of the first line not
/// in `machinery` (0 when every line is).
pub fn flat_stack(frames: &[PcFrame], machinery: fn(&str) -> bool) -> (Vec<Site>, usize) {
    let all: Vec<Site> = frames.iter().flat_map(|f| f.lines.clone()).collect();
    let first_user = all
        .iter()
        .position(|s| !machinery(&s.function))
        .unwrap_or(0);
    (all, first_user)
}

/// The load bias of a PIE, from one stack whose frame 0 is the probed function's
/// entry. Biases are page-aligned, which absorbs an IP reported one byte past the
/// breakpoint.
pub fn bias_from_entry_frame(frame0: u64, entry_vaddr: u64) -> u64 {
    frame0.wrapping_sub(entry_vaddr) & !0xfff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_lock_machinery(function: &str) -> bool {
        function.starts_with("sync.") || function.starts_with("runtime.")
    }

    #[test]
    fn trimming_skips_lines_across_and_within_addresses() {
        let site = |f: &str| Site {
            function: f.into(),
            file: String::new(),
            line: 0,
        };
        let frames = vec![
            PcFrame {
                address: 1,
                lines: vec![site("runtime.semacquire1")],
            },
            PcFrame {
                address: 2,
                lines: vec![site("sync.(*Mutex).Lock"), site("main.inc")],
            },
            PcFrame {
                address: 3,
                lines: vec![site("main.main")],
            },
        ];
        let (flat, first) = flat_stack(&frames, is_lock_machinery);
        assert_eq!(flat.len(), 4);
        assert_eq!(first, 2);
        let t = trim_lines(frames, first);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].address, 2);
        assert_eq!(t[0].lines, vec![site("main.inc")]);
        assert_eq!(t[1].lines, vec![site("main.main")]);
    }

    #[test]
    fn bias_is_page_aligned() {
        assert_eq!(
            bias_from_entry_frame(0x5555_5500_1234, 0x1234),
            0x5555_5500_0000
        );
        assert_eq!(bias_from_entry_frame(0x47_1234, 0x47_1234), 0);
        assert_eq!(bias_from_entry_frame(0x47_1235, 0x47_1234), 0);
    }
}
