//! Parquet export: one row per record with the export columns (see
//! [`crate::export`]) plus the registry facts of its tensor (`dtype`,
//! `kind`, `source`, `buffer_type`, `gguf_offset`), for analysis in
//! DuckDB, pandas or polars.
//!
//! Written with parquet's low-level column writer (no arrow), in row groups
//! of [`ROW_GROUP`] rows, Snappy-compressed with dictionary-encoded strings.
//! Memory is bounded by one row group. Unsigned 64-bit values (`offset`,
//! `len`, `act_bytes`, `node`) are stored as INT64 with the same bits.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::parquet::basic::Compression;
use ::parquet::data_type::{ByteArray, ByteArrayType, DataType, DoubleType, Int32Type, Int64Type};
use ::parquet::errors::ParquetError;
use ::parquet::file::properties::WriterProperties;
use ::parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};
use ::parquet::schema::parser::parse_message_type;

use crate::export::{id_column, progress, record_name};
use crate::filter::Filter;
use crate::names;
use crate::reader::Trace;

/// Rows per row group.
pub const ROW_GROUP: usize = 1 << 17;

/// The Parquet schema of the export.
pub const SCHEMA: &str = "message cktrace_record {
  required double t_ms;
  required int64 dur_ns;
  required int64 step;
  required int32 pos;
  required binary phase (UTF8);
  required int32 thread;
  required int32 n_threads;
  required int32 layer;
  required binary op (UTF8);
  required binary path (UTF8);
  required int64 tensor_id;
  required binary name (UTF8);
  required int64 offset;
  required int64 len;
  required int64 row0;
  required int64 row1;
  required int64 col0;
  required int64 col1;
  required int32 expert;
  required int64 act_id;
  required int64 act_bytes;
  required int64 node;
  required int64 flags;
  optional binary dtype (UTF8);
  optional binary kind (UTF8);
  optional binary source (UTF8);
  optional binary buffer_type (UTF8);
  optional int64 gguf_offset;
}";

/// Why a Parquet export failed; the one-line message names the output file
/// and includes the underlying error.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: io::Error },
    #[error("{}: parquet: {err}", path.display())]
    Parquet { path: PathBuf, err: ParquetError },
}

/// Registry columns of one tensor, as ready-made values.
struct TensorCols {
    name: ByteArray,
    dtype: ByteArray,
    kind: ByteArray,
    source: ByteArray,
    buffer_type: ByteArray,
    gguf_offset: Option<i64>,
}

#[derive(Default)]
struct Batch {
    t_ms: Vec<f64>,
    dur_ns: Vec<i64>,
    step: Vec<i64>,
    pos: Vec<i32>,
    phase: Vec<ByteArray>,
    thread: Vec<i32>,
    n_threads: Vec<i32>,
    layer: Vec<i32>,
    op: Vec<ByteArray>,
    path: Vec<ByteArray>,
    tensor_id: Vec<i64>,
    name: Vec<ByteArray>,
    offset: Vec<i64>,
    len: Vec<i64>,
    row0: Vec<i64>,
    row1: Vec<i64>,
    col0: Vec<i64>,
    col1: Vec<i64>,
    expert: Vec<i32>,
    act_id: Vec<i64>,
    act_bytes: Vec<i64>,
    node: Vec<i64>,
    flags: Vec<i64>,
    /// Optional columns: values of the non-null rows, and a definition
    /// level per row (1 = present).
    dtype: Vec<ByteArray>,
    kind: Vec<ByteArray>,
    source: Vec<ByteArray>,
    buffer_type: Vec<ByteArray>,
    tensor_def: Vec<i16>,
    gguf_offset: Vec<i64>,
    gguf_def: Vec<i16>,
}

impl Batch {
    fn clear(&mut self) {
        *self = Batch::default();
    }
}

fn put<T: DataType, W: io::Write + Send>(
    rg: &mut SerializedRowGroupWriter<'_, W>,
    values: &[T::T],
    def: Option<&[i16]>,
) -> Result<(), ParquetError> {
    let mut col = rg
        .next_column()?
        .ok_or_else(|| ParquetError::General("schema has fewer columns than the writer".into()))?;
    col.typed::<T>().write_batch(values, def, None)?;
    col.close()
}

fn write_batch<W: io::Write + Send>(
    w: &mut SerializedFileWriter<W>,
    b: &Batch,
) -> Result<(), ParquetError> {
    let mut rg = w.next_row_group()?;
    put::<DoubleType, _>(&mut rg, &b.t_ms, None)?;
    put::<Int64Type, _>(&mut rg, &b.dur_ns, None)?;
    put::<Int64Type, _>(&mut rg, &b.step, None)?;
    put::<Int32Type, _>(&mut rg, &b.pos, None)?;
    put::<ByteArrayType, _>(&mut rg, &b.phase, None)?;
    put::<Int32Type, _>(&mut rg, &b.thread, None)?;
    put::<Int32Type, _>(&mut rg, &b.n_threads, None)?;
    put::<Int32Type, _>(&mut rg, &b.layer, None)?;
    put::<ByteArrayType, _>(&mut rg, &b.op, None)?;
    put::<ByteArrayType, _>(&mut rg, &b.path, None)?;
    put::<Int64Type, _>(&mut rg, &b.tensor_id, None)?;
    put::<ByteArrayType, _>(&mut rg, &b.name, None)?;
    put::<Int64Type, _>(&mut rg, &b.offset, None)?;
    put::<Int64Type, _>(&mut rg, &b.len, None)?;
    put::<Int64Type, _>(&mut rg, &b.row0, None)?;
    put::<Int64Type, _>(&mut rg, &b.row1, None)?;
    put::<Int64Type, _>(&mut rg, &b.col0, None)?;
    put::<Int64Type, _>(&mut rg, &b.col1, None)?;
    put::<Int32Type, _>(&mut rg, &b.expert, None)?;
    put::<Int64Type, _>(&mut rg, &b.act_id, None)?;
    put::<Int64Type, _>(&mut rg, &b.act_bytes, None)?;
    put::<Int64Type, _>(&mut rg, &b.node, None)?;
    put::<Int64Type, _>(&mut rg, &b.flags, None)?;
    put::<ByteArrayType, _>(&mut rg, &b.dtype, Some(&b.tensor_def))?;
    put::<ByteArrayType, _>(&mut rg, &b.kind, Some(&b.tensor_def))?;
    put::<ByteArrayType, _>(&mut rg, &b.source, Some(&b.tensor_def))?;
    put::<ByteArrayType, _>(&mut rg, &b.buffer_type, Some(&b.tensor_def))?;
    put::<Int64Type, _>(&mut rg, &b.gguf_offset, Some(&b.gguf_def))?;
    rg.close()?;
    Ok(())
}

fn code_names(f: fn(u8) -> std::borrow::Cow<'static, str>) -> Vec<ByteArray> {
    (0..=255u8)
        .map(|c| ByteArray::from(f(c).as_ref()))
        .collect()
}

/// Write the records of `trace` passing `filter` to the Parquet file
/// `path`. Returns the number of rows written.
pub fn write_parquet(trace: &Trace, filter: &Filter, path: &Path) -> Result<u64, ExportError> {
    write_parquet_groups(trace, filter, path, ROW_GROUP)
}

fn write_parquet_groups(
    trace: &Trace,
    filter: &Filter,
    path: &Path,
    row_group: usize,
) -> Result<u64, ExportError> {
    let row_group = row_group.max(1);
    let pq = |err| ExportError::Parquet {
        path: path.to_path_buf(),
        err,
    };
    let file = File::create(path).map_err(|err| ExportError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(pq)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("cktrace {}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let mut w = SerializedFileWriter::new(BufWriter::with_capacity(1 << 20, file), schema, props)
        .map_err(pq)?;

    let registry = trace.registry();
    let tensors: Vec<Option<TensorCols>> = registry
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (t.id as usize == i).then(|| TensorCols {
                name: ByteArray::from(t.name.as_str()),
                dtype: ByteArray::from(t.dtype.as_str()),
                kind: ByteArray::from(names::kind(t.kind)),
                source: ByteArray::from(names::source(t.source)),
                buffer_type: ByteArray::from(t.buffer_type.as_str()),
                gguf_offset: t.gguf_offset.map(|o| o as i64),
            })
        })
        .collect();
    let (ops, paths, phases) = (
        code_names(names::op),
        code_names(names::path),
        code_names(names::phase),
    );

    let m = filter.matcher(registry);
    let pb = progress(trace.slot_count() as u64, "parquet");
    let mut b = Batch::default();
    let mut rows = 0u64;
    let mut in_batch = 0usize;
    for (slot, r) in trace.records().with_slots() {
        if !m.matches(&r) {
            continue;
        }
        b.t_ms.push(r.t_ns as f64 / 1e6);
        b.dur_ns.push(r.dur_ns as i64);
        b.step.push(r.step as i64);
        b.pos.push(r.pos);
        b.phase.push(phases[r.phase as usize].clone());
        b.thread.push(r.thread as i32);
        b.n_threads.push(r.n_threads as i32);
        b.layer.push(r.layer as i32);
        b.op.push(ops[r.op as usize].clone());
        b.path.push(paths[r.path as usize].clone());
        b.tensor_id.push(id_column(r.tensor_id));
        b.offset.push(r.offset as i64);
        b.len.push(r.len as i64);
        b.row0.push(r.row0 as i64);
        b.row1.push(r.row1 as i64);
        b.col0.push(r.col0 as i64);
        b.col1.push(r.col1 as i64);
        b.expert.push(r.expert);
        b.act_id.push(id_column(r.act_id));
        b.act_bytes.push(r.act_bytes as i64);
        b.node.push(r.node as i64);
        b.flags.push(r.flags as i64);
        match tensors.get(r.tensor_id as usize).and_then(|t| t.as_ref()) {
            Some(t) => {
                b.name.push(t.name.clone());
                b.dtype.push(t.dtype.clone());
                b.kind.push(t.kind.clone());
                b.source.push(t.source.clone());
                b.buffer_type.push(t.buffer_type.clone());
                b.tensor_def.push(1);
                match t.gguf_offset {
                    Some(o) => {
                        b.gguf_offset.push(o);
                        b.gguf_def.push(1);
                    }
                    None => b.gguf_def.push(0),
                }
            }
            None => {
                b.name.push(ByteArray::from(record_name(&r).as_ref()));
                b.tensor_def.push(0);
                b.gguf_def.push(0);
            }
        }
        rows += 1;
        in_batch += 1;
        if in_batch == row_group {
            write_batch(&mut w, &b).map_err(pq)?;
            b.clear();
            in_batch = 0;
            pb.set_position(slot as u64);
        }
    }
    if in_batch > 0 {
        write_batch(&mut w, &b).map_err(pq)?;
    }
    pb.finish_and_clear();
    let inner = w.into_inner().map_err(pq)?;
    let file = inner.into_inner().map_err(|e| ExportError::Io {
        path: path.to_path_buf(),
        err: e.into_error(),
    })?;
    file.sync_all().map_err(|err| ExportError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Bundle;
    use ::parquet::file::reader::{FileReader, SerializedFileReader};
    use ::parquet::record::RowAccessor;

    #[test]
    fn reads_back() {
        let b = Bundle::small();
        let t = Trace::open(b.path()).unwrap();
        let out = b.path().join("t.parquet");
        let n = write_parquet(&t, &Filter::default(), &out).unwrap();
        assert_eq!(n, b.recs.len() as u64);

        let reader = SerializedFileReader::new(File::open(&out).unwrap()).unwrap();
        assert_eq!(
            reader.metadata().file_metadata().num_rows(),
            b.recs.len() as i64
        );
        let fields: Vec<String> = reader
            .metadata()
            .file_metadata()
            .schema()
            .get_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert_eq!(&fields[..23], &crate::export::COLUMNS[..]);
        let col = |name: &str| fields.iter().position(|f| f == name).unwrap();
        let (len, act, name, kind, gguf) = (
            col("len"),
            col("act_bytes"),
            col("name"),
            col("kind"),
            col("gguf_offset"),
        );
        let (mut rows, mut len_sum, mut act_sum, mut weights) = (0usize, 0u64, 0u64, 0u64);
        for (row, r) in reader.get_row_iter(None).unwrap().zip(&b.recs) {
            let row = row.unwrap();
            let reg = b.reg.get(r.tensor_id).unwrap();
            assert_eq!(row.get_string(name).unwrap(), &reg.name);
            len_sum += row.get_long(len).unwrap() as u64;
            act_sum += row.get_long(act).unwrap() as u64;
            if row.get_string(kind).unwrap() == "weight" {
                weights += row.get_long(len).unwrap() as u64;
                assert_eq!(row.get_long(gguf).unwrap() as u64, reg.gguf_offset.unwrap());
            }
            rows += 1;
        }
        assert_eq!(rows, b.recs.len());
        assert_eq!(len_sum, b.recs.iter().map(|r| r.len).sum::<u64>());
        assert_eq!(act_sum, b.recs.iter().map(|r| r.act_bytes).sum::<u64>());
        let s = crate::stats::Stats::compute(&t, &Filter::default());
        assert_eq!(weights, s.split.weights + s.split.embedding_rows);
    }

    #[test]
    fn many_row_groups_and_unregistered_tensors() {
        let mut b = Bundle::new(crate::synth::SynthSpec {
            decode_steps: 10,
            ..crate::synth::SynthSpec::small()
        });
        b.recs[1].tensor_id = cktrace_tracer::format::NO_ID;
        b.write();
        let t = Trace::open(b.path()).unwrap();
        let out = b.path().join("t.parquet");
        write_parquet_groups(&t, &Filter::default(), &out, 1000).unwrap();
        let reader = SerializedFileReader::new(File::open(&out).unwrap()).unwrap();
        assert_eq!(
            reader.metadata().num_row_groups(),
            b.recs.len().div_ceil(1000)
        );
        assert_eq!(
            reader.metadata().file_metadata().num_rows(),
            b.recs.len() as i64
        );
        let row = reader.get_row_iter(None).unwrap().nth(1).unwrap().unwrap();
        assert_eq!(row.get_long(10).unwrap(), -1);
        assert_eq!(
            row.get_string(11).unwrap(),
            &b.recs[1].name_str().to_string()
        );
        // The optional registry columns are null.
        assert!(row.get_string(23).is_err());
    }
}
