//! Stopping a run early without losing it: Ctrl-C, SIGTERM and a closed
//! stdout end generation at the next step boundary, so the step in flight
//! completes, its records are flushed and the bundle is finished (meta.json
//! says the run was interrupted and how many steps it completed).
//!
//! The handlers only set a flag (async-signal-safe); generation loops ask
//! [`requested`] between steps. Each handler is installed with
//! `SA_RESETHAND`: a second Ctrl-C finds the default action back and ends the
//! process at once, as Unix tools do; the trace is then as readable as after
//! a kill (its completed steps validate). A signal that was ignored when the
//! process started (a background job's SIGINT) stays ignored.
//!
//! This state is process-global because signals are.

use std::sync::atomic::{AtomicI32, Ordering};

/// Why a run stopped before it was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A signal (SIGINT or SIGTERM) asked the process to stop.
    Signal(i32),
    /// stdout was closed by its reader (`cktrace run | head`).
    BrokenPipe,
}

impl StopReason {
    /// The exit code a shell expects: 128 + the signal, or 0 for a closed
    /// pipe (the reader got what it wanted).
    pub fn exit_code(self) -> u8 {
        match self {
            StopReason::Signal(s) => (128 + s) as u8,
            StopReason::BrokenPipe => 0,
        }
    }

    /// `SIGINT`, `SIGTERM`, `broken pipe`.
    pub fn name(self) -> String {
        match self {
            StopReason::Signal(libc::SIGINT) => "SIGINT".into(),
            StopReason::Signal(libc::SIGTERM) => "SIGTERM".into(),
            StopReason::Signal(s) => format!("signal {s}"),
            StopReason::BrokenPipe => "broken pipe".into(),
        }
    }
}

/// 0: go on; a signal number; or [`PIPE`].
static STOP: AtomicI32 = AtomicI32::new(0);
const PIPE: i32 = -1;

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: async-signal-safe. The first signal wins.
    let _ = STOP.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

/// Install the SIGINT and SIGTERM handlers (each left alone if it was
/// ignored at start), and ignore SIGPIPE so that a closed stdout becomes an
/// EPIPE error the caller turns into [`request_pipe_stop`].
pub fn install_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction with a zeroed struct and a null new action only
        // reads the current disposition into `old`.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
        if old.sa_sigaction == libc::SIG_IGN {
            continue;
        }
        // SAFETY: a zeroed sigaction is valid; we fill the handler (an
        // extern "C" fn that only does an atomic store), an empty mask and
        // the flags, then install it for one signal.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut act.sa_mask);
            act.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
    // SAFETY: setting a signal's disposition to ignore is always sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Ask the run to stop because stdout is closed.
pub fn request_pipe_stop() {
    let _ = STOP.compare_exchange(0, PIPE, Ordering::SeqCst, Ordering::SeqCst);
}

/// Whether, and why, the run should stop at the next step boundary.
pub fn requested() -> Option<StopReason> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        PIPE => Some(StopReason::BrokenPipe),
        s => Some(StopReason::Signal(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(StopReason::Signal(libc::SIGINT).exit_code(), 130);
        assert_eq!(StopReason::Signal(libc::SIGTERM).exit_code(), 143);
        assert_eq!(StopReason::BrokenPipe.exit_code(), 0);
        assert_eq!(StopReason::Signal(libc::SIGTERM).name(), "SIGTERM");
    }
}
