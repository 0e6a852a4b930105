//! The one streaming pass over a bundle: every complete record, in file
//! order, to every accumulator. Blocks of 64 Ki slots (8 MiB) are read and
//! then released from the mapping, as in `parse --stats`, so the resident
//! set stays flat however large the trace. A progress bar is drawn on a
//! terminal only.

use super::{Accumulator, Bundle};

/// Slots per block.
const BLOCK: usize = 1 << 16;

/// Feed the records of `bundle` to `accs`; returns the number of records.
pub fn stream(bundle: &Bundle, accs: &mut [Box<dyn Accumulator>], progress: bool) -> u64 {
    let trace = &bundle.trace;
    let n = trace.slot_count();
    let pb = if progress {
        crate::export::progress(n as u64, &format!("analyze {}", bundle.label))
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut records = 0u64;
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        for r in trace.records_in(start..end) {
            records += 1;
            for a in accs.iter_mut() {
                a.observe(&r);
            }
        }
        trace.release(start..end);
        pb.set_position(end as u64);
        start = end;
    }
    pb.finish_and_clear();
    records
}
