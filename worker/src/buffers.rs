//! A process-wide pool of large f32 buffers.
//!
//! Merging allocates a few tensor-sized f32 buffers per task. Fresh allocations of hundreds of
//! megabytes cost a page fault per 4 KiB and, freed, go straight back to the kernel, so a merge
//! would spend much of its time in the kernel. Buffers here are anonymous mappings advised to
//! use transparent huge pages, and are returned to the pool when dropped: after the first
//! tasks, merging allocates nothing. The pool keeps at most `cap` bytes of idle buffers, so its
//! size follows the largest concurrent demand, which the scheduler's memory budget bounds.

use memmap2::{Advice, MmapMut};
use parking_lot::Mutex;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

/// Buffers smaller than this are plain `Vec`s (not pooled).
const MIN_POOLED: usize = 1 << 20;

/// A pool of reusable buffers.
pub struct BufferPool {
    free: Mutex<Vec<MmapMut>>,
    cap: Mutex<usize>,
}

enum Storage {
    Map(MmapMut),
    Vec(Vec<f32>),
}

/// An f32 buffer of fixed length from a [`BufferPool`]; returns to the pool when dropped.
pub struct Buffer {
    storage: Option<Storage>,
    len: usize,
    pool: &'static BufferPool,
}

impl BufferPool {
    /// The process-wide pool (idle cap 2 GiB until [`BufferPool::set_idle_cap`]).
    pub fn global() -> &'static BufferPool {
        static POOL: OnceLock<BufferPool> = OnceLock::new();
        POOL.get_or_init(|| BufferPool {
            free: Mutex::new(Vec::new()),
            cap: Mutex::new(2 << 30),
        })
    }

    /// Sets the most bytes of idle buffers kept for reuse.
    pub fn set_idle_cap(&self, bytes: usize) {
        *self.cap.lock() = bytes;
        self.trim();
    }

    /// Frees every idle buffer.
    pub fn clear(&self) {
        self.free.lock().clear();
    }

    /// Idle bytes currently held.
    pub fn idle_bytes(&self) -> usize {
        self.free.lock().iter().map(|m| m.len()).sum()
    }

    fn trim(&self) {
        let cap = *self.cap.lock();
        let mut free = self.free.lock();
        free.sort_by_key(|m| m.len());
        while free.iter().map(|m| m.len()).sum::<usize>() > cap {
            free.remove(0);
        }
    }

    /// A buffer of `len` f32 values; contents are unspecified (zero for fresh memory).
    pub fn take(&'static self, len: usize) -> std::io::Result<Buffer> {
        let bytes = len * 4;
        if bytes < MIN_POOLED {
            return Ok(Buffer {
                storage: Some(Storage::Vec(vec![0.0; len])),
                len,
                pool: self,
            });
        }
        let reused = {
            let mut free = self.free.lock();
            // Best fit: the smallest idle buffer that is large enough.
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, m)| m.len() >= bytes)
                .min_by_key(|(_, m)| m.len())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        let map = match reused {
            Some(m) => m,
            None => {
                let m = MmapMut::map_anon(bytes)?;
                // Fewer, larger page faults; ignored where transparent huge pages are off.
                let _ = m.advise(Advice::HugePage);
                m
            }
        };
        Ok(Buffer {
            storage: Some(Storage::Map(map)),
            len,
            pool: self,
        })
    }
}

impl Deref for Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self.storage.as_ref().expect("present until drop") {
            // SAFETY: anonymous mappings are page aligned (so f32 aligned), at least `len * 4`
            // bytes long, and every bit pattern is a valid f32.
            Storage::Map(m) => unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<f32>(), self.len) },
            Storage::Vec(v) => v,
        }
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self.storage.as_mut().expect("present until drop") {
            // SAFETY: as in `deref`; the mapping is uniquely owned by this buffer.
            Storage::Map(m) => unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<f32>(), self.len) },
            Storage::Vec(v) => v,
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(Storage::Map(m)) = self.storage.take() {
            self.pool.free.lock().push(m);
            self.pool.trim();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let pool = BufferPool::global();
        let n = 3 << 20;
        {
            let mut b = pool.take(n).unwrap();
            assert_eq!(b.len(), n);
            b[n - 1] = 1.5;
            assert_eq!(b[n - 1], 1.5);
        }
        assert!(pool.idle_bytes() >= n * 4);
        let before = pool.idle_bytes();
        let b = pool.take(n / 2).unwrap();
        assert_eq!(b.len(), n / 2);
        assert!(pool.idle_bytes() < before, "the idle buffer was reused");
        drop(b);
        let small = pool.take(10).unwrap();
        assert_eq!(&*small, &[0.0; 10]);
    }
}
