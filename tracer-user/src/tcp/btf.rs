//! Just enough of a BTF reader to find `struct sock` field offsets and a
//! function's parameter positions in `/sys/kernel/btf/vmlinux`.
//!
//! aya-ebpf has no CO-RE relocations and aya-obj keeps its BTF type members
//! private, so the kprobe/fentry programs get their offsets from here, through
//! `TcpConfig`, the way the tracepoint programs get theirs from tracefs.
//! Everything is bounds-checked: a truncated or odd file gives an error, never
//! a panic.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};

/// Where the running kernel exposes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
/// vmlinux BTF is ~5 MiB on distribution kernels.
const MAX_BTF_BYTES: u64 = 64 << 20;
const MAGIC: u16 = 0xeb9f;
/// Anonymous struct/union nesting followed when resolving a member.
const MAX_DEPTH: usize = 8;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Parsed BTF: the raw bytes and where each type starts.
pub struct Btf {
    data: Vec<u8>,
    /// Byte position of type id `i` at `starts[i]`; id 0 is `void`.
    starts: Vec<usize>,
    strings: std::ops::Range<usize>,
}

/// A struct member resolved to a byte offset and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

fn u32_at(d: &[u8], pos: usize) -> Option<u32> {
    let b = d.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// Bytes that follow the 12-byte common header of a type of `kind`.
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION => 12usize.checked_mul(vlen)?,
        KIND_ENUM => 8usize.checked_mul(vlen)?,
        KIND_FUNC_PROTO => 8usize.checked_mul(vlen)?,
        14 => 4,                          // VAR
        15 => 12usize.checked_mul(vlen)?, // DATASEC
        17 => 4,                          // DECL_TAG
        KIND_ENUM64 => 12usize.checked_mul(vlen)?,
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // PTR FWD TYPEDEF VOLATILE CONST RESTRICT FUNC FLOAT TYPE_TAG
        _ => return None,
    })
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        // sysfs reports the true size for this file.
        ensure!(
            meta.len() <= MAX_BTF_BYTES,
            "{} is {} bytes, more than the {} accepted",
            path.display(),
            meta.len(),
            MAX_BTF_BYTES
        );
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(data).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses little-endian BTF (the only kind on x86-64 and arm64 hosts).
    pub fn parse(data: Vec<u8>) -> Result<Self> {
        ensure!(data.len() >= 24, "shorter than a BTF header");
        let magic = u16::from_le_bytes([data[0], data[1]]);
        ensure!(magic == MAGIC, "bad BTF magic {magic:#x}");
        let field = |i: usize| u32_at(&data, 4 + 4 * i).map(|v| v as usize);
        let (hdr, type_off, type_len, str_off, str_len) = (
            field(0).context("header")?,
            field(1).context("header")?,
            field(2).context("header")?,
            field(3).context("header")?,
            field(4).context("header")?,
        );
        let range = |off: usize, len: usize| -> Result<std::ops::Range<usize>> {
            let start = hdr.checked_add(off).context("offset overflow")?;
            let end = start.checked_add(len).context("length overflow")?;
            ensure!(end <= data.len(), "section past the end of the data");
            Ok(start..end)
        };
        let types = range(type_off, type_len)?;
        let strings = range(str_off, str_len)?;
        let mut starts = vec![0usize];
        let mut pos = types.start;
        while pos < types.end {
            let info = u32_at(&data, pos + 4).context("truncated type")?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = extra_len(kind, vlen)
                .ok_or_else(|| anyhow!("unknown BTF kind {kind} at type {}", starts.len()))?;
            starts.push(pos);
            pos = pos
                .checked_add(12 + extra)
                .context("type length overflow")?;
        }
        ensure!(pos == types.end, "type section ends inside a type");
        Ok(Self {
            data,
            starts,
            strings,
        })
    }

    fn header(&self, id: u32) -> Option<(u32, u32, u32, u32, usize)> {
        let pos = *self.starts.get(id as usize)?;
        if id == 0 {
            return None;
        }
        let name = u32_at(&self.data, pos)?;
        let info = u32_at(&self.data, pos + 4)?;
        let size_or_type = u32_at(&self.data, pos + 8)?;
        Some((
            name,
            (info >> 24) & 0x1f,
            info & 0xffff,
            size_or_type,
            pos + 12,
        ))
    }

    fn name(&self, off: u32) -> Option<&str> {
        let start = self.strings.start.checked_add(off as usize)?;
        if start >= self.strings.end {
            return None;
        }
        let bytes = self.data.get(start..self.strings.end)?;
        let end = bytes.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&bytes[..end]).ok()
    }

    /// The first type of `kind` named `name`.
    fn find(&self, kind: u32, name: &str) -> Option<u32> {
        (1..self.starts.len() as u32).find(|&id| {
            self.header(id)
                .is_some_and(|(n, k, ..)| k == kind && self.name(n) == Some(name))
        })
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let (_, kind, _, next, _) = self.header(id)?;
            match kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = next
                }
                _ => return Some(id),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let id = self.resolve(id)?;
        let (_, kind, _, size, extra) = self.header(id)?;
        match kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Some(size),
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let elem = u32_at(&self.data, extra)?;
                let n = u32_at(&self.data, extra + 8)?;
                self.size_of(elem)?.checked_mul(n)
            }
            _ => None,
        }
    }

    /// `(name, type, byte offset)` of each member of a struct or union.
    fn members(&self, id: u32) -> Result<Vec<(u32, u32, u32)>> {
        let (_, kind, vlen, _, extra) = self.header(id).context("bad type id")?;
        ensure!(
            kind == KIND_STRUCT || kind == KIND_UNION,
            "type {id} is not a struct"
        );
        let kind_flag = u32_at(&self.data, self.starts[id as usize] + 4).unwrap_or(0) >> 31 == 1;
        let mut out = Vec::new();
        for i in 0..vlen as usize {
            let p = extra + 12 * i;
            let (name, ty, off) = (
                u32_at(&self.data, p).context("truncated member")?,
                u32_at(&self.data, p + 4).context("truncated member")?,
                u32_at(&self.data, p + 8).context("truncated member")?,
            );
            let (bit_off, bitfield) = if kind_flag {
                (off & 0xff_ffff, off >> 24)
            } else {
                (off, 0)
            };
            if bitfield != 0 || bit_off % 8 != 0 {
                // Not byte-addressable: usable only if never asked for.
                out.push((name, ty, u32::MAX));
            } else {
                out.push((name, ty, bit_off / 8));
            }
        }
        Ok(out)
    }

    /// Finds `name` among the members of struct/union `id`, looking inside
    /// anonymous members (the kernel nests many fields in anonymous unions).
    fn member_in(&self, id: u32, name: &str, depth: usize) -> Result<Option<Member>> {
        if depth > MAX_DEPTH {
            return Ok(None);
        }
        for (n, ty, off) in self.members(id)? {
            let mname = self.name(n).unwrap_or("");
            if mname == name {
                ensure!(off != u32::MAX, "{name} is a bitfield");
                let size = self.size_of(ty).context("member of unknown size")?;
                return Ok(Some(Member { offset: off, size }));
            }
            if mname.is_empty()
                && off != u32::MAX
                && let Some(inner) = self.resolve(ty)
                && matches!(self.header(inner), Some((_, KIND_STRUCT | KIND_UNION, ..)))
                && let Some(m) = self.member_in(inner, name, depth + 1)?
            {
                return Ok(Some(Member {
                    offset: off + m.offset,
                    size: m.size,
                }));
            }
        }
        Ok(None)
    }

    /// Offset and size of `path` (`a.b.c`) inside `struct name`.
    pub fn member(&self, strukt: &str, path: &str) -> Result<Member> {
        let mut id = self
            .find(KIND_STRUCT, strukt)
            .ok_or_else(|| anyhow!("no struct {strukt} in BTF"))?;
        let mut total = 0u32;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let m = self
                .member_in(id, part, 0)?
                .ok_or_else(|| anyhow!("struct {strukt} has no member {path}"))?;
            total = total.checked_add(m.offset).context("offset overflow")?;
            if parts.peek().is_none() {
                return Ok(Member {
                    offset: total,
                    size: m.size,
                });
            }
            // Descend: find the member's type again to continue the path.
            let ty = self
                .members(id)?
                .into_iter()
                .find(|(n, ..)| self.name(*n) == Some(part))
                .map(|(_, ty, _)| ty);
            id = match ty.and_then(|t| self.resolve(t)) {
                Some(t) => t,
                None => bail!("{part} in {strukt} is not a named direct member"),
            };
        }
        bail!("empty member path")
    }

    /// Position of parameter `param` of kernel function `func`.
    pub fn param_index(&self, func: &str, param: &str) -> Result<usize> {
        let f = self
            .find(KIND_FUNC, func)
            .ok_or_else(|| anyhow!("no function {func} in BTF"))?;
        let (_, _, _, proto, _) = self.header(f).context("bad function")?;
        let (_, kind, vlen, _, extra) = self.header(proto).context("bad prototype")?;
        ensure!(kind == KIND_FUNC_PROTO, "{func} has no prototype");
        (0..vlen as usize)
            .find(|i| u32_at(&self.data, extra + 8 * i).and_then(|n| self.name(n)) == Some(param))
            .ok_or_else(|| anyhow!("{func} has no parameter {param}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF with: 1 int(4), 2 u16 int, 3 anon struct { a: int @0, b: u16 @4 },
    /// 4 struct outer { x: int @0, <anon 3> @8 }, 5 proto(p0: int, flags: int), 6 func f.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0u16\0a\0b\0outer\0x\0p0\0flags\0f\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t: Vec<u32> = Vec::new();
        t.extend([s("int"), KIND_INT << 24, 4, 32]);
        t.extend([s("u16"), KIND_INT << 24, 2, 16]);
        t.extend([0, KIND_STRUCT << 24 | 2, 8, s("a"), 1, 0, s("b"), 2, 32]);
        t.extend([
            s("outer"),
            KIND_STRUCT << 24 | 2,
            16,
            s("x"),
            1,
            0,
            0,
            3,
            64,
        ]);
        t.extend([0, KIND_FUNC_PROTO << 24 | 2, 1, s("p0"), 1, s("flags"), 1]);
        t.extend([s("f"), KIND_FUNC << 24, 5]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(v.to_le_bytes());
        }
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_structs_and_params() {
        let b = Btf::parse(sample()).unwrap();
        assert_eq!(
            b.member("outer", "x").unwrap(),
            Member { offset: 0, size: 4 }
        );
        assert_eq!(
            b.member("outer", "b").unwrap(),
            Member {
                offset: 12,
                size: 2
            }
        );
        assert!(b.member("outer", "nope").is_err());
        assert!(b.member("nostruct", "x").is_err());
        assert_eq!(b.param_index("f", "flags").unwrap(), 1);
        assert!(b.param_index("f", "zz").is_err());
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error() {
        let full = sample();
        for n in 0..full.len() {
            // Must not panic; most prefixes are errors.
            let _ = Btf::parse(full[..n].to_vec());
        }
        assert!(Btf::parse(vec![0u8; 64]).is_err());
        let mut bad = full.clone();
        bad[24 + 7] = 0x7f; // kind 31 in the first type
        assert!(Btf::parse(bad).is_err());
    }

    #[test]
    fn reads_the_running_kernels_sock_layout() {
        // Every kernel this project runs on has BTF; the offsets of
        // sock_common's head are fixed by its layout.
        let Ok(b) = Btf::from_sys_fs() else {
            panic!("{VMLINUX} unreadable");
        };
        assert_eq!(b.member("sock_common", "skc_daddr").unwrap().offset, 0);
        assert_eq!(b.member("sock_common", "skc_rcv_saddr").unwrap().offset, 4);
        assert_eq!(
            b.member("sock_common", "skc_dport").unwrap(),
            Member {
                offset: 12,
                size: 2
            }
        );
        assert_eq!(
            b.member("sock_common", "skc_num").unwrap(),
            Member {
                offset: 14,
                size: 2
            }
        );
        assert_eq!(b.member("sock", "__sk_common.skc_family").unwrap().size, 2);
        assert_eq!(b.member("sock_common", "skc_v6_daddr").unwrap().size, 16);
        assert_eq!(b.member("tcp_sock", "srtt_us").unwrap().size, 4);
        assert!(b.param_index("tcp_recvmsg", "flags").unwrap() >= 3);
    }
}
