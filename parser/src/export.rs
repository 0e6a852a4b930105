//! Writing (filtered) records out: an aligned text table, CSV, JSON lines,
//! a JSON array, Chrome trace events ([`chrome`]) and Parquet
//! ([`parquet`]).
//!
//! Every record becomes one row with these columns, in this order, under
//! these names in every format:
//!
//! | column      | type    | meaning |
//! |-------------|---------|---------|
//! | `t_ms`      | float   | start, ms since trace start (3 decimals, i.e. µs resolution) |
//! | `dur_ns`    | integer | duration in ns (saturated at 2^32-1) |
//! | `step`      | integer | decode step: 0 is the prompt, n the n-th generated token |
//! | `pos`       | integer | position of the first token of the batch |
//! | `phase`     | string  | `prefill`, `decode` or `other` |
//! | `thread`    | integer | index of the thread that did the work |
//! | `n_threads` | integer | threads working on the op |
//! | `layer`     | integer | transformer layer, -1 when none (token_embd, output) |
//! | `op`        | string  | `mul_mat`, `mul_mat_id`, `get_rows` or `other` |
//! | `path`      | string  | kernel path (`vec_dot`, `llamafile`, `repack_gemv`, `repack_gemm`, `amx`, `kleidiai`, `get_rows`, `mul_mat_id`, `repack_mul_mat_id`, `tiled`, `op`, `ck_scalar`, `ck_simd`) |
//! | `tensor_id` | integer | registry id of the tensor read, -1 if unregistered |
//! | `name`      | string  | the tensor's full registry name (the record's truncated name if the id does not resolve) |
//! | `offset`    | integer | first byte read, relative to the tensor's data (in the buffer read: repacked tensors use repacked offsets) |
//! | `len`       | integer | bytes read (the bounding range of a strided read) |
//! | `row0`      | integer | first weight row (output feature) computed; for `get_rows`, the first row copied |
//! | `row1`      | integer | one past the last row |
//! | `col0`      | integer | first output column (token); for `get_rows`, the index into the ids tensor |
//! | `col1`      | integer | one past the last column |
//! | `expert`    | integer | expert id of a `mul_mat_id` record, -1 otherwise |
//! | `act_id`    | integer | registry id of the activation operand, -1 if none |
//! | `act_bytes` | integer | bytes of the activation operand read |
//! | `node`      | string  | identity of the graph node, as hex (`0x7f3a...`); unique within a step (Parquet: the same 64 bits as INT64) |
//! | `flags`     | integer | flag bits: 1 = strided, 2 = repacked, 4 = op-level, 2^31 = valid (always set on exported records) |
//!
//! Unknown codes (from a newer writer or a damaged record) print as
//! `unknown(N)`. Text formats write integers in decimal; CSV quotes a field
//! only when it holds a comma, quote or newline. The Parquet file adds the
//! registry columns `dtype`, `kind` (`weight`, `kv_cache`, `activation`),
//! `source` (`mmap`, `anon`, `repacked`, `runtime`), `buffer_type` and
//! `gguf_offset` (null when the tensor does not resolve or has none).

pub mod chrome;
pub mod parquet;

use std::borrow::Cow;
use std::io::{self, BufWriter, IsTerminal, Write};

use cktrace_tracer::format::{NAME_LEN, NO_ID};
use cktrace_tracer::{Registry, TraceRecord};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Serialize, Serializer};

use crate::filter::Filter;
use crate::names;
use crate::reader::Trace;

/// The column names, in order.
pub const COLUMNS: [&str; 23] = [
    "t_ms",
    "dur_ns",
    "step",
    "pos",
    "phase",
    "thread",
    "n_threads",
    "layer",
    "op",
    "path",
    "tensor_id",
    "name",
    "offset",
    "len",
    "row0",
    "row1",
    "col0",
    "col1",
    "expert",
    "act_id",
    "act_bytes",
    "node",
    "flags",
];

/// Output format of record listings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for reading.
    #[default]
    Table,
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// One JSON array of objects.
    Json,
}

/// One record as an export row (see the module doc for the columns).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row<'a> {
    pub t_ms: f64,
    pub dur_ns: u32,
    pub step: u32,
    pub pos: i32,
    pub phase: Cow<'static, str>,
    pub thread: u16,
    pub n_threads: u16,
    pub layer: i16,
    pub op: Cow<'static, str>,
    pub path: Cow<'static, str>,
    pub tensor_id: i64,
    pub name: Cow<'a, str>,
    pub offset: u64,
    pub len: u64,
    pub row0: u32,
    pub row1: u32,
    pub col0: u32,
    pub col1: u32,
    pub expert: i32,
    pub act_id: i64,
    pub act_bytes: u64,
    #[serde(serialize_with = "hex")]
    pub node: u64,
    pub flags: u32,
}

fn hex<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#x}"))
}

/// A registry id as a column value: -1 for "none" ([`NO_ID`] on disk).
pub(crate) fn id_column(v: u32) -> i64 {
    if v == NO_ID {
        -1
    } else {
        v as i64
    }
}

/// The record's own (truncated) name, lossily decoded.
pub(crate) fn record_name(r: &TraceRecord) -> Cow<'_, str> {
    let end = r.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    String::from_utf8_lossy(&r.name[..end])
}

impl<'a> Row<'a> {
    /// The row of `r`, naming its tensor from `registry`.
    pub fn new(r: &'a TraceRecord, registry: &'a Registry) -> Row<'a> {
        let name = match registry.get(r.tensor_id) {
            Some(t) => Cow::Borrowed(t.name.as_str()),
            None => record_name(r),
        };
        Row {
            t_ms: (r.t_ns.saturating_add(500) / 1000) as f64 / 1000.0,
            dur_ns: r.dur_ns,
            step: r.step,
            pos: r.pos,
            phase: names::phase(r.phase),
            thread: r.thread,
            n_threads: r.n_threads,
            layer: r.layer,
            op: names::op(r.op),
            path: names::path(r.path),
            tensor_id: id_column(r.tensor_id),
            name,
            offset: r.offset,
            len: r.len,
            row0: r.row0,
            row1: r.row1,
            col0: r.col0,
            col1: r.col1,
            expert: r.expert,
            act_id: id_column(r.act_id),
            act_bytes: r.act_bytes,
            node: r.node,
            flags: r.flags,
        }
    }

    /// The same row owning its strings.
    pub fn into_owned(self) -> Row<'static> {
        Row {
            name: Cow::Owned(self.name.into_owned()),
            ..self
        }
    }

    /// A one-line `key=value` rendering for messages.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "t_ms={:.3} thread={} step={} phase={} layer={} op={} path={} tensor_id={} name={} rows={}..{} cols={}..{}",
            self.t_ms,
            self.thread,
            self.step,
            self.phase,
            self.layer,
            self.op,
            self.path,
            self.tensor_id,
            self.name,
            self.row0,
            self.row1,
            self.col0,
            self.col1
        );
        if self.expert >= 0 {
            s.push_str(&format!(" expert={}", self.expert));
        }
        s.push_str(&format!(
            " offset={} len={} node={:#x} flags={:#x}",
            self.offset, self.len, self.node, self.flags
        ));
        s
    }
}

/// A short string formatted on the stack (for padded cells without
/// allocating).
struct Small {
    buf: [u8; 40],
    len: usize,
}

impl Small {
    fn new(args: std::fmt::Arguments<'_>) -> Small {
        let mut s = Small {
            buf: [0; 40],
            len: 0,
        };
        let mut cur = io::Cursor::new(&mut s.buf[..]);
        // Everything formatted here fits in 40 bytes; a longer value would
        // be cut, never overflow.
        let _ = cur.write_fmt(args);
        s.len = cur.position() as usize;
        s
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

/// `t_ms`: microseconds since trace start, rounded, printed as ms with
/// exactly 3 decimals.
fn t_ms_cell(t_ns: u64) -> Small {
    let us = t_ns.saturating_add(500) / 1000;
    Small::new(format_args!("{}.{:03}", us / 1000, us % 1000))
}

const TABLE_WIDTHS: [usize; 23] = [
    12, 9, 5, 6, 7, 6, 9, 5, 10, 17, 9, 32, 12, 10, 7, 7, 6, 6, 6, 6, 9, 14, 10,
];

/// Writes the cells of one CSV or table line.
struct Cells<'w> {
    w: &'w mut dyn Write,
    table: bool,
    col: usize,
}

impl Cells<'_> {
    /// `text`: left-aligned in a table (numbers are right-aligned).
    fn cell(&mut self, v: &dyn std::fmt::Display, text: bool) -> io::Result<()> {
        if self.col > 0 {
            self.w.write_all(if self.table { b" " } else { b"," })?;
        }
        let width = TABLE_WIDTHS.get(self.col).copied().unwrap_or(0);
        self.col += 1;
        match (self.table, text) {
            (true, true) => write!(self.w, "{v:<width$}"),
            (true, false) => write!(self.w, "{v:>width$}"),
            (false, _) => write!(self.w, "{v}"),
        }
    }

    fn str_cell(&mut self, s: &str) -> io::Result<()> {
        if !self.table && s.contains([',', '"', '\n', '\r']) {
            let quoted = format!("\"{}\"", s.replace('"', "\"\""));
            return self.cell(&quoted, true);
        }
        self.cell(&s, true)
    }
}

fn write_row(w: &mut dyn Write, format: Format, r: &TraceRecord, row: &Row<'_>) -> io::Result<()> {
    if matches!(format, Format::Jsonl | Format::Json) {
        return serde_json::to_writer(&mut *w, row).map_err(io::Error::from);
    }
    let mut c = Cells {
        w,
        table: format == Format::Table,
        col: 0,
    };
    c.cell(&t_ms_cell(r.t_ns).as_str(), false)?;
    c.cell(&row.dur_ns, false)?;
    c.cell(&row.step, false)?;
    c.cell(&row.pos, false)?;
    c.str_cell(&row.phase)?;
    c.cell(&row.thread, false)?;
    c.cell(&row.n_threads, false)?;
    c.cell(&row.layer, false)?;
    c.str_cell(&row.op)?;
    c.str_cell(&row.path)?;
    c.cell(&row.tensor_id, false)?;
    c.str_cell(&row.name)?;
    c.cell(&row.offset, false)?;
    c.cell(&row.len, false)?;
    c.cell(&row.row0, false)?;
    c.cell(&row.row1, false)?;
    c.cell(&row.col0, false)?;
    c.cell(&row.col1, false)?;
    c.cell(&row.expert, false)?;
    c.cell(&row.act_id, false)?;
    c.cell(&row.act_bytes, false)?;
    c.cell(&Small::new(format_args!("{:#x}", row.node)).as_str(), true)?;
    c.cell(&row.flags, false)
}

fn write_header(w: &mut dyn Write, format: Format) -> io::Result<()> {
    let mut c = Cells {
        w,
        table: format == Format::Table,
        col: 0,
    };
    for (i, name) in COLUMNS.iter().enumerate() {
        let text = matches!(i, 4 | 8 | 9 | 11 | 21);
        c.cell(name, text)?;
    }
    Ok(())
}

/// Write the complete records of `trace` that pass `filter`, at most
/// `limit` of them, in `format`. Returns the number of rows written.
pub fn write_records(
    trace: &Trace,
    filter: &Filter,
    format: Format,
    limit: Option<u64>,
    out: &mut dyn Write,
) -> io::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 18, out);
    let m = filter.matcher(trace.registry());
    let limit = limit.unwrap_or(u64::MAX);
    match format {
        Format::Csv | Format::Table => {
            write_header(&mut w, format)?;
            writeln!(w)?;
        }
        Format::Json => w.write_all(b"[")?,
        Format::Jsonl => {}
    }
    let mut n = 0u64;
    for r in trace.records() {
        if n >= limit {
            break;
        }
        if !m.matches(&r) {
            continue;
        }
        if format == Format::Json {
            w.write_all(if n == 0 { b"\n" } else { b",\n" })?;
        }
        let row = Row::new(&r, trace.registry());
        write_row(&mut w, format, &r, &row)?;
        if format != Format::Json {
            w.write_all(b"\n")?;
        }
        n += 1;
    }
    if format == Format::Json {
        w.write_all(b"\n]\n")?;
    }
    w.flush()?;
    Ok(n)
}

/// A progress bar on stderr, or a hidden one when stderr is not a terminal.
pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{msg} [{bar:40}] {percent}% {pos}/{len} records, eta {eta}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::IntRange;
    use crate::testutil::Bundle;
    use cktrace_tracer::format::flags;
    use cktrace_tracer::Op;

    fn export(b: &Bundle, filter: &Filter, format: Format, limit: Option<u64>) -> (u64, String) {
        let t = Trace::open(b.path()).unwrap();
        let mut out = Vec::new();
        let n = write_records(&t, filter, format, limit, &mut out).unwrap();
        (n, String::from_utf8(out).unwrap())
    }

    #[test]
    fn csv_has_the_columns_and_every_row() {
        let b = Bundle::small();
        let (n, text) = export(&b, &Filter::default(), Format::Csv, None);
        assert_eq!(n, b.recs.len() as u64);
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap(), COLUMNS.join(","));
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), b.recs.len());
        for (row, r) in rows.iter().zip(&b.recs) {
            assert_eq!(row.len(), COLUMNS.len());
            assert_eq!(row[11], b.reg.get(r.tensor_id).unwrap().name);
            assert_eq!(row[13], r.len.to_string());
            assert_eq!(row[21], format!("{:#x}", r.node));
            let us = (r.t_ns + 500) / 1000;
            assert_eq!(row[0], format!("{}.{:03}", us / 1000, us % 1000));
        }
        // Full registry names, longer than a record's 32 bytes.
        assert!(rows
            .iter()
            .any(|row| row[11].ends_with("(permuted) (cont)")));
    }

    #[test]
    fn csv_quotes_awkward_names() {
        let mut b = Bundle::small();
        b.reg.tensors[0].name = "token,\"embd\"".into();
        b.write();
        let f = Filter {
            op: vec![Op::GetRows],
            ..Default::default()
        };
        let (_, text) = export(&b, &f, Format::Csv, Some(1));
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .contains(",\"token,\"\"embd\"\"\","),
            "{text}"
        );
    }

    #[test]
    fn json_formats_parse_back() {
        let b = Bundle::small();
        let f = Filter {
            step: vec![IntRange::one(1)],
            ..Default::default()
        };
        let want = b.recs.iter().filter(|r| r.step == 1).count();
        let (n, text) = export(&b, &f, Format::Jsonl, None);
        assert_eq!(n as usize, want);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), COLUMNS.len());
            for c in COLUMNS {
                assert!(obj.contains_key(c), "missing {c}");
            }
            assert_eq!(v["step"], 1);
            assert!(v["node"].as_str().unwrap().starts_with("0x"));
        }
        let (n, text) = export(&b, &f, Format::Json, Some(5));
        assert_eq!(n, 5);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 5);
        let (n, text) = export(
            &b,
            &Filter {
                step: vec![IntRange::one(99)],
                ..Default::default()
            },
            Format::Json,
            None,
        );
        assert_eq!(n, 0);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            serde_json::json!([])
        );
    }

    #[test]
    fn table_lines_up() {
        let b = Bundle::small();
        let (n, text) = export(&b, &Filter::default(), Format::Table, Some(10));
        assert_eq!(n, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11);
        assert!(lines[0].trim_start().starts_with("t_ms"));
        // Columns before the name have fixed widths.
        let name_at = lines[0].find("name").unwrap();
        assert!(lines[1..]
            .iter()
            .all(|l| l[name_at..].starts_with("token_embd") || l[name_at..].starts_with("blk.")));
    }

    #[test]
    fn row_fields() {
        let b = Bundle::small();
        let mut r = b.recs[0];
        r.tensor_id = cktrace_tracer::format::NO_ID;
        r.op = 77;
        r.flags |= flags::STRIDED;
        let row = Row::new(&r, &b.reg);
        assert_eq!(row.tensor_id, -1);
        assert_eq!(row.op, "unknown(77)");
        assert_eq!(row.name, "token_embd.weight");
        assert!(row.summary().contains("op=unknown(77)"));
    }
}
