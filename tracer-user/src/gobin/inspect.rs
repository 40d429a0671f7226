//! `tracer inspect BINARY`: everything tracer learns about a Go binary, as
//! JSON or as a table, so users can see up front which probes will work.

use std::fmt;

use serde::Serialize;

use super::{
    Arch, BuildInfo, GoBinary, MapImpl, OffsetSource, SymbolSource, TargetStatus, VersionSource,
    probe_targets,
};

/// One struct offset and where it came from (or why it is missing).
#[derive(Debug, Clone, Serialize)]
pub struct OffsetReport {
    pub field: String,
    pub value: Option<u64>,
    pub source: Option<OffsetSource>,
    pub reason: Option<String>,
}

/// The result of [`inspect`].
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub go_version: String,
    /// Where `go_version` came from; `pclntab_magic` means a lower bound only.
    pub go_version_source: VersionSource,
    pub arch: Arch,
    pub stripped: bool,
    pub pie: bool,
    pub cgo: bool,
    pub map_impl: MapImpl,
    pub symbol_source: SymbolSource,
    pub function_count: usize,
    pub text_start: Option<u64>,
    pub text_start_source: Option<String>,
    pub pclntab_error: Option<String>,
    pub build_info: BuildInfo,
    pub targets: Vec<TargetStatus>,
    pub swiss_map_type: Option<String>,
    pub offsets: Vec<OffsetReport>,
}

/// Analyses `bin` for `tracer inspect`.
pub fn inspect(bin: &GoBinary) -> InspectReport {
    let offs = bin.offsets();
    let offsets = offs
        .fields()
        .into_iter()
        .map(|(f, o)| OffsetReport {
            field: f.to_string(),
            value: o.map(|o| o.value),
            source: o.map(|o| o.source),
            reason: offs
                .missing
                .iter()
                .find(|(m, _)| m == f)
                .map(|(_, r)| r.clone()),
        })
        .collect();
    let ts = bin.text_start();
    InspectReport {
        go_version: bin.build_info().go_version.clone(),
        go_version_source: bin.version_source(),
        arch: bin.arch(),
        stripped: bin.is_stripped(),
        pie: bin.is_pie(),
        cgo: bin.is_cgo(),
        map_impl: bin.map_impl(),
        symbol_source: bin.symbol_source(),
        function_count: bin.function_count(),
        text_start: ts.map(|t| t.0),
        text_start_source: ts.map(|t| t.1.to_string()),
        pclntab_error: bin.pclntab_error().map(str::to_string),
        build_info: bin.build_info().clone(),
        targets: probe_targets(bin),
        swiss_map_type: offs.swiss_map_type.clone(),
        offsets,
    }
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "Go version:   {} (from {})",
            self.go_version,
            self.go_version_source.describe()
        )?;
        if !self.build_info.experiments.is_empty() {
            writeln!(f, "Experiments:  {}", self.build_info.experiments.join(","))?;
        }
        writeln!(f, "Arch:         {}", self.arch)?;
        writeln!(
            f,
            "Stripped:     {}   PIE: {}   cgo: {}",
            yn(self.stripped),
            yn(self.pie),
            yn(self.cgo)
        )?;
        if let Some(p) = &self.build_info.path {
            writeln!(f, "Path:         {p}")?;
        }
        if let Some(m) = &self.build_info.main_module {
            let v = self.build_info.main_version.as_deref().unwrap_or("");
            writeln!(f, "Module:       {m} {v}")?;
        }
        for key in ["-buildmode", "CGO_ENABLED", "-ldflags", "GOARCH"] {
            if let Some(v) = self.build_info.setting(key) {
                writeln!(f, "  {key:<12}{v}")?;
            }
        }
        let maps = match self.map_impl {
            MapImpl::Classic => "classic (runtime.hmap)",
            MapImpl::Swiss => "swiss (internal/runtime/maps.Map)",
        };
        writeln!(f, "Maps:         {maps}")?;
        let src = match self.symbol_source {
            SymbolSource::Symtab => ".symtab",
            SymbolSource::Pclntab => ".gopclntab",
        };
        writeln!(f, "Functions:    {} (from {src})", self.function_count)?;
        if let (Some(t), Some(s)) = (self.text_start, &self.text_start_source) {
            writeln!(f, "Text start:   {t:#x} ({s})")?;
        }
        if let Some(e) = &self.pclntab_error {
            writeln!(f, "pclntab:      unusable: {e}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<8} {:<16} {:<18} {:<10} {:>4}  FUNCTION",
            "STATUS", "CATEGORY", "ADDRESS", "OFFSET", "RETS"
        )?;
        for t in &self.targets {
            let status = match (t.found, t.optional) {
                (true, _) => "found",
                (false, true) => "absent",
                (false, false) => "MISSING",
            };
            let cat = serde_json::to_value(t.category)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let addr = t
                .entry
                .map(|a| format!("{a:#x}"))
                .unwrap_or_else(|| "-".into());
            let off = t
                .file_offset
                .map(|a| format!("{a:#x}"))
                .unwrap_or_else(|| "-".into());
            let rets = t
                .ret_count
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into());
            writeln!(
                f,
                "{status:<8} {cat:<16} {addr:<18} {off:<10} {rets:>4}  {}",
                t.name
            )?;
        }
        writeln!(f)?;
        writeln!(f, "{:<36} {:>6}  SOURCE", "OFFSET", "VALUE")?;
        for o in &self.offsets {
            match (o.value, o.source) {
                (Some(v), Some(s)) => {
                    let s = match s {
                        OffsetSource::Dwarf => "dwarf",
                        OffsetSource::Table => "table",
                    };
                    writeln!(f, "{:<36} {v:>6}  {s}", o.field)?
                }
                _ => writeln!(
                    f,
                    "{:<36} {:>6}  off: {}",
                    o.field,
                    "-",
                    o.reason.as_deref().unwrap_or("unknown")
                )?,
            }
        }
        Ok(())
    }
}
