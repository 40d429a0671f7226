//! Bounded readers for `/proc`. Its content belongs to processes we do not trust
//! (a process can rename itself, and maps lines carry file names it chose).

use std::{fs, io::Read, path::PathBuf};

use anyhow::{Context, Result, bail};

/// Largest `/proc` file we read; a maps file this large means something is off.
const MAX_PROC_FILE: u64 = 16 << 20;

fn read_bounded(path: &str) -> std::io::Result<String> {
    let f = fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_PROC_FILE).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Fails with "no such process" unless `pid` exists.
pub fn check_pid(pid: u32) -> Result<()> {
    if pid == 0 {
        bail!("pid 0 is not a process");
    }
    match fs::metadata(format!("/proc/{pid}")) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("no such process: pid {pid}"),
        Err(e) => Err(e).with_context(|| format!("checking pid {pid}")),
    }
}

/// `/proc/PID/exe`: the magic link that opens the process's binary even inside
/// another mount namespace or after the file was deleted.
pub fn exe_link(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/exe"))
}

/// The binary's path as the process sees it, for display only.
pub fn exe_display(pid: u32) -> String {
    fs::read_link(exe_link(pid))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into())
}

/// The process's command name (at most 16 bytes in the kernel).
pub fn comm(pid: u32) -> Option<String> {
    read_bounded(&format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().chars().take(64).collect())
}

/// True while `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match read_bounded(&format!("/proc/{pid}/stat")) {
        Ok(s) => parse_stat_state(&s).is_some_and(|st| st != 'Z' && st != 'X'),
        Err(_) => false,
    }
}

/// CPU time `pid` has used (user and system, all threads), ns.
pub fn cpu_time_ns(pid: u32) -> Option<u64> {
    let stat = read_bounded(&format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&stat).map(|t| t.saturating_mul(1_000_000_000) / clock_ticks())
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// utime + stime, in clock ticks: fields 14 and 15, counted after the
/// last `)` (field 3 is the first one there).
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// Process state letter from `/proc/PID/stat`; comm may contain spaces and
/// parentheses, so the state is found after the last `)`.
pub fn parse_stat_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// Where the start of `pid`'s executable is mapped (its mapping at file
/// offset 0); minus `GoBinary::image_base`, a PIE's load bias.
pub fn exe_mapping_start(pid: u32) -> Option<u64> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let maps = read_bounded(&format!("/proc/{pid}/maps")).ok()?;
    parse_bias(&maps, exe.to_str()?)
}

/// The first mapping of `exe` at offset 0 in a `/proc/<pid>/maps` text.
pub fn parse_bias(maps: &str, exe: &str) -> Option<u64> {
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let range = f.next()?;
        let _perms = f.next()?;
        let offset = u64::from_str_radix(f.next()?, 16).ok()?;
        let _dev = f.next()?;
        let _inode = f.next()?;
        let path = f.next()?;
        (offset == 0 && path == exe)
            .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bias_is_the_executable_mapping_at_offset_zero() {
        let maps = "55d0c0000000-55d0c0100000 r--p 00000000 fd:01 42 /usr/bin/other\n\
                    7f0000000000-7f0000200000 r--p 00000000 fd:01 7 /srv/app\n\
                    7f0000200000-7f0000400000 r-xp 00200000 fd:01 7 /srv/app\n\
                    garbage line\n";
        assert_eq!(parse_bias(maps, "/srv/app"), Some(0x7f00_0000_0000));
        assert_eq!(parse_bias(maps, "/srv/none"), None);
        assert_eq!(parse_bias("zz-yy r 0 0 0 /srv/app", "/srv/app"), None);
    }

    #[test]
    fn stat_state_survives_hostile_comm() {
        assert_eq!(parse_stat_state("12 (a) b) S 1 2"), Some('S'));
        assert_eq!(parse_stat_state("12 (x) Z 1"), Some('Z'));
        assert_eq!(parse_stat_state("no paren"), None);
        assert_eq!(parse_stat_state("1 (x)"), None);
    }

    #[test]
    fn stat_cpu_ticks_survive_hostile_comm() {
        let stat = "12 (a) b) S 1 2 3 4 5 6 7 8 9 10 70 30 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(100));
        assert_eq!(parse_stat_cpu_ticks("12 (x) S 1 2"), None);
        assert_eq!(
            parse_stat_cpu_ticks("12 (x) S 1 2 3 4 5 6 7 8 9 10 x 1"),
            None
        );
        assert!(cpu_time_ns(std::process::id()).is_some());
    }

    #[test]
    fn pid_checks() {
        assert!(check_pid(std::process::id()).is_ok());
        let e = check_pid(u32::MAX - 1).unwrap_err().to_string();
        assert!(e.contains("no such process"), "{e}");
        assert!(check_pid(0).is_err());
        assert!(is_alive(std::process::id()));
    }
}
