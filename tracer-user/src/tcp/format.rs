//! Parser for tracefs event format files
//! (`/sys/kernel/tracing/events/<group>/<name>/format`).
//!
//! Field offsets differ between kernels, so they are read at run time. The
//! text comes from the kernel, but it is treated as untrusted anyway: input
//! and field counts are capped, every number is range-checked, and nothing
//! here panics.

use std::{fmt, fs, io::Read, path::Path};

use anyhow::{Context, Result, bail};

/// Longest format file accepted; real ones are a few KiB.
pub const MAX_FORMAT_BYTES: usize = 64 * 1024;
/// Most fields accepted in one event.
pub const MAX_FIELDS: usize = 256;
/// Largest offset + size accepted: a trace record is at most a page.
pub const MAX_RECORD_BYTES: u32 = 4096;

/// One `field:` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Declared C type, e.g. `const void *` or `__u8` (array suffix removed).
    pub ty: String,
    pub name: String,
    /// Element count for `name[N]` fields.
    pub array_len: Option<u32>,
    pub offset: u16,
    pub size: u16,
    pub signed: bool,
}

/// A parsed format file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub id: Option<u32>,
    pub fields: Vec<Field>,
}

/// Why a format file was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum FormatError {
    TooLong(usize),
    TooManyFields,
    BadField { line: usize, why: &'static str },
    NoFields,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::TooLong(n) => write!(f, "format text too long ({n} bytes)"),
            FormatError::TooManyFields => write!(f, "more than {MAX_FIELDS} fields"),
            FormatError::BadField { line, why } => write!(f, "line {line}: {why}"),
            FormatError::NoFields => write!(f, "no field lines"),
        }
    }
}

impl std::error::Error for FormatError {}

impl Format {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Offset of `name`, checking that its size is one of `sizes`.
    pub fn offset_of(&self, name: &str, sizes: &[u16]) -> Result<u16, String> {
        let f = self
            .field(name)
            .ok_or_else(|| format!("field `{name}` not in format of {}", self.name))?;
        if !sizes.contains(&f.size) {
            return Err(format!(
                "field `{name}` of {} has size {}, expected {:?}",
                self.name, f.size, sizes
            ));
        }
        Ok(f.offset)
    }
}

/// Parses a `key:value` part of a field line, value a decimal number.
fn number(part: &str, key: &str) -> Option<u32> {
    let v = part.trim().strip_prefix(key)?.strip_prefix(':')?;
    v.trim().parse().ok()
}

/// Splits `type name[N]` into (type, name, N).
fn declaration(decl: &str) -> Option<(String, String, Option<u32>)> {
    let decl = decl.trim();
    let (ty, last) = match decl.rfind(|c: char| c.is_ascii_whitespace() || c == '*') {
        Some(i) => (decl.get(..=i)?.trim(), decl.get(i + 1..)?),
        None => return None,
    };
    let (name, len) = match last.find('[') {
        Some(i) => {
            let inner = last.get(i + 1..)?.strip_suffix(']')?;
            // `char name[]` (a __data_loc string) has no length.
            let len = if inner.is_empty() {
                None
            } else {
                Some(inner.parse().ok()?)
            };
            (last.get(..i)?, len)
        }
        None => (last, None),
    };
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid || ty.is_empty() || ty.len() > 128 {
        return None;
    }
    Some((ty.to_owned(), name.to_owned(), len))
}

fn parse_field(line: &str) -> Result<Field, &'static str> {
    let mut parts = line.split(';');
    let decl = parts
        .next()
        .and_then(|p| p.trim().strip_prefix("field:"))
        .ok_or("no `field:`")?;
    let (ty, name, array_len) = declaration(decl).ok_or("bad declaration")?;
    let offset = parts
        .next()
        .and_then(|p| number(p, "offset"))
        .ok_or("bad offset")?;
    let size = parts
        .next()
        .and_then(|p| number(p, "size"))
        .ok_or("bad size")?;
    // `signed:` is missing on very old kernels; default to unsigned.
    let signed = parts.next().and_then(|p| number(p, "signed")).unwrap_or(0) != 0;
    if offset
        .checked_add(size)
        .is_none_or(|end| end > MAX_RECORD_BYTES)
    {
        return Err("field outside a trace record");
    }
    Ok(Field {
        ty,
        name,
        array_len,
        offset: u16::try_from(offset).map_err(|_| "offset too large")?,
        size: u16::try_from(size).map_err(|_| "size too large")?,
        signed,
    })
}

/// Parses a whole format file.
pub fn parse(text: &str) -> Result<Format, FormatError> {
    if text.len() > MAX_FORMAT_BYTES {
        return Err(FormatError::TooLong(text.len()));
    }
    let mut out = Format::default();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(n) = t.strip_prefix("name:") {
            out.name = n.trim().chars().take(128).collect();
        } else if let Some(n) = t.strip_prefix("ID:") {
            out.id = n.trim().parse().ok();
        } else if t.starts_with("field:") {
            if out.fields.len() >= MAX_FIELDS {
                return Err(FormatError::TooManyFields);
            }
            let f = parse_field(t).map_err(|why| FormatError::BadField { line: i + 1, why })?;
            out.fields.push(f);
        } else if t.starts_with("print fmt:") {
            break;
        }
    }
    if out.fields.is_empty() {
        return Err(FormatError::NoFields);
    }
    Ok(out)
}

/// Reads and parses `<tracefs>/events/<group>/<name>/format`. `Ok(None)` when
/// the event does not exist on this kernel.
pub fn read_event_format(tracefs: &Path, group: &str, name: &str) -> Result<Option<Format>> {
    let path = tracefs.join("events").join(group).join(name).join("format");
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut buf = Vec::new();
    file.take(MAX_FORMAT_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    let Ok(text) = String::from_utf8(buf) else {
        bail!("{} is not UTF-8", path.display());
    };
    parse(&text)
        .map(Some)
        .with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `sock:inet_sock_set_state` as Linux 6.18 prints it.
    pub(crate) const SET_STATE: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s sport=%hu\", REC->family
";

    /// `tcp:tcp_probe` as Linux 6.18 prints it (abridged print fmt).
    pub(crate) const TCP_PROBE: &str = "name: tcp_probe
ID: 2273
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__u8 saddr[28];\toffset:8;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:36;\tsize:28;\tsigned:0;
\tfield:__u16 sport;\toffset:64;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:66;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:68;\tsize:2;\tsigned:0;
\tfield:__u32 mark;\toffset:72;\tsize:4;\tsigned:0;
\tfield:__u16 data_len;\toffset:76;\tsize:2;\tsigned:0;
\tfield:__u32 snd_nxt;\toffset:80;\tsize:4;\tsigned:0;
\tfield:__u32 snd_una;\toffset:84;\tsize:4;\tsigned:0;
\tfield:__u32 snd_cwnd;\toffset:88;\tsize:4;\tsigned:0;
\tfield:__u32 ssthresh;\toffset:92;\tsize:4;\tsigned:0;
\tfield:__u32 snd_wnd;\toffset:96;\tsize:4;\tsigned:0;
\tfield:__u32 srtt;\toffset:100;\tsize:4;\tsigned:0;
\tfield:__u32 rcv_wnd;\toffset:104;\tsize:4;\tsigned:0;
\tfield:__u64 sock_cookie;\toffset:112;\tsize:8;\tsigned:0;
\tfield:const void * skbaddr;\toffset:120;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:128;\tsize:8;\tsigned:0;

print fmt: \"family=%s src=%pISpc\", REC->saddr
";

    #[test]
    fn parses_set_state() {
        let f = parse(SET_STATE).expect("parse");
        assert_eq!(f.name, "inet_sock_set_state");
        assert_eq!(f.id, Some(2287));
        assert_eq!(f.fields.len(), 15);
        let sk = f.field("skaddr").expect("skaddr");
        assert_eq!((sk.ty.as_str(), sk.offset, sk.size), ("const void *", 8, 8));
        let old = f.field("oldstate").expect("oldstate");
        assert!(old.signed);
        let v6 = f.field("daddr_v6").expect("daddr_v6");
        assert_eq!((v6.offset, v6.size, v6.array_len), (56, 16, Some(16)));
        assert_eq!(f.offset_of("protocol", &[2]), Ok(30));
        assert!(f.offset_of("protocol", &[4]).is_err());
        assert!(f.offset_of("nope", &[4]).is_err());
    }

    #[test]
    fn parses_tcp_probe() {
        let f = parse(TCP_PROBE).expect("parse");
        assert_eq!(f.offset_of("srtt", &[4]), Ok(100));
        assert_eq!(f.offset_of("skaddr", &[8]), Ok(128));
        assert_eq!(f.field("saddr").and_then(|s| s.array_len), Some(28));
    }

    #[test]
    fn data_loc_and_pointer_declarations() {
        let t = "name: x\n\tfield:__data_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:struct sock*sk;\toffset:16;\tsize:8;\tsigned:0;\n";
        let f = parse(t).expect("parse");
        assert_eq!(
            f.field("name").map(|x| x.ty.as_str()),
            Some("__data_loc char[]")
        );
        assert_eq!(f.field("sk").map(|x| x.offset), Some(16));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        // Every prefix of a real file either parses or errors cleanly.
        for end in 0..SET_STATE.len() {
            if let Some(prefix) = SET_STATE.get(..end) {
                let _ = parse(prefix);
            }
        }
        assert_eq!(parse(""), Err(FormatError::NoFields));
        assert_eq!(parse("\u{0}\u{ff}garbage\n\n"), Err(FormatError::NoFields));
        for bad in [
            "\tfield:int x;\toffset:abc;\tsize:4;",
            "\tfield:int x;\toffset:4;",
            "\tfield:int x;\toffset:4000;\tsize:200;",
            "\tfield:int x;\toffset:4294967295;\tsize:4294967295;",
            "\tfield:x;\toffset:0;\tsize:4;",
            "\tfield:int x[zz];\toffset:0;\tsize:4;",
            "\tfield:int x[4;\toffset:0;\tsize:4;",
            "\tfield:int a-b;\toffset:0;\tsize:4;",
            "\tfield:",
        ] {
            assert!(
                matches!(parse(bad), Err(FormatError::BadField { .. })),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn truncated_file_keeps_complete_fields_only() {
        // Cut in the middle of the `daddr_v6` line: that line is malformed.
        let cut = SET_STATE.find("offset:56").expect("marker") + 5;
        assert!(matches!(
            parse(&SET_STATE[..cut]),
            Err(FormatError::BadField { .. })
        ));
        // Cut at a line boundary: earlier fields parse.
        let cut = SET_STATE.find("\tfield:__u8 daddr_v6").expect("marker");
        let f = parse(&SET_STATE[..cut]).expect("parse");
        assert!(f.field("saddr_v6").is_some() && f.field("daddr_v6").is_none());
    }

    #[test]
    fn caps_size_and_field_count() {
        let big = "x".repeat(MAX_FORMAT_BYTES + 1);
        assert!(matches!(parse(&big), Err(FormatError::TooLong(_))));
        let many: String = (0..=MAX_FIELDS)
            .map(|i| format!("\tfield:int f{i};\toffset:0;\tsize:4;\tsigned:1;\n"))
            .collect();
        assert_eq!(parse(&many), Err(FormatError::TooManyFields));
    }

    #[test]
    fn reads_this_kernels_format_when_present() {
        let root = Path::new(crate::kernelfs::TRACEFS);
        // Without tracefs or root there is nothing to check here.
        if let Ok(Some(f)) = read_event_format(root, "sock", "inet_sock_set_state") {
            assert!(f.offset_of("skaddr", &[8]).is_ok());
        }
        assert!(matches!(
            read_event_format(root, "nonexistent_group", "nope"),
            Ok(None) | Err(_)
        ));
    }
}
