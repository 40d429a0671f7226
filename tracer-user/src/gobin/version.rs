//! Go release numbers (`go1.25.5`) as comparable values.

use serde::Serialize;

/// A Go release, e.g. 1.25.5. Pre-releases (`go1.26rc1`) count as patch 0.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> GoVersion {
        GoVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `go1.25.5`, `1.25.5`, `go1.22`, `go1.26rc1`, `go1.25.5 X:foo`
    /// and `devel go1.27-abcdef ...`.
    pub fn parse(s: &str) -> Option<GoVersion> {
        let s = s.trim();
        let s = s.strip_prefix("devel ").unwrap_or(s);
        let s = s.split_whitespace().next()?;
        let s = s.strip_prefix("go").unwrap_or(s);
        let mut nums = [0u32; 3];
        let mut parts = s.split('.');
        for (i, n) in nums.iter_mut().enumerate() {
            let Some(p) = parts.next() else {
                if i < 2 {
                    return None;
                }
                break;
            };
            let digits: &str = &p[..p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len())];
            if digits.is_empty() {
                return None;
            }
            *n = digits.parse().ok()?;
            if digits.len() != p.len() {
                // Suffix such as "rc1" or "-devel": stop here.
                break;
            }
        }
        Some(GoVersion::new(nums[0], nums[1], nums[2]))
    }

    /// (major, minor) only, for feature rules.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let v = |s| GoVersion::parse(s);
        assert_eq!(v("go1.25.5"), Some(GoVersion::new(1, 25, 5)));
        assert_eq!(v("1.22.10"), Some(GoVersion::new(1, 22, 10)));
        assert_eq!(v("go1.22"), Some(GoVersion::new(1, 22, 0)));
        assert_eq!(v("go1.26rc1"), Some(GoVersion::new(1, 26, 0)));
        assert_eq!(v("go1.24.1 X:noswissmap"), Some(GoVersion::new(1, 24, 1)));
        assert_eq!(v("devel go1.27-abc123 Tue"), Some(GoVersion::new(1, 27, 0)));
        assert_eq!(v("go"), None);
        assert_eq!(v(""), None);
        assert_eq!(v("gox.y"), None);
        assert_eq!(v("go1"), None);
        assert_eq!(v("go99999999999.1"), None);
        assert!(GoVersion::new(1, 25, 5) > GoVersion::new(1, 9, 9));
        assert!(GoVersion::new(1, 24, 0).at_least(1, 24));
        assert!(!GoVersion::new(1, 23, 9).at_least(1, 24));
        assert_eq!(GoVersion::new(1, 2, 3).to_string(), "1.2.3");
    }
}
