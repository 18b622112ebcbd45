//! Data for batched remote syscalls: structs and strings placed one after another in the
//! lower half of the task's scratch area (the upper half holds the batch's code and results).

use sys::remote::RemoteTask;

use crate::RestoreError;

/// Bytes of the scratch data area (`RemoteTask::put` offsets) available to one batch.
const DATA_LEN: u64 = 32 * 1024 - 128;

pub struct Arena {
    next: u64,
}

impl Arena {
    pub fn new() -> Self {
        Arena { next: 0 }
    }

    /// Whether `len` more bytes fit before the batch must be flushed.
    pub fn fits(&self, len: usize) -> bool {
        self.next + len as u64 + 8 <= DATA_LEN
    }

    /// Copies `data` into the task and returns its address there.
    pub fn put(&mut self, rt: &RemoteTask, data: &[u8]) -> Result<u64, RestoreError> {
        if !self.fits(data.len()) {
            return Err(RestoreError::Invalid(format!(
                "{} bytes of syscall arguments do not fit the scratch area",
                data.len()
            )));
        }
        let addr = rt.put(self.next, data)?;
        self.next = (self.next + data.len() as u64 + 7) & !7;
        Ok(addr)
    }

    /// A NUL-terminated copy of `s`.
    pub fn cstr(&mut self, rt: &RemoteTask, s: &str) -> Result<u64, RestoreError> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(rt, &b)
    }

    /// Little-endian u64 words.
    pub fn words(&mut self, rt: &RemoteTask, words: &[u64]) -> Result<u64, RestoreError> {
        let b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.put(rt, &b)
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}
