//! The pprof profile format (google/pprof `proto/profile.proto`) as prost
//! messages, and a builder that interns strings, functions and locations the
//! way `go tool pprof` expects. Defined here with prost derives so no protoc
//! is needed; field numbers follow profile.proto.

use std::collections::HashMap;
use std::io::Write as _;

use anyhow::{Context, Result};
use prost::Message;

use crate::report::Image;
use crate::symbols::PcFrame;

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Innermost (inlined) first, the caller last, as pprof orders them.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
    #[prost(int64, tag = "3")]
    pub column: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// Builds one profile: strings, functions and locations are interned, ids
/// start at 1 (0 means "none" in profile.proto).
pub struct Builder {
    p: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(String, String), u64>,
    locations: HashMap<PcFrame, u64>,
    /// The executable's mapping id and address range, when known.
    exe: Option<(u64, u64, u64)>,
}

impl Builder {
    /// `sample_types` are (type, unit) pairs; the first is the period type.
    pub fn new(sample_types: &[(&str, &str)], image: Option<&Image>) -> Self {
        let mut b = Builder {
            p: Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            exe: None,
        };
        b.string(""); // string_table[0] must be empty.
        for &(t, u) in sample_types {
            let vt = b.value_type(t, u);
            b.p.sample_type.push(vt);
        }
        if let Some(&(t, u)) = sample_types.first() {
            b.p.period_type = Some(b.value_type(t, u));
            b.p.period = 1;
        }
        if let Some(img) = image {
            let filename = b.string(&img.path);
            b.p.mapping.push(Mapping {
                id: 1,
                memory_start: img.start,
                memory_limit: img.limit,
                file_offset: img.file_offset,
                filename,
                build_id: 0,
                // Symbolized already: pprof must not try again.
                has_functions: true,
                has_filenames: true,
                has_line_numbers: true,
                has_inline_frames: true,
            });
            b.exe = Some((1, img.start, img.limit));
        }
        b
    }

    fn value_type(&mut self, t: &str, u: &str) -> ValueType {
        ValueType {
            r#type: self.string(t),
            unit: self.string(u),
        }
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.p.string_table.len() as i64;
        self.p.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        if let Some(&id) = self.functions.get(&(name.to_owned(), file.to_owned())) {
            return id;
        }
        let id = self.p.function.len() as u64 + 1;
        let (n, f) = (self.string(name), self.string(file));
        self.p.function.push(Function {
            id,
            name: n,
            system_name: n,
            filename: f,
            start_line: 0,
        });
        self.functions
            .insert((name.to_owned(), file.to_owned()), id);
        id
    }

    fn location(&mut self, frame: &PcFrame) -> u64 {
        if let Some(&id) = self.locations.get(frame) {
            return id;
        }
        let id = self.p.location.len() as u64 + 1;
        let line = frame
            .lines
            .iter()
            .map(|s| Line {
                function_id: self.function(&s.function, &s.file),
                line: i64::from(s.line),
                column: 0,
            })
            .collect();
        let mapping_id = match self.exe {
            Some((m, start, limit)) if (start..limit).contains(&frame.address) => m,
            _ => 0,
        };
        self.p.location.push(Location {
            id,
            mapping_id,
            address: frame.address,
            line,
            is_folded: false,
        });
        self.locations.insert(frame.clone(), id);
        id
    }

    /// Adds one sample: `frames` innermost first, one value per sample type,
    /// string labels as (key, value).
    pub fn sample(&mut self, frames: &[PcFrame], values: &[i64], labels: &[(String, String)]) {
        let location_id = frames.iter().map(|f| self.location(f)).collect();
        let label = labels
            .iter()
            .map(|(k, v)| Label {
                key: self.string(k),
                str: self.string(v),
                num: 0,
                num_unit: 0,
            })
            .collect();
        self.p.sample.push(Sample {
            location_id,
            value: values.to_vec(),
            label,
        });
    }

    pub fn comment(&mut self, text: &str) {
        let c = self.string(text);
        self.p.comment.push(c);
    }

    /// Finishes with the collection time and span.
    pub fn finish(mut self, time_nanos: i64, duration_nanos: i64) -> Profile {
        self.p.time_nanos = time_nanos;
        self.p.duration_nanos = duration_nanos;
        self.p
    }
}

/// The gzipped wire form `go tool pprof` reads.
pub fn encode_gz(p: &Profile) -> Result<Vec<u8>> {
    let raw = p.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).context("compressing profile")?;
    gz.finish().context("compressing profile")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::Site;
    use std::io::Read as _;

    fn site(f: &str, line: u32) -> Site {
        Site {
            function: f.into(),
            file: "/src/main.go".into(),
            line,
        }
    }

    #[test]
    fn round_trips_through_prost_with_inlined_lines_in_one_location() {
        let img = Image {
            path: "/bin/app".into(),
            start: 0x40_1000,
            limit: 0x50_0000,
            file_offset: 0x1000,
        };
        let mut b = Builder::new(
            &[("contentions", "count"), ("delay", "nanoseconds")],
            Some(&img),
        );
        let leaf = PcFrame {
            address: 0x40_2000,
            lines: vec![site("main.inc", 10), site("main.worker", 20)],
        };
        let root = PcFrame {
            address: 0x40_3000,
            lines: vec![site("main.main", 30)],
        };
        let outside = PcFrame {
            address: 0x7f00_0000_0000,
            lines: vec![site("?@0x7f0000000001", 0)],
        };
        b.sample(&[leaf.clone(), root.clone()], &[3, 300], &[]);
        b.sample(&[leaf, outside], &[1, 5], &[("op".into(), "write".into())]);
        let p = b.finish(7, 9);
        let gz = encode_gz(&p).expect("encode");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .expect("gunzip");
        let d = Profile::decode(&raw[..]).expect("decode");
        assert_eq!(d, p);
        let s = |i: i64| d.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        let types: Vec<_> = d
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(types, [("contentions", "count"), ("delay", "nanoseconds")]);
        // The shared leaf is one location with two lines, inlined first.
        assert_eq!(d.location.len(), 3);
        assert_eq!(d.sample[0].location_id[0], d.sample[1].location_id[0]);
        let l0 = &d.location[0];
        let fname = |id: u64| s(d.function[(id - 1) as usize].name);
        let names: Vec<_> = l0.line.iter().map(|l| fname(l.function_id)).collect();
        assert_eq!(names, ["main.inc", "main.worker"]);
        assert_eq!(l0.mapping_id, 1);
        // Outside the executable: no mapping.
        assert_eq!(d.location[2].mapping_id, 0);
        assert_eq!(d.function.len(), 4);
        assert_eq!(s(d.mapping[0].filename), "/bin/app");
        assert_eq!(d.sample[1].value, [1, 5]);
        assert_eq!(s(d.sample[1].label[0].key), "op");
        assert_eq!((d.time_nanos, d.duration_nanos), (7, 9));
    }
}
