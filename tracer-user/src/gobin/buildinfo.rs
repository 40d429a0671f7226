//! `.go.buildinfo`: the Go version, module path and build settings that the
//! Go linker embeds in every binary (what `go version -m` prints).

use serde::Serialize;

use super::GoBinError;
use super::reader::{slice, u8_at, uvarint, word};

/// Magic at the start of the build info blob.
pub(crate) const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Largest version/modinfo string we accept (real ones are a few KiB).
const MAX_STRING: u64 = 1 << 20;
/// `runtime/debug` wraps modinfo in these 16-byte sentinels.
const MODINFO_START: &[u8] = b"0w\xaf\x0c\x92t\x08\x02A\xe1\xc1\x07\xe6\xd6\x18\xe6";

/// Build information embedded by the Go linker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    /// e.g. `go1.25.5`; any ` X:...` suffix is moved to `experiments`.
    pub go_version: String,
    /// Main package path (`path` line).
    pub path: Option<String>,
    /// Main module path (`mod` line).
    pub main_module: Option<String>,
    /// Main module version, e.g. `(devel)` or `v1.2.3`.
    pub main_version: Option<String>,
    /// `build` lines as key/value pairs (`-buildmode`, `CGO_ENABLED`, `-ldflags`...).
    pub settings: Vec<(String, String)>,
    /// GOEXPERIMENT flags from the version suffix and the `GOEXPERIMENT` setting.
    pub experiments: Vec<String>,
}

impl BuildInfo {
    /// Value of a `build` setting.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the blob that starts with [`MAGIC`]. `read_vaddr` resolves pointers
/// for the pre-1.18 pointer format.
pub(crate) fn parse_blob(
    blob: &[u8],
    read_vaddr: &dyn Fn(u64, usize) -> Option<Vec<u8>>,
) -> Result<BuildInfo, GoBinError> {
    let bad = |m: &str| GoBinError::BadBuildInfo(m.to_string());
    if blob.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(GoBinError::NoBuildInfo);
    }
    let ptr_size = u8_at(blob, 14).ok_or_else(|| bad("truncated header"))?;
    let flags = u8_at(blob, 15).ok_or_else(|| bad("truncated header"))?;
    let (version, modinfo) = if flags & 2 != 0 {
        // Go ≥ 1.18: two varint-prefixed strings right after the 32-byte header.
        let mut pos = 32;
        let v = varint_string(blob, &mut pos).ok_or_else(|| bad("bad inline version string"))?;
        let m = varint_string(blob, &mut pos).unwrap_or_default();
        (v, m)
    } else {
        // Older: pointers to Go string headers {data, len}.
        if ptr_size != 4 && ptr_size != 8 {
            return Err(bad("pointer size is neither 4 nor 8"));
        }
        let be = flags & 1 != 0;
        let ps = usize::from(ptr_size);
        let read_string = |hdr_ptr: u64| -> Option<Vec<u8>> {
            let hdr = read_vaddr(hdr_ptr, 2 * ps)?;
            let data = word(&hdr, 0, ptr_size, be)?;
            let len = word(&hdr, ps, ptr_size, be)?;
            if len > MAX_STRING {
                return None;
            }
            if len == 0 {
                return Some(Vec::new());
            }
            read_vaddr(data, usize::try_from(len).ok()?)
        };
        let vp = word(blob, 16, ptr_size, be).ok_or_else(|| bad("truncated header"))?;
        let mp = word(blob, 16 + ps, ptr_size, be).ok_or_else(|| bad("truncated header"))?;
        let v = read_string(vp).ok_or_else(|| bad("version pointer does not resolve"))?;
        let m = read_string(mp).unwrap_or_default();
        (v, m)
    };
    let version = String::from_utf8_lossy(&version).into_owned();
    if !version.starts_with("go") && !version.starts_with("devel") {
        return Err(bad("version string does not start with \"go\""));
    }
    Ok(from_strings(&version, &modinfo))
}

fn varint_string(d: &[u8], pos: &mut usize) -> Option<Vec<u8>> {
    let len = uvarint(d, pos)?;
    if len > MAX_STRING {
        return None;
    }
    let s = slice(d, *pos, usize::try_from(len).ok()?)?.to_vec();
    *pos += s.len();
    Some(s)
}

/// Builds a [`BuildInfo`] from the raw version string and modinfo text.
pub(crate) fn from_strings(version: &str, modinfo: &[u8]) -> BuildInfo {
    let mut bi = BuildInfo::default();
    let (v, exps) = match version.split_once(" X:") {
        Some((v, x)) => (v, Some(x)),
        None => (version, None),
    };
    bi.go_version = v.trim().to_string();
    if let Some(x) = exps {
        add_experiments(&mut bi.experiments, x);
    }
    let mut m = modinfo;
    if m.len() >= 33 && m.starts_with(MODINFO_START) && m.get(m.len() - 17) == Some(&b'\n') {
        m = &m[16..m.len() - 16];
    }
    let text = String::from_utf8_lossy(m);
    for line in text.lines() {
        let mut parts = line.split('\t');
        match parts.next() {
            Some("path") => bi.path = parts.next().map(str::to_string),
            Some("mod") => {
                bi.main_module = parts.next().map(str::to_string);
                bi.main_version = parts.next().map(str::to_string);
            }
            Some("build") => {
                let rest = line.strip_prefix("build\t").unwrap_or("");
                if let Some((k, v)) = split_setting(rest) {
                    if k == "GOEXPERIMENT" {
                        add_experiments(&mut bi.experiments, &v);
                    }
                    bi.settings.push((k, v));
                }
            }
            _ => {}
        }
    }
    bi
}

fn add_experiments(out: &mut Vec<String>, list: &str) {
    for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if !out.iter().any(|x| x == e) {
            out.push(e.to_string());
        }
    }
}

/// `key=value`, where key and value may be Go-quoted (`-ldflags="-s -w"`).
fn split_setting(s: &str) -> Option<(String, String)> {
    let (key, rest) = if s.starts_with('"') {
        let (k, used) = unquote_prefix(s)?;
        (k, s.get(used..)?)
    } else {
        let eq = s.find('=')?;
        (s[..eq].to_string(), &s[eq..])
    };
    let rest = rest.strip_prefix('=')?;
    let value = if rest.starts_with('"') {
        unquote_prefix(rest)
            .map(|(v, _)| v)
            .unwrap_or_else(|| rest.to_string())
    } else {
        rest.to_string()
    };
    Some((key, value))
}

/// Decodes a Go double-quoted string at the start of `s`; returns the value and
/// the number of bytes consumed.
fn unquote_prefix(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut it = s.char_indices();
    if it.next()?.1 != '"' {
        return None;
    }
    while let Some((i, c)) = it.next() {
        match c {
            '"' => return Some((out, i + 1)),
            '\\' => {
                let (_, e) = it.next()?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut v = 0u32;
                        for _ in 0..n {
                            v = v * 16 + it.next()?.1.to_digit(16)?;
                        }
                        out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
                    }
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            }
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_mem(_: u64, _: usize) -> Option<Vec<u8>> {
        None
    }

    fn inline_blob(version: &str, modinfo: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(8);
        b.push(2);
        b.resize(32, 0);
        for s in [version.as_bytes(), modinfo] {
            let mut n = s.len();
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    b.push(byte);
                    break;
                }
                b.push(byte | 0x80);
            }
            b.extend_from_slice(s);
        }
        b
    }

    fn wrap(modinfo: &str) -> Vec<u8> {
        let mut m = MODINFO_START.to_vec();
        m.extend_from_slice(modinfo.as_bytes());
        m.extend_from_slice(b"\xf92C1\x86\x18 r\x00\x82B\x10A\x16\xd8\xf2");
        m
    }

    #[test]
    fn inline_format() {
        let mi = wrap(
            "path\texample.com/x\nmod\texample.com/x\tv1.2.3\th1:abc\n\
             build\t-ldflags=\"-s -w\"\nbuild\tCGO_ENABLED=0\nbuild\tGOEXPERIMENT=noswissmap,foo\n",
        );
        let bi = parse_blob(&inline_blob("go1.24.1 X:noswissmap,bar", &mi), &no_mem).unwrap();
        assert_eq!(bi.go_version, "go1.24.1");
        assert_eq!(bi.path.as_deref(), Some("example.com/x"));
        assert_eq!(bi.main_module.as_deref(), Some("example.com/x"));
        assert_eq!(bi.main_version.as_deref(), Some("v1.2.3"));
        assert_eq!(bi.setting("-ldflags"), Some("-s -w"));
        assert_eq!(bi.setting("CGO_ENABLED"), Some("0"));
        assert_eq!(bi.experiments, vec!["noswissmap", "bar", "foo"]);
    }

    #[test]
    fn pointer_format() {
        // Header with pointers to string headers at 0x1000 and 0x1010.
        let mut b = MAGIC.to_vec();
        b.push(8);
        b.push(0);
        b.extend_from_slice(&0x1000u64.to_le_bytes());
        b.extend_from_slice(&0x1010u64.to_le_bytes());
        let mi = wrap("path\tcmd/x\nbuild\t-buildmode=exe\n");
        let mi_len = mi.len();
        let mem = move |addr: u64, len: usize| -> Option<Vec<u8>> {
            let mut m = vec![0u8; 0x3000];
            m[0x1000..0x1008].copy_from_slice(&0x2000u64.to_le_bytes());
            m[0x1008..0x1010].copy_from_slice(&8u64.to_le_bytes());
            m[0x1010..0x1018].copy_from_slice(&0x2100u64.to_le_bytes());
            m[0x1018..0x1020].copy_from_slice(&(mi_len as u64).to_le_bytes());
            m[0x2000..0x2008].copy_from_slice(b"go1.17.3");
            m[0x2100..0x2100 + mi_len].copy_from_slice(&mi);
            let a = usize::try_from(addr).ok()?;
            m.get(a..a.checked_add(len)?).map(<[u8]>::to_vec)
        };
        let bi = parse_blob(&b, &mem).unwrap();
        assert_eq!(bi.go_version, "go1.17.3");
        assert_eq!(bi.path.as_deref(), Some("cmd/x"));
        assert_eq!(bi.setting("-buildmode"), Some("exe"));
    }

    #[test]
    fn garbage_and_truncation() {
        assert!(matches!(
            parse_blob(b"nope", &no_mem),
            Err(GoBinError::NoBuildInfo)
        ));
        let full = inline_blob("go1.22.1", b"");
        for n in 0..full.len() {
            let _ = parse_blob(&full[..n], &no_mem); // must not panic
        }
        assert!(parse_blob(&full[..20], &no_mem).is_err());
        // Huge declared length.
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[8, 2]);
        b.resize(32, 0);
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(parse_blob(&b, &no_mem).is_err());
        // Pointer format with unresolvable pointers.
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[8, 0]);
        b.extend_from_slice(&[0xff; 16]);
        assert!(parse_blob(&b, &no_mem).is_err());
    }

    #[test]
    fn quoted_settings() {
        assert_eq!(
            split_setting("-ldflags=\"-X main.v=\\\"1\\\"\""),
            Some(("-ldflags".into(), "-X main.v=\"1\"".into()))
        );
        assert_eq!(split_setting("\"a=b\"=c"), Some(("a=b".into(), "c".into())));
        assert_eq!(split_setting("noequals"), None);
        assert_eq!(split_setting("\"unterminated"), None);
    }
}
