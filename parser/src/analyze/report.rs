//! Rendering [`Results`] as `results.md` and as one self-contained
//! `report.html`: inline CSS and inline SVG, no script, and no reference to
//! anything outside the file (the SVGs' XML namespace attribute, a URI that
//! is never fetched, is dropped, as HTML5 allows for inline SVG).

use std::fmt::Write as _;

use super::machine;
use super::{bytes, BundleSummary, Results, Section, Table};

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn md_table(out: &mut String, t: &Table) {
    let _ = writeln!(out, "*{}*\n", md_cell(&t.caption));
    let _ = writeln!(
        out,
        "| {} |",
        t.header
            .iter()
            .map(|h| md_cell(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        out,
        "|{}|",
        t.header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for r in &t.rows {
        let _ = writeln!(
            out,
            "| {} |",
            r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    out.push('\n');
}

fn machine_line(b: &BundleSummary) -> String {
    match &b.machine {
        Some(m) => format!(
            "{} ({} logical CPUs, {} cores; {}); page {} B, THP {}; {}; {} threads used",
            m.cpu_model,
            m.logical_cpus,
            m.physical_cores,
            machine::caches_line(m),
            m.page_size,
            machine::thp_mode(&m.thp_enabled),
            m.kernel.split(' ').take(2).collect::<Vec<_>>().join(" "),
            m.threads_used
        ),
        None => "not recorded (meta.json has no machine facts)".into(),
    }
}

fn simd_flags(b: &BundleSummary) -> String {
    let Some(m) = &b.machine else {
        return String::new();
    };
    let want = [
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512_vnni",
        "avx512bw",
        "avx_vnni",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    ];
    want.iter()
        .filter(|f| m.cpu_flags.iter().any(|x| x == *f))
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

fn summary_rows(r: &Results) -> Vec<(String, Vec<String>)> {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let col = |f: &dyn Fn(&BundleSummary) -> String| r.bundles.iter().map(f).collect::<Vec<_>>();
    rows.push(("model".into(), col(&|b| b.title.clone())));
    rows.push(("arch".into(), col(&|b| b.arch.clone())));
    rows.push((
        "engine".into(),
        col(&|b| {
            format!(
                "{} ({} threads, repack {}, mmap {})",
                b.engine,
                b.threads,
                on(b.repack),
                on(b.mmap)
            )
        }),
    ));
    rows.push(("machine".into(), col(&machine_line)));
    rows.push(("CPU features".into(), col(&simd_flags)));
    rows.push((
        "kernel paths (weights)".into(),
        col(&|b| b.kernel_paths.join("; ")),
    ));
    rows.push((
        "bytes per decode token".into(),
        col(&|b| {
            b.bytes_per_decode_token
                .map(bytes)
                .unwrap_or_else(|| "-".into())
        }),
    ));
    rows.push((
        "sequential page transitions (decode)".into(),
        col(&|b| {
            b.sequential_fraction
                .map(|f| format!("{:.1}%", f * 100.0))
                .unwrap_or_else(|| "-".into())
        }),
    ));
    rows.push((
        "records".into(),
        col(&|b| format!("{} in {} steps", b.records, b.steps)),
    ));
    rows.push(("trace".into(), col(&|b| b.dir.clone())));
    rows
}

fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn check_sentence(s: &Section) -> String {
    let per: Vec<String> = s
        .checks
        .iter()
        .map(|c| {
            format!(
                "{}: {} ({})",
                c.bundle,
                if c.passed { "PASS" } else { "FAIL" },
                c.detail
            )
        })
        .collect();
    format!("Check, {}: {}", s.check_title, per.join("; "))
}

/// `results.md`.
pub fn markdown(r: &Results) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# cktrace analyze\n");
    let _ = writeln!(
        o,
        "All checks: **{}** (results.json schema `{}` version {}).\n",
        if r.passed { "PASS" } else { "FAIL" },
        r.schema,
        r.version
    );
    let mut header = vec!["".to_string()];
    header.extend(r.bundles.iter().map(|b| b.label.clone()));
    let mut t = Table {
        caption: "Summary".into(),
        header,
        rows: Vec::new(),
    };
    for (k, v) in summary_rows(r) {
        let mut row = vec![k];
        row.extend(v);
        t.row(row);
    }
    md_table(&mut o, &t);
    for s in &r.experiments {
        let _ = writeln!(o, "## {} (`{}`)\n", s.title, s.name);
        let _ = writeln!(o, "{}\n", s.measured);
        let _ = writeln!(o, "{}\n", check_sentence(s));
        for t in &s.tables {
            md_table(&mut o, t);
        }
        for p in &s.plots {
            let _ = writeln!(o, "![{}]({})\n", md_cell(&p.caption), p.file);
        }
    }
    o
}

/// An SVG document as an inline element: no XML declaration, no namespace
/// URIs.
pub fn inline_svg(svg: &str) -> String {
    let s = match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    };
    s.replace(" xmlns=\"http://www.w3.org/2000/svg\"", "")
        .replace(" xmlns:xlink=\"http://www.w3.org/1999/xlink\"", "")
}

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;color:#222;line-height:1.4}
h1{font-size:1.5em;margin:.2em 0}
h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0 1em 0;font-size:.82em}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
caption{caption-side:top;text-align:left;font-style:italic;padding:2px 0}
.pass{color:#fff;background:#2a7d2a;padding:1px 6px;border-radius:3px;font-weight:600}
.fail{color:#fff;background:#b22;padding:1px 6px;border-radius:3px;font-weight:600}
.summary td:first-child{font-weight:600;white-space:nowrap}
.plots svg{max-width:100%;height:auto;display:block;margin:.4em 0}
details{margin:.4em 0}
.measured{margin:.3em 0}
nav a{margin-right:1em}
";

fn html_table(o: &mut String, t: &Table, class: &str) {
    let _ = write!(
        o,
        "<table class=\"{class}\"><caption>{}</caption><thead><tr>",
        esc(&t.caption)
    );
    for h in &t.header {
        let _ = write!(o, "<th>{}</th>", esc(h));
    }
    o.push_str("</tr></thead><tbody>");
    for r in &t.rows {
        o.push_str("<tr>");
        for c in r {
            let _ = write!(o, "<td>{}</td>", esc(c));
        }
        o.push_str("</tr>");
    }
    o.push_str("</tbody></table>\n");
}

fn badge(passed: bool) -> &'static str {
    if passed {
        "<span class=\"pass\">PASS</span>"
    } else {
        "<span class=\"fail\">FAIL</span>"
    }
}

/// `report.html`: one file, readable offline.
pub fn html(r: &Results) -> String {
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ = write!(
        o,
        "<title>cktrace analyze: {}</title>",
        esc(&r
            .bundles
            .iter()
            .map(|b| b.title.clone())
            .collect::<Vec<_>>()
            .join(" vs "))
    );
    let _ = writeln!(o, "<style>{CSS}</style></head><body>");
    let _ = write!(
        o,
        "<section id=\"summary\"><h1>cktrace analyze {}</h1>\n<p>All checks {}: ",
        badge(r.passed),
        if r.passed { "passed" } else { "did not pass" }
    );
    let checks: Vec<String> = r
        .experiments
        .iter()
        .map(|s| {
            format!(
                "<a href=\"#{}\">{}</a> {}",
                s.name,
                esc(&s.name),
                badge(s.passed())
            )
        })
        .collect();
    o.push_str(&checks.join(", "));
    o.push_str("</p>\n");
    let mut header = vec!["".to_string()];
    header.extend(r.bundles.iter().map(|b| b.label.clone()));
    let mut t = Table {
        caption: "Summary".into(),
        header,
        rows: Vec::new(),
    };
    for (k, v) in summary_rows(r) {
        let mut row = vec![k];
        row.extend(v);
        t.row(row);
    }
    html_table(&mut o, &t, "summary");
    for b in &r.bundles {
        for w in &b.warnings {
            let _ = writeln!(o, "<p>warning ({}): {}</p>", esc(&b.label), esc(w));
        }
    }
    o.push_str("</section>\n");
    for s in &r.experiments {
        let _ = write!(
            o,
            "<section id=\"{}\" class=\"experiment\"><h2>{} <small>(<code>{}</code>)</small> {}</h2>",
            esc(&s.name),
            esc(&s.title),
            esc(&s.name),
            badge(s.passed())
        );
        let _ = writeln!(o, "<p class=\"measured\">{}</p>", esc(&s.measured));
        let _ = write!(
            o,
            "<p class=\"check\">Check: {}.</p><ul>",
            esc(&s.check_title)
        );
        for c in &s.checks {
            let _ = write!(
                o,
                "<li>{}: {} {}</li>",
                esc(&c.bundle),
                badge(c.passed),
                esc(&c.detail)
            );
        }
        o.push_str("</ul>\n<div class=\"plots\">");
        for p in &s.plots {
            let _ = write!(
                o,
                "<figure>{}<figcaption>{} ({})</figcaption></figure>",
                inline_svg(&p.svg),
                esc(&p.caption),
                esc(&p.file)
            );
        }
        o.push_str("</div>\n");
        for (i, t) in s.tables.iter().enumerate() {
            if t.rows.len() > 40 && i > 0 {
                let _ = write!(
                    o,
                    "<details><summary>{} ({} rows)</summary>",
                    esc(&t.caption),
                    t.rows.len()
                );
                html_table(&mut o, t, "data");
                o.push_str("</details>\n");
            } else {
                html_table(&mut o, t, "data");
            }
        }
        o.push_str("</section>\n");
    }
    o.push_str("</body></html>\n");
    o
}
