//! Reads a binary for analysis with bounds: the file is attacker-controlled
//! (any user can run a binary the agent then analyses as root), so it is
//! never read whole.
//!
//! - Only regular files are read, opened without blocking: a FIFO or a
//!   device (`/dev/zero`) is refused instead of hanging or filling memory.
//! - Only the byte ranges of the ELF's sections (or, without section
//!   headers, of its segments) are read, into a zero-filled image of the
//!   file's size. That image is allocated lazily by the kernel, so padding
//!   outside every section (a binary padded to gigabytes) costs address
//!   space, not memory, and is never read.
//! - What is read is capped ([`MAX_READ`]), and so is the file size
//!   ([`MAX_FILE`]).
//!
//! Mapping the file instead would let its owner truncate it under the agent
//! and kill it with SIGBUS, so the ranges are copied.

use std::{
    fs::File,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::Path,
};

use super::GoBinError;

/// Largest file analysed: far above any real Go binary (Kubernetes' biggest
/// are ~200 MB), small enough to keep the image's address space sane.
pub const MAX_FILE: u64 = 8 << 30;
/// Most bytes read from one file: sections of a real binary, DWARF
/// included, are well below this.
pub const MAX_READ: u64 = 1 << 30;

/// The bytes of `path` that analysis needs, at their file offsets, zeros
/// elsewhere.
pub fn read_image(path: &Path) -> Result<Vec<u8>, GoBinError> {
    let io = |source| GoBinError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO would block the open until a writer comes.
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a special file"
        };
        return Err(GoBinError::NotRegular(what.into()));
    }
    let size = meta.len();
    if size > MAX_FILE {
        return Err(GoBinError::TooLarge {
            what: "file",
            size,
            limit: MAX_FILE,
        });
    }
    let ranges = ranges(&file, size)?;
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    if total > MAX_READ {
        return Err(GoBinError::TooLarge {
            what: "sections",
            size: total,
            limit: MAX_READ,
        });
    }
    let len = usize::try_from(size).map_err(|_| GoBinError::TooLarge {
        what: "file",
        size,
        limit: MAX_FILE,
    })?;
    // Zeroed allocation: for large sizes the allocator maps fresh pages the
    // kernel provides on first write, so unread ranges cost no memory.
    let mut image = vec![0u8; len];
    for (off, n) in ranges {
        // Within the image: `ranges` clamps every range to `size`.
        let (Ok(start), Ok(n)) = (usize::try_from(off), usize::try_from(n)) else {
            continue;
        };
        let Some(buf) = image.get_mut(start..start.saturating_add(n)) else {
            continue;
        };
        // A file that shrank meanwhile leaves the rest zero.
        read_prefix(&file, buf, off)?;
    }
    Ok(image)
}

/// File ranges of the DWARF sections (`.debug_*`, `.zdebug_*`) of an image.
pub(super) fn dwarf_ranges(image: &[u8]) -> Vec<(usize, usize)> {
    use object::{Object, ObjectSection};
    let Ok(file) = object::File::parse(image) else {
        return Vec::new();
    };
    file.sections()
        .filter(|s| {
            s.name()
                .is_ok_and(|n| n.starts_with(".debug_") || n.starts_with(".zdebug_"))
        })
        .filter_map(|s| {
            let (off, len) = s.file_range()?;
            Some((usize::try_from(off).ok()?, usize::try_from(len).ok()?))
        })
        .collect()
}

/// Zeroes `image[start..start + len]` (clamped to the image) and hands the
/// whole pages inside it back to the kernel: the image reads as zeros
/// there, as for a range never read, and costs no memory.
pub(super) fn release(image: &mut [u8], start: usize, len: usize) {
    let end = start.saturating_add(len).min(image.len());
    let Some(range) = image.get_mut(start..end) else {
        return;
    };
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096);
    let addr = range.as_mut_ptr() as usize;
    let first = addr.next_multiple_of(page);
    let last = (addr + range.len()) & !(page - 1);
    // The partial pages at either end are zeroed by hand.
    let head = first.saturating_sub(addr).min(range.len());
    range[..head].fill(0);
    // SAFETY: [first, last) is whole pages inside `range`, which this
    // function borrows mutably: no other reference sees them. The image is
    // private anonymous memory, so after MADV_DONTNEED the pages read back
    // as zeros, the value written here.
    let released = last > first
        && unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            )
        } == 0;
    let tail = if released { last - addr } else { head };
    range[tail..].fill(0);
}

/// Largest header table (program or section headers) read.
const MAX_TABLE: u64 = 16 << 20;
const SHT_NOBITS: u64 = 8;

/// (offset, length) of every byte range analysis may look at: the ELF
/// header and header tables, and each section's and segment's contents,
/// clamped to the file, merged where they overlap. The headers are parsed
/// here by hand, with bounds, because a general ELF parser would read the
/// symbol tables whole before we could bound them.
fn ranges(file: &File, size: u64) -> Result<Vec<(u64, u64)>, GoBinError> {
    let mut h = [0u8; 64];
    let n = read_prefix(file, &mut h, 0)?;
    if n < 52 || h[..4] != *b"\x7fELF" {
        // Not an ELF: the first page is enough for the parser to say so.
        return Ok(vec![(0, size.min(4096))]);
    }
    let is64 = match h[4] {
        1 => false,
        2 => true,
        c => return Err(GoBinError::NotElf(format!("ELF class {c}"))),
    };
    if is64 && n < 64 {
        return Err(GoBinError::NotElf("truncated ELF header".into()));
    }
    let le = h[5] == 1;
    let u = move |b: &[u8]| -> u64 {
        let mut v = 0u64;
        for (i, x) in b.iter().enumerate() {
            let shift = if le { i } else { b.len() - 1 - i } * 8;
            v |= u64::from(*x) << shift;
        }
        v
    };
    let (phoff, shoff, phent, phnum, shent, shnum) = if is64 {
        (
            u(&h[32..40]),
            u(&h[40..48]),
            u(&h[54..56]),
            u(&h[56..58]),
            u(&h[58..60]),
            u(&h[60..62]),
        )
    } else {
        (
            u(&h[28..32]),
            u(&h[32..36]),
            u(&h[42..44]),
            u(&h[44..46]),
            u(&h[46..48]),
            u(&h[48..50]),
        )
    };
    let mut out = vec![(0u64, size.min(64 << 10))];
    // Program headers: (offset, file size) of each segment.
    let (ph_min, ph_off, ph_size) = if is64 {
        (56, 8..16, 32..40)
    } else {
        (32, 4..8, 16..20)
    };
    for e in table(file, phoff, phent, phnum, ph_min, size, &mut out)? {
        out.push((u(&e[ph_off.clone()]), u(&e[ph_size.clone()])));
    }
    // Section headers: (offset, size) of each section with file contents.
    let (sh_min, sh_off, sh_size) = if is64 {
        (64, 24..32, 32..40)
    } else {
        (40, 16..20, 20..24)
    };
    for e in table(file, shoff, shent, shnum, sh_min, size, &mut out)? {
        if u(&e[4..8]) != SHT_NOBITS {
            out.push((u(&e[sh_off.clone()]), u(&e[sh_size.clone()])));
        }
    }
    Ok(merge(out, size))
}

/// The entries of a header table (at most [`MAX_TABLE`] bytes), each at
/// least `min` bytes; records the table's own range in `ranges`.
fn table(
    file: &File,
    off: u64,
    entsize: u64,
    num: u64,
    min: u64,
    size: u64,
    ranges: &mut Vec<(u64, u64)>,
) -> Result<Vec<Vec<u8>>, GoBinError> {
    if off == 0 || off >= size || num == 0 || entsize < min {
        return Ok(vec![]);
    }
    let len = (entsize * num).min(MAX_TABLE);
    let mut buf = vec![0u8; len as usize];
    let got = read_prefix(file, &mut buf, off)?;
    ranges.push((off, got as u64));
    Ok(buf[..got]
        .chunks_exact(entsize as usize)
        .map(<[u8]>::to_vec)
        .collect())
}

/// Reads up to `buf.len()` bytes at `off`; how many there were.
fn read_prefix(file: &File, buf: &mut [u8], off: u64) -> Result<usize, GoBinError> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(GoBinError::Io {
                    path: "binary".into(),
                    source: e,
                });
            }
        }
    }
    Ok(done)
}

/// Sorted, clamped to `size`, overlaps and neighbours merged.
fn merge(mut ranges: Vec<(u64, u64)>, size: u64) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = ranges
        .drain(..)
        .filter(|&(off, len)| off < size && len > 0)
        .map(|(off, len)| (off, off.saturating_add(len).min(size)))
        .collect();
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that measure this process's RSS, one at a time.
    static RSS_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn merges_and_clamps() {
        assert_eq!(
            merge(vec![(10, 5), (0, 4), (12, 10), (100, 50), (200, 1)], 120),
            vec![(0, 4), (10, 12), (100, 20)]
        );
        assert_eq!(merge(vec![(0, u64::MAX)], 7), vec![(0, 7)]);
    }

    #[test]
    fn release_zeroes_exactly_the_range_and_frees_its_pages() {
        let _one = RSS_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let len = 64 << 20;
        let mut image = vec![0xa5u8; len];
        let before = rss();
        // Unaligned at both ends, as section ranges are.
        let (start, n) = (4096 * 3 + 17, 48 << 20);
        release(&mut image, start, n);
        assert!(image[..start].iter().all(|&b| b == 0xa5));
        assert!(image[start..start + n].iter().all(|&b| b == 0));
        assert!(image[start + n..].iter().all(|&b| b == 0xa5));
        let freed = before.saturating_sub(rss());
        // Reading the zeros back maps the shared zero page, not new memory.
        // (Other tests of this process allocate meanwhile: half is enough.)
        assert!(freed > 24 << 20, "only {freed} B freed of 48 MiB");
        // Clamped: past the end is ignored, not a panic.
        release(&mut image, len - 10, 1 << 20);
        assert!(image[len - 10..].iter().all(|&b| b == 0));
        release(&mut image, len + 5, 10);
    }

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        for p in ["/dev/zero", "/dev/null", "/proc/self"] {
            let e = read_image(Path::new(p)).expect_err(p);
            assert!(matches!(e, GoBinError::NotRegular(_)), "{p}: {e}");
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("tracer-load-fifo-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_image(&fifo).expect_err("fifo");
        assert!(matches!(e, GoBinError::NotRegular(_)), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// RSS of this process, bytes.
    fn rss() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    #[test]
    fn padding_outside_the_sections_is_neither_read_nor_resident() {
        let _one = RSS_TESTS.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(me) = std::env::current_exe() else {
            return;
        };
        let Ok(orig) = std::fs::read(&me) else {
            return;
        };
        let dir = std::env::temp_dir().join(format!("tracer-load-pad-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let padded = dir.join("padded");
        let f = File::create(&padded).expect("create");
        f.write_all_at(&orig, 0).expect("write");
        // 3 GiB of padding after the last section: a sparse file, so the
        // test itself costs no disk.
        let pad = 3u64 << 30;
        f.set_len(orig.len() as u64 + pad).expect("pad");
        // The padding is marked (not zero) where it begins, in case a read
        // strays into it.
        f.write_all_at(&[0xAB; 4096], orig.len() as u64 + 4096)
            .expect("mark");
        drop(f);
        let before = rss();
        let image = read_image(&padded).expect("read");
        let grown = rss().saturating_sub(before);
        assert_eq!(image.len() as u64, orig.len() as u64 + pad);
        assert!(
            image[orig.len()..orig.len() + 8192].iter().all(|b| *b == 0),
            "padding was read"
        );
        assert!(
            grown < orig.len() as u64 + (64 << 20),
            "RSS grew {grown} bytes for a {} byte binary padded by {pad}",
            orig.len()
        );
        // Every section's bytes are there, as in the file.
        use object::{Object, ObjectSection};
        let obj = object::File::parse(&*orig).expect("parse self");
        for s in obj.sections() {
            if let Some((off, len)) = s.file_range() {
                let (o, l) = (off as usize, len as usize);
                assert_eq!(&image[o..o + l], &orig[o..o + l], "section {:?}", s.name());
            }
        }
        drop(image);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
