//! The one tiling checker: do a node's records cover its output exactly once?
//!
//! Each record of a `mul_mat` chunk says which rows `[row0,row1)` (output
//! features) and columns `[col0,col1)` (tokens) of the node's output the
//! thread computed. A complete, honest trace has records whose rectangles
//! tile `[0,rows) x [0,cols)`: no empty or inverted range, nothing past the
//! output, no cell computed twice, no cell missing. Both `parse --validate`
//! (which infers the output's extent from the registry and the records) and
//! `cktrace census` (which knows it from llama.cpp's eval callback) ask this
//! one function, so they cannot disagree about what a defect is.
//!
//! Cost: the overlap sweep is O(n log n) in the rectangles; the gap search
//! runs only when the covered area is short, to name the missing cells.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::ops::Bound::{Excluded, Unbounded};

/// One record's rectangle of the output, and its slot in `trace.bin` (for
/// the example a report prints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub row0: u32,
    pub row1: u32,
    pub col0: u32,
    pub col1: u32,
    pub slot: u64,
}

impl Rect {
    pub fn new(row0: u32, row1: u32, col0: u32, col1: u32, slot: u64) -> Rect {
        Rect {
            row0,
            row1,
            col0,
            col1,
            slot,
        }
    }

    fn area(&self) -> u128 {
        (self.row1 - self.row0) as u128 * (self.col1 - self.col0) as u128
    }
}

impl fmt::Display for Rect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rows {}..{} x cols {}..{}",
            self.row0, self.row1, self.col0, self.col1
        )
    }
}

/// The first thing wrong with a node's rectangles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Defect {
    /// The node has no records at all.
    NoRecords,
    /// A record with an empty or inverted range.
    Empty(Rect),
    /// A record that reaches past the output's `rows` x `cols`.
    Beyond { rect: Rect, rows: u64, cols: u64 },
    /// Two records compute the same cells.
    Overlap(Rect, Rect),
    /// Cells nobody computed: `[row0,row1) x [col0,col1)` is one such
    /// rectangle (bands between record edges); `covered` of `total` cells
    /// are covered.
    Gap {
        row0: u64,
        row1: u64,
        col0: u64,
        col1: u64,
        covered: u128,
        total: u128,
    },
}

impl Defect {
    /// The slot of the record the defect is best shown with (`first` when no
    /// single record is at fault).
    pub fn slot(&self, first: u64) -> u64 {
        match self {
            Defect::NoRecords | Defect::Gap { .. } => first,
            Defect::Empty(r) | Defect::Beyond { rect: r, .. } => r.slot,
            Defect::Overlap(_, b) => b.slot,
        }
    }
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Defect::NoRecords => write!(f, "no records"),
            Defect::Empty(r) => write!(f, "empty range {r}"),
            Defect::Beyond { rect, rows, cols } => {
                write!(f, "{rect} beyond the output's {rows} rows x {cols} cols")
            }
            Defect::Overlap(a, b) => write!(f, "{b} overlaps {a} of slot {}", a.slot),
            Defect::Gap {
                row0,
                row1,
                col0,
                col1,
                covered,
                total,
            } => write!(
                f,
                "rows {row0}..{row1} x cols {col0}..{col1} not computed (covered {covered} of {total} cells)"
            ),
        }
    }
}

/// Whether `rects` tile `[0,rows) x [0,cols)` exactly once; the first defect
/// otherwise. Sorts `rects`.
pub fn check(rects: &mut [Rect], rows: u64, cols: u64) -> Result<(), Defect> {
    if rects.is_empty() {
        return Err(Defect::NoRecords);
    }
    if let Some(r) = rects.iter().find(|r| r.row0 >= r.row1 || r.col0 >= r.col1) {
        return Err(Defect::Empty(*r));
    }
    if let Some(r) = rects
        .iter()
        .find(|r| r.row1 as u64 > rows || r.col1 as u64 > cols)
    {
        return Err(Defect::Beyond {
            rect: *r,
            rows,
            cols,
        });
    }
    check_overlap(rects)?;
    let covered: u128 = rects.iter().map(Rect::area).sum();
    let total = rows as u128 * cols as u128;
    if covered != total {
        // No overlap and nothing outside, so the area is short: find a hole.
        let (row0, row1, col0, col1) = find_gap(rects, rows, cols).unwrap_or((0, rows, 0, cols));
        return Err(Defect::Gap {
            row0,
            row1,
            col0,
            col1,
            covered,
            total,
        });
    }
    Ok(())
}

/// Only that no two rectangles share a cell (and none is empty): for
/// `mul_mat_id`, where an expert computes a subset of the columns.
pub fn check_overlap(rects: &mut [Rect]) -> Result<(), Defect> {
    if let Some(r) = rects.iter().find(|r| r.row0 >= r.row1 || r.col0 >= r.col1) {
        return Err(Defect::Empty(*r));
    }
    match find_overlap(rects) {
        Some((a, b)) => Err(Defect::Overlap(rects[a], rects[b])),
        None => Ok(()),
    }
}

/// Sweep over rows: the first pair of overlapping (non-empty) rectangles,
/// as indices into `rects` after sorting it. O(n log n).
fn find_overlap(rects: &mut [Rect]) -> Option<(usize, usize)> {
    rects.sort_unstable_by_key(|r| (r.row0, r.col0, r.row1, r.col1, r.slot));
    // Active rectangles (row1 > current row0), disjoint in columns, by col0.
    let mut active: BTreeMap<u32, (u32, usize)> = BTreeMap::new();
    let mut expiry: BinaryHeap<Reverse<(u32, usize, u32)>> = BinaryHeap::new();
    for (i, r) in rects.iter().enumerate() {
        while let Some(&Reverse((row1, idx, col0))) = expiry.peek() {
            if row1 > r.row0 {
                break;
            }
            expiry.pop();
            if active.get(&col0).map(|v| v.1) == Some(idx) {
                active.remove(&col0);
            }
        }
        if let Some((_, &(c1, j))) = active.range(..=r.col0).next_back() {
            if c1 > r.col0 {
                return Some((j, i));
            }
        }
        if let Some((&c0, &(_, j))) = active.range((Excluded(r.col0), Unbounded)).next() {
            if c0 < r.col1 {
                return Some((j, i));
            }
        }
        active.insert(r.col0, (r.col1, i));
        expiry.push(Reverse((r.row1, i, r.col0)));
    }
    None
}

/// An uncovered rectangle of `[0,rows) x [0,cols)` (rows a band between
/// rectangle edges). O(bands x n log n); only run on a failing node.
fn find_gap(rects: &[Rect], rows: u64, cols: u64) -> Option<(u64, u64, u64, u64)> {
    let mut ys: Vec<u64> = vec![0, rows];
    for r in rects {
        ys.push((r.row0 as u64).min(rows));
        ys.push((r.row1 as u64).min(rows));
    }
    ys.sort_unstable();
    ys.dedup();
    let mut iv: Vec<(u64, u64)> = Vec::new();
    for w in ys.windows(2) {
        let (a, b) = (w[0], w[1]);
        iv.clear();
        iv.extend(
            rects
                .iter()
                .filter(|r| r.row0 as u64 <= a && r.row1 as u64 >= b)
                .map(|r| (r.col0 as u64, r.col1 as u64)),
        );
        iv.sort_unstable();
        let mut x = 0u64;
        for &(c0, c1) in &iv {
            if c0 > x {
                return Some((a, b, x, c0));
            }
            x = x.max(c1);
        }
        if x < cols {
            return Some((a, b, x, cols));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(row0: u32, row1: u32, col0: u32, col1: u32) -> Rect {
        Rect::new(row0, row1, col0, col1, 0)
    }

    /// 8 row bands x 4 column bands of a 32 x 8 output.
    fn grid() -> Vec<Rect> {
        (0..8)
            .flat_map(|i| (0..4).map(move |j| rect(i * 4, i * 4 + 4, j * 2, j * 2 + 2)))
            .collect()
    }

    #[test]
    fn a_tiling_passes() {
        assert_eq!(check(&mut grid(), 32, 8), Ok(()));
        // Touching edges do not overlap; ragged bands are fine.
        let mut v = vec![rect(0, 4, 0, 4), rect(4, 8, 0, 4), rect(0, 8, 4, 5)];
        assert_eq!(check(&mut v, 8, 5), Ok(()));
    }

    #[test]
    fn no_records_is_a_defect() {
        assert_eq!(check(&mut [], 4, 4), Err(Defect::NoRecords));
    }

    #[test]
    fn a_gap_is_found_and_located() {
        let mut v = grid();
        let gone = v.remove(13); // rows 12..16 x cols 2..4
        match check(&mut v, 32, 8) {
            Err(Defect::Gap {
                row0,
                row1,
                col0,
                col1,
                covered,
                total,
            }) => {
                assert_eq!(
                    (row0, row1, col0, col1),
                    (
                        gone.row0 as u64,
                        gone.row1 as u64,
                        gone.col0 as u64,
                        gone.col1 as u64
                    )
                );
                assert_eq!((covered, total), (256 - 8, 256));
            }
            other => panic!("expected a gap, got {other:?}"),
        }
    }

    #[test]
    fn an_overlap_is_found() {
        let mut v = grid();
        v.push(rect(5, 6, 3, 4));
        assert!(matches!(check(&mut v, 32, 8), Err(Defect::Overlap(..))));
        // Covered area right, but one cell twice and one missing: still an
        // overlap, not a pass.
        let mut v = vec![rect(0, 2, 0, 1), rect(1, 2, 0, 2)];
        assert!(matches!(check(&mut v, 2, 2), Err(Defect::Overlap(..))));
        // An overlap with a rectangle that started many rows earlier.
        let mut v = vec![
            rect(0, 100, 0, 1),
            rect(0, 10, 1, 2),
            rect(10, 20, 1, 2),
            rect(50, 60, 0, 2),
        ];
        assert!(matches!(check_overlap(&mut v), Err(Defect::Overlap(..))));
        // Same start column, later row, still active.
        let mut v = vec![rect(0, 10, 0, 2), rect(5, 6, 0, 1)];
        assert!(matches!(check_overlap(&mut v), Err(Defect::Overlap(..))));
    }

    /// Without the last column band the records still tile the columns they
    /// reach; only the known output width shows the band missing.
    #[test]
    fn a_missing_last_column_band_is_a_gap() {
        let mut v: Vec<Rect> = grid().into_iter().filter(|r| r.col0 < 6).collect();
        assert_eq!(check(&mut v.clone(), 32, 6), Ok(()));
        match check(&mut v, 32, 8) {
            Err(Defect::Gap { col0, col1, .. }) => assert_eq!((col0, col1), (6, 8)),
            other => panic!("expected the last band missing, got {other:?}"),
        }
        // The same for the last row band.
        let mut v: Vec<Rect> = grid().into_iter().filter(|r| r.row0 < 28).collect();
        match check(&mut v, 32, 8) {
            Err(Defect::Gap { row0, row1, .. }) => assert_eq!((row0, row1), (28, 32)),
            other => panic!("expected the last row band missing, got {other:?}"),
        }
    }

    #[test]
    fn empty_and_inverted_ranges_are_defects() {
        for bad in [rect(4, 4, 0, 2), rect(6, 5, 0, 2), rect(0, 4, 3, 3)] {
            let mut v = grid();
            v.push(bad);
            assert_eq!(check(&mut v, 32, 8), Err(Defect::Empty(bad)));
            let mut v = vec![rect(0, 1, 0, 1), bad];
            assert_eq!(check_overlap(&mut v), Err(Defect::Empty(bad)));
        }
    }

    #[test]
    fn records_past_the_output_are_defects() {
        let mut v = grid();
        v.push(rect(32, 33, 0, 8));
        assert!(matches!(check(&mut v, 32, 8), Err(Defect::Beyond { .. })));
        let mut v = vec![rect(0, 32, 0, 9)];
        assert!(matches!(check(&mut v, 32, 8), Err(Defect::Beyond { .. })));
    }
}
