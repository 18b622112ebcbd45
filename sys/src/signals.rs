//! Signals caught into a flag word, for small programs (the VE init) whose main loop sleeps in
//! interruptible syscalls and looks at what arrived when one returns `EINTR`.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::{sys_err, Result};

static CAUGHT: AtomicU64 = AtomicU64::new(0);

extern "C" fn note_signal(sig: libc::c_int) {
    if (1..=64).contains(&sig) {
        CAUGHT.fetch_or(1 << (sig - 1), Ordering::SeqCst);
    }
}

/// Installs a handler for each of `signals` that only records its arrival. No `SA_RESTART`:
/// a blocking syscall returns `EINTR`, so the caller's loop notices at once.
pub fn catch(signals: &[Signal]) -> Result<()> {
    let act = SigAction::new(
        SigHandler::Handler(note_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for &s in signals {
        // SAFETY: the handler only does an atomic fetch_or, which is async-signal-safe, and
        // it replaces no handler that other code of the program relies on.
        unsafe { sigaction(s, &act) }.map_err(sys_err("sigaction"))?;
    }
    Ok(())
}

/// The signals caught since the last call (bit `n - 1` for signal `n`), cleared.
pub fn take_caught() -> u64 {
    CAUGHT.swap(0, Ordering::SeqCst)
}
