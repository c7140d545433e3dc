//! Parallel, reproducible gzip / zstd compression of the packed archive stream.
//!
//! [`ParallelEncoder`] is a [`Write`] that cuts its input into fixed-size blocks, compresses the
//! blocks on a rayon pool and writes the compressed blocks, in order, to the inner writer.
//!
//! * **gzip** (pigz-style): one gzip member with a fixed 10-byte header (mtime 0, no name,
//!   OS byte 3). Each block is compressed on its own by libdeflate into raw deflate; every block
//!   but the last is then continued ([`bfinal::unfinish`]: its final deflate block made
//!   ordinary, an empty stored block appended, as zlib's sync flush ends a block on a byte
//!   boundary). The CRC-32 of each block is computed on the pool and the block CRCs are
//!   combined in order. The result is a single ordinary deflate stream in a single gzip member.
//!
//!   Why libdeflate: measured on the tar stream of a real environment (python 3.11, numpy,
//!   pip, six, idna: 234 MB, 10.7k files) on one thread, CPU seconds (best of 2) and output
//!   MB; libdeflate with independent blocks of 1 MiB (the continuation walk included), zlib
//!   with blocks of 512 KiB primed with the previous 32 KiB, as before:
//!
//!   | level | libdeflate | zlib-rs | zlib-ng |
//!   |---|---|---|---|
//!   | 1 | 2.02 s, 76.1 MB | 1.47 s, 93.9 MB | 1.15 s, 93.9 MB |
//!   | 4 | 3.24 s, 71.8 MB | 3.60 s, 73.2 MB | 3.50 s, 73.2 MB |
//!   | 6 | 3.91 s, 69.7 MB | 4.49 s, 71.6 MB | 4.72 s, 71.6 MB |
//!   | 9 | 9.17 s, 69.1 MB | 11.74 s, 69.7 MB | 12.04 s, 69.7 MB |
//!
//!   At the default level 4 libdeflate is 10% faster and 1.8% smaller; at 6 and 9 faster and
//!   smaller too; its level 1 is slower than zlib's but 19% smaller (zlib needs level 3 for
//!   that size, at more CPU than libdeflate's level 1). It wins although its blocks cannot be
//!   primed with the previous block (libdeflate has no dictionary and always ends its output
//!   with a final block, hence the walk, ~0.45 s of the 3.24). zlib-rs and zlib-ng write the
//!   same bytes at about the same speed (zlib-rs is a port of zlib-ng); zlib-ng would also
//!   need cmake to build.
//! * **zstd**: each block is an independent zstd frame (content size and checksum on);
//!   concatenated frames are a valid zstd stream. (Priming a block with the previous block via
//!   `ref_prefix` would need the decoder to know the prefix too, which a concatenation of frames
//!   cannot express; the block-level API that zstd's own multithreading uses to emit a single
//!   frame is not exposed by the `zstd` crate without its experimental features.)
//! * **None**: passthrough, still counted.
//!
//! Output bytes depend only on the input bytes, the [`Compression`] (kind and level) and the
//! block size (a constant outside the tests): never on the
//! number of threads, the pool, `max_in_flight`, or how the input was split into `write()`
//! calls. Block cuts are made at fixed input offsets, a block is dispatched only once the next
//! byte arrives (so the last block is always the one [`ParallelEncoder::finish`] sends), and
//! [`Write::flush`] never cuts a block. They are of course tied to the versions of libdeflate
//! and libzstd in `Cargo.lock`.
//!
//! Memory is bounded: at most `max_in_flight` blocks (the one being filled plus the ones
//! dispatched but not yet written) are alive at once; `write()` blocks while the pipeline is
//! full. The compressed blocks are written to `inner` on the caller's thread, in order, as soon
//! as the head of the queue is done (checked at every block dispatch).
//!
//! Driven from one of the pool's threads (as the archive writer does), the caller is one of
//! the pool's `-j` threads: while the pipeline is full it compresses its own queued blocks
//! instead of waiting, so `-j 1` runs everything on one thread and `-j 2` shares reading,
//! relocating and compressing between two.

mod bfinal;

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rayon::ThreadPool;

/// Smallest block size accepted.
#[cfg(test)]
pub const MIN_BLOCK_SIZE: usize = 64 * 1024;

/// A compression level within the range of its kind: made only by [`Compression::gzip_level`]
/// and [`Compression::zstd_level`], which refuse the others. Debug-prints as the number.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Level(i32);

impl fmt::Debug for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Level {
    /// The level as a number.
    #[must_use]
    pub const fn get(self) -> i32 {
        self.0
    }
}

/// A compression level outside the range of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compression level {level} is out of range: {kind} takes {min} to {max}")]
pub struct LevelError {
    /// `gzip` or `zstd`.
    pub kind: &'static str,
    /// The level asked for.
    pub level: i32,
    /// The lowest level of `kind`.
    pub min: i32,
    /// The highest level of `kind`.
    pub max: i32,
}

/// What to compress with. Levels as users know them: gzip 0-9 (0 = stored), zstd 1-22
/// (negative levels are zstd's fast levels, 0 its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip { level: Level },
    Zstd { level: Level },
}

impl Compression {
    /// Default gzip level: 4, conda-pack's default, so archives keep the size users expect.
    pub const DEFAULT_GZIP_LEVEL: i32 = 4;
    /// gzip levels: gzip's own (libdeflate also has 10-12, far slower for <1% less output).
    pub const GZIP_LEVELS: std::ops::RangeInclusive<i32> = 0..=9;
    /// Default zstd level: 3, zstd's own default: ~2.5x as fast as gzip level 4, 8% smaller.
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
    /// gzip block size. Blocks are compressed independently (libdeflate cannot be primed with
    /// the previous block), so the ratio depends on it: measured output at level 4 vs 1 MiB:
    /// 256 KiB +0.9%, 512 KiB +0.3%, 2 MiB -0.15%. 2 x threads + 2 blocks of 1 MiB (input and
    /// output): ~12 MiB at 2 threads.
    pub const GZIP_BLOCK_SIZE: usize = 1024 * 1024;
    /// zstd block size. Each block is an independent frame, so blocks must be large to keep
    /// the ratio: measured output vs 4 MiB: 1 MiB +2.2%, 2 MiB +1.0%, 8 MiB -0.4%, 16 MiB
    /// -0.7%, at the same speed; 4 MiB already beats `zstd -T2 -3` and keeps the pipeline at
    /// ~48 MiB for 2 threads.
    pub const ZSTD_BLOCK_SIZE: usize = 4 * 1024 * 1024;

    /// gzip at the default level.
    #[must_use]
    pub const fn gzip() -> Self {
        Compression::Gzip {
            level: Level(Self::DEFAULT_GZIP_LEVEL),
        }
    }

    /// zstd at the default level.
    #[must_use]
    pub const fn zstd() -> Self {
        Compression::Zstd {
            level: Level(Self::DEFAULT_ZSTD_LEVEL),
        }
    }

    /// gzip at `level` (0 to 9), or the error saying the range.
    pub fn gzip_level(level: i32) -> Result<Self, LevelError> {
        let range = Self::GZIP_LEVELS;
        if range.contains(&level) {
            Ok(Compression::Gzip {
                level: Level(level),
            })
        } else {
            Err(LevelError {
                kind: "gzip",
                level,
                min: *range.start(),
                max: *range.end(),
            })
        }
    }

    /// zstd at `level` (zstd's range: 1 to 22, negative for its fast levels, 0 for its default
    /// level 3), or the error saying the range.
    pub fn zstd_level(level: i32) -> Result<Self, LevelError> {
        let range = zstd::compression_level_range();
        if range.contains(&level) {
            // zstd itself reads 0 as its default: one level, one name.
            let level = if level == 0 {
                Self::DEFAULT_ZSTD_LEVEL
            } else {
                level
            };
            Ok(Compression::Zstd {
                level: Level(level),
            })
        } else {
            Err(LevelError {
                kind: "zstd",
                level,
                min: *range.start(),
                max: *range.end(),
            })
        }
    }

    /// The block size used for this compression (0 for `None`).
    #[must_use]
    pub const fn default_block_size(self) -> usize {
        match self {
            Compression::None => 0,
            Compression::Gzip { .. } => Self::GZIP_BLOCK_SIZE,
            Compression::Zstd { .. } => Self::ZSTD_BLOCK_SIZE,
        }
    }
}

/// One finished block, as sent back by a worker.
struct Done {
    /// The input buffer, handed back for reuse.
    input: Vec<u8>,
    /// The compressed bytes.
    output: Vec<u8>,
    /// CRC-32 of the block's input (gzip only).
    crc: Option<crc32fast::Hasher>,
}

/// What a worker sends back for one block.
type JobResult = io::Result<Done>;

/// A `Write` that compresses what it receives in fixed-size blocks on a rayon pool and writes
/// the compressed stream, in order, to `inner`. See the module documentation.
///
/// Best driven from a thread outside `pool`. Driven from one of the pool's own threads it still
/// works (while waiting it runs queued pool work itself, so even a 1-thread pool cannot
/// deadlock), but it then competes with the workers for that thread.
///
/// Dropping it without [`finish`](Self::finish) abandons the stream: blocks already dispatched
/// finish on the pool and are discarded; nothing blocks.
pub struct ParallelEncoder<W: Write> {
    inner: W,
    compression: Compression,
    pool: Arc<ThreadPool>,
    block_size: usize,
    max_in_flight: usize,
    /// The block being filled.
    buf: Vec<u8>,
    /// Dispatched blocks, oldest first, not yet written.
    pending: VecDeque<mpsc::Receiver<JobResult>>,
    /// Recycled buffers (input and output), at most `max_in_flight` of each in total.
    spare_in: Vec<Vec<u8>>,
    spare_out: Vec<Vec<u8>>,
    /// CRC-32 of all the blocks written so far (gzip).
    crc: crc32fast::Hasher,
    blocks_dispatched: u64,
    header_written: bool,
    bytes_in: u64,
    bytes_out: u64,
    /// Set after any error: the stream is broken and every later call fails.
    failed: bool,
    /// Highest number of blocks alive at once (tests check it against `max_in_flight`).
    peak_in_flight: usize,
    /// Test hook: make the worker of this block number panic.
    #[cfg(test)]
    panic_at_block: Option<u64>,
}

impl<W: Write> fmt::Debug for ParallelEncoder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParallelEncoder")
            .field("compression", &self.compression)
            .field("block_size", &self.block_size)
            .field("max_in_flight", &self.max_in_flight)
            .field("pending", &self.pending.len())
            .field("bytes_in", &self.bytes_in)
            .field("bytes_out", &self.bytes_out)
            .finish_non_exhaustive()
    }
}

impl<W: Write> ParallelEncoder<W> {
    /// An encoder writing to `inner`, compressing on `pool`, with the default block size of
    /// `compression` and `max_in_flight` = 2 × the pool's threads + 2.
    pub fn new(inner: W, compression: Compression, pool: Arc<ThreadPool>) -> Self {
        let max_in_flight = 2 * pool.current_num_threads().max(1) + 2;
        ParallelEncoder {
            inner,
            compression,
            pool,
            block_size: compression.default_block_size(),
            max_in_flight,
            buf: Vec::new(),
            pending: VecDeque::new(),
            spare_in: Vec::new(),
            spare_out: Vec::new(),
            crc: crc32fast::Hasher::new(),
            blocks_dispatched: 0,
            header_written: false,
            bytes_in: 0,
            bytes_out: 0,
            failed: false,
            peak_in_flight: 0,
            #[cfg(test)]
            panic_at_block: None,
        }
    }

    /// Changes the block size (the output bytes depend on it). Call before the first write.
    ///
    /// # Panics
    /// If `block_size` is below [`MIN_BLOCK_SIZE`] or data was already written.
    #[cfg(test)]
    #[must_use]
    pub fn with_block_size(mut self, block_size: usize) -> Self {
        assert!(
            block_size >= MIN_BLOCK_SIZE,
            "block size below {MIN_BLOCK_SIZE}"
        );
        assert!(
            self.bytes_in == 0,
            "block size changed after data was written"
        );
        if self.compression != Compression::None {
            self.block_size = block_size;
        }
        self
    }

    /// Changes how many blocks may be alive at once (the output bytes do not depend on it).
    ///
    /// # Panics
    /// If `max_in_flight` is below 2 (one block being filled, one being compressed).
    #[cfg(test)]
    #[must_use]
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        assert!(max_in_flight >= 2, "max_in_flight must be at least 2");
        self.max_in_flight = max_in_flight;
        self
    }

    /// Bytes of input consumed and of output written to `inner` so far.
    #[cfg(test)]
    pub fn counters(&self) -> (u64, u64) {
        (self.bytes_in, self.bytes_out)
    }

    /// How many blocks may be alive at once.
    #[cfg(test)]
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The most blocks that were alive at once so far (never above `max_in_flight`).
    #[cfg(test)]
    pub fn peak_in_flight(&self) -> usize {
        self.peak_in_flight
    }

    /// Flushes the last block, writes the trailer, flushes and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.check()?;
        let result = self.finish_inner();
        if result.is_err() {
            self.failed = true;
        }
        result?;
        Ok(self.inner)
    }

    fn finish_inner(&mut self) -> io::Result<()> {
        match self.compression {
            Compression::None => {}
            Compression::Gzip { .. } => {
                // Always a last block, even an empty one: it carries BFINAL.
                self.dispatch(true)?;
                self.drain_all()?;
                self.write_header()?;
                let mut trailer = [0u8; 8];
                trailer[..4].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
                // ISIZE is the input size modulo 2^32.
                #[allow(clippy::cast_possible_truncation)]
                trailer[4..].copy_from_slice(&(self.bytes_in as u32).to_le_bytes());
                self.write_out(&trailer)?;
            }
            Compression::Zstd { .. } => {
                // An empty input still gets one (empty) frame, so the file is valid zstd.
                if !self.buf.is_empty() || self.blocks_dispatched == 0 {
                    self.dispatch(true)?;
                }
                self.drain_all()?;
            }
        }
        self.inner.flush()
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            Err(io::Error::other(
                "compression stream is broken by an earlier error",
            ))
        } else {
            Ok(())
        }
    }

    fn write_out(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.bytes_out += bytes.len() as u64;
        Ok(())
    }

    fn write_header(&mut self) -> io::Result<()> {
        if self.header_written {
            return Ok(());
        }
        self.header_written = true;
        if let Compression::Gzip { level } = self.compression {
            // XFL as gzip sets it: 2 = slowest, 4 = fastest.
            let xfl = match level.get() {
                9 => 2,
                1 => 4,
                _ => 0,
            };
            // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL OS=3 (Unix), whatever the build platform.
            let header = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3];
            self.write_out(&header)?;
        }
        Ok(())
    }

    /// Sends the block being filled to the pool, after making room in the pipeline.
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        // Room for the dispatched block plus the next one to fill.
        while self.pending.len() + 2 > self.max_in_flight {
            self.write_head(true)?;
        }
        let input = std::mem::replace(&mut self.buf, self.spare_in.pop().unwrap_or_default());
        let output = self.spare_out.pop().unwrap_or_default();
        let compression = self.compression;
        #[cfg(test)]
        let must_panic = self.panic_at_block == Some(self.blocks_dispatched);
        let (tx, rx) = mpsc::sync_channel(1);
        self.pool.spawn(move || {
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                #[cfg(test)]
                assert!(!must_panic, "test panic in a compression worker");
                compress_block(compression, input, output, last)
            }));
            let result = result.unwrap_or_else(|payload| Err(panic_error(&*payload)));
            // The encoder may have been dropped: then nobody wants the block.
            let _ = tx.send(result);
        });
        self.blocks_dispatched += 1;
        self.pending.push_back(rx);
        // +1: the (new, empty) block being filled.
        self.peak_in_flight = self.peak_in_flight.max(self.pending.len() + 1);
        // Write whatever is done at the head, without waiting.
        while !self.pending.is_empty() {
            if !self.write_head(false)? {
                break;
            }
        }
        Ok(())
    }

    /// Writes the oldest pending block to `inner` if it is done (or, when `wait`, once it is).
    /// Returns whether a block was written.
    fn write_head(&mut self, wait: bool) -> io::Result<bool> {
        let Some(rx) = self.pending.front() else {
            return Ok(false);
        };
        let received = if wait {
            wait_for(&self.pool, rx)
        } else {
            match rx.try_recv() {
                Ok(result) => Some(result),
                Err(mpsc::TryRecvError::Empty) => return Ok(false),
                Err(mpsc::TryRecvError::Disconnected) => None,
            }
        };
        self.pending.pop_front();
        let done =
            received.unwrap_or_else(|| Err(io::Error::other("compression worker vanished")))?;
        self.write_header()?;
        self.write_out(&done.output)?;
        if let Some(crc) = &done.crc {
            self.crc.combine(crc);
        }
        let Done {
            mut input,
            mut output,
            ..
        } = done;
        input.clear();
        output.clear();
        self.spare_in.push(input);
        self.spare_out.push(output);
        Ok(true)
    }

    fn drain_all(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            self.write_head(true)?;
        }
        Ok(())
    }

    fn write_impl(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.compression == Compression::None {
            self.inner.write_all(data)?;
            self.bytes_in += data.len() as u64;
            self.bytes_out += data.len() as u64;
            return Ok(());
        }
        while !data.is_empty() {
            // A full block is dispatched only when more data arrives, so the last block is
            // always the one `finish` sends, whatever the write() boundaries.
            if self.buf.len() == self.block_size {
                self.dispatch(false)?;
            }
            if self.buf.capacity() < self.block_size {
                self.buf.reserve_exact(self.block_size - self.buf.len());
            }
            let n = (self.block_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            self.bytes_in += n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

impl<W: Write> Write for ParallelEncoder<W> {
    /// Consumes all of `buf` (blocking while the pipeline is full).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        match self.write_impl(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Writes every dispatched block and flushes `inner`. The block being filled is kept: cutting
    /// it here would make the output depend on when flush was called.
    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        let result = self.drain_all().and_then(|()| self.inner.flush());
        if result.is_err() {
            self.failed = true;
        }
        result
    }
}

/// Waits for a worker's result. On one of the pool's own threads, compresses the blocks it
/// queued itself while waiting instead of blocking (the block we wait for might be queued
/// behind us; with one thread it always is). Only its own: work stolen from elsewhere could
/// be another archive's whole writer, which would hold this one up until it ends.
/// `None` if the worker went away without answering.
fn wait_for(pool: &ThreadPool, rx: &mpsc::Receiver<JobResult>) -> Option<JobResult> {
    if pool.current_thread_index().is_none() {
        return rx.recv().ok();
    }
    loop {
        match rx.try_recv() {
            Ok(result) => return Some(result),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if pool.yield_local() != Some(rayon::Yield::Executed) {
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok(result) => return Some(result),
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

fn panic_error(payload: &(dyn Any + Send)) -> io::Error {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    io::Error::other(format!("compression worker panicked: {message}"))
}

thread_local! {
    /// Per-thread zstd context, reused across blocks, with its level. Unlike deflate's, its
    /// output does not depend on what it compressed before (tested).
    static ZSTD: RefCell<Option<(Level, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    /// Per-thread libdeflate compressor, with its level. It keeps no state from one block to
    /// the next, only its allocations (tested).
    static DEFLATE: RefCell<Option<(Level, libdeflater::Compressor)>> = const { RefCell::new(None) };
}

fn compress_block(
    compression: Compression,
    input: Vec<u8>,
    mut output: Vec<u8>,
    last: bool,
) -> JobResult {
    output.clear();
    let crc = match compression {
        Compression::None => {
            output.extend_from_slice(&input);
            None
        }
        Compression::Gzip { level } => {
            deflate_block(level, &input, &mut output, last)?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&input);
            Some(crc)
        }
        Compression::Zstd { level } => {
            // Taken out of the thread-local while in use: a panic drops it instead of leaving
            // a half-used context behind.
            let cached = ZSTD.with(|cell| cell.borrow_mut().take());
            let mut compressor = match cached {
                Some((cached_level, compressor)) if cached_level == level => compressor,
                _ => {
                    let mut compressor = zstd::bulk::Compressor::new(level.get())?;
                    compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                    compressor.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
                    compressor
                }
            };
            output.reserve(zstd::compress_bound(input.len()));
            compressor.compress_to_buffer(&input, &mut output)?;
            ZSTD.with(|cell| *cell.borrow_mut() = Some((level, compressor)));
            None
        }
    };
    Ok(Done { input, output, crc })
}

/// Raw deflate of one block, continued unless `last` (then it ends the stream).
fn deflate_block(level: Level, input: &[u8], output: &mut Vec<u8>, last: bool) -> io::Result<()> {
    if input.is_empty() {
        // Only the last block can be empty: a final fixed-Huffman block holding just its
        // end-of-block code, as zlib writes it.
        output.extend_from_slice(&[3, 0]);
        return Ok(());
    }
    let cached = DEFLATE.with(|cell| cell.borrow_mut().take());
    let mut compressor = match cached {
        Some((cached_level, compressor)) if cached_level == level => compressor,
        _ => {
            let lvl = libdeflater::CompressionLvl::new(level.get()).map_err(|e| {
                io::Error::other(format!("libdeflate level {}: {e:?}", level.get()))
            })?;
            libdeflater::Compressor::new(lvl)
        }
    };
    // The bound, plus room for the empty stored block that continues the stream.
    output.resize(compressor.deflate_compress_bound(input.len()) + 8, 0);
    let written = compressor
        .deflate_compress(input, output)
        .map_err(|e| io::Error::other(format!("libdeflate: {e:?}")))?;
    DEFLATE.with(|cell| *cell.borrow_mut() = Some((level, compressor)));
    output.truncate(written);
    if !last && bfinal::unfinish(output).is_none() {
        return Err(io::Error::other(
            "libdeflate wrote a deflate stream that cannot be continued",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const B: usize = MIN_BLOCK_SIZE;

    const fn gz(level: i32) -> Compression {
        Compression::Gzip {
            level: Level(level),
        }
    }

    const fn zs(level: i32) -> Compression {
        Compression::Zstd {
            level: Level(level),
        }
    }

    fn pool(threads: usize) -> Arc<ThreadPool> {
        Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap(),
        )
    }

    /// xorshift64*: deterministic pseudo-random numbers without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        #[allow(clippy::cast_possible_truncation)]
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_data(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed | 1);
        (0..len).map(|_| rng.next().to_le_bytes()[3]).collect()
    }

    /// Text-like data: words from a small vocabulary, some numbers.
    fn compressible_data(len: usize, seed: u64) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "conda",
            "package",
            "lib",
            "site-packages",
            "python3.12",
            "/opt/env/",
            "__init__.py",
            "def ",
            "return ",
            "import numpy as np\n",
            "0x",
            "\n",
            "    ",
            "{",
            "}",
            "json",
        ];
        let mut rng = Rng(seed | 1);
        let mut out = Vec::with_capacity(len + 32);
        while out.len() < len {
            out.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
            if rng.below(8) == 0 {
                out.extend_from_slice(rng.below(100_000).to_string().as_bytes());
            }
        }
        out.truncate(len);
        out
    }

    /// Feeds `data` through `write()` calls of random sizes in `1..=max_chunk`.
    fn encode_chunked(
        data: &[u8],
        compression: Compression,
        pool: &Arc<ThreadPool>,
        block_size: usize,
        max_chunk: usize,
        seed: u64,
    ) -> Vec<u8> {
        let mut enc = ParallelEncoder::new(Vec::new(), compression, Arc::clone(pool))
            .with_block_size(block_size);
        let mut rng = Rng(seed | 1);
        let mut rest = data;
        while !rest.is_empty() {
            let n = (1 + rng.below(max_chunk)).min(rest.len());
            enc.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
            assert!(enc.peak_in_flight() <= enc.max_in_flight());
        }
        let (bytes_in, bytes_out) = enc.counters();
        assert_eq!(bytes_in, data.len() as u64);
        let out = enc.finish().unwrap();
        assert!(bytes_out <= out.len() as u64);
        out
    }

    fn decode(compression: Compression, encoded: &[u8]) -> Vec<u8> {
        match compression {
            Compression::None => encoded.to_vec(),
            Compression::Gzip { .. } => {
                // GzDecoder reads one member only: the whole file must be one member.
                let mut cursor = io::Cursor::new(encoded);
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&mut cursor)
                    .read_to_end(&mut out)
                    .unwrap();
                assert_eq!(cursor.position(), encoded.len() as u64, "trailing bytes");
                out
            }
            Compression::Zstd { .. } => zstd::decode_all(encoded).unwrap(),
        }
    }

    fn sizes(block: usize) -> [usize; 6] {
        [0, 1, block - 1, block, block + 1, 10 * block + 7]
    }

    const ALL: [Compression; 5] = [Compression::None, gz(4), gz(9), zs(3), zs(-1)];

    #[test]
    fn roundtrip_all_sizes_and_kinds() {
        let pool = pool(2);
        for compression in ALL {
            for (i, len) in sizes(B).into_iter().enumerate() {
                for data in [random_data(len, i as u64), compressible_data(len, i as u64)] {
                    let encoded = encode_chunked(&data, compression, &pool, B, 3000, 7);
                    assert_eq!(
                        decode(compression, &encoded),
                        data,
                        "{compression:?} len {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn roundtrip_default_block_sizes() {
        let pool = pool(2);
        for compression in [Compression::gzip(), Compression::zstd()] {
            let len = 2 * compression.default_block_size() + 12345;
            let data = compressible_data(len, 3);
            let mut enc = ParallelEncoder::new(Vec::new(), compression, Arc::clone(&pool));
            enc.write_all(&data).unwrap();
            let encoded = enc.finish().unwrap();
            assert!(encoded.len() < len / 2);
            assert_eq!(decode(compression, &encoded), data);
        }
    }

    #[test]
    fn gzip_header_and_trailer_are_fixed() {
        let data = compressible_data(3 * B + 5, 1);
        let out = encode_chunked(&data, Compression::gzip(), &pool(1), B, 100_000, 1);
        assert_eq!(&out[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
        let n = out.len();
        assert_eq!(&out[n - 8..n - 4], &crc32fast::hash(&data).to_le_bytes());
        assert_eq!(
            &out[n - 4..],
            &u32::try_from(data.len()).unwrap().to_le_bytes()
        );
        // Empty input: header, one empty final block, crc 0, size 0.
        let empty = encode_chunked(&[], gz(1), &pool(1), B, 1, 1);
        assert_eq!(
            empty,
            [
                0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn gzip_blocks_are_compressed_independently() {
        // Each block is libdeflate's compression of that block alone; every block but the
        // last is continued by an empty stored block. Nothing else is in the stream.
        let data = compressible_data(2 * B + 100, 5);
        let out = encode_chunked(&data, Compression::gzip(), &pool(2), B, 7777, 1);
        let mut compressor =
            libdeflater::Compressor::new(libdeflater::CompressionLvl::new(4).unwrap());
        let mut deflate = |block: &[u8], last: bool| {
            let mut out = vec![0; compressor.deflate_compress_bound(block.len())];
            let n = compressor.deflate_compress(block, &mut out).unwrap();
            out.truncate(n);
            if !last {
                bfinal::unfinish(&mut out).unwrap();
                assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
            }
            out
        };
        let mut want = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        want.extend(deflate(&data[..B], false));
        want.extend(deflate(&data[B..2 * B], false));
        want.extend(deflate(&data[2 * B..], true));
        want.extend(crc32fast::hash(&data).to_le_bytes());
        want.extend(u32::try_from(data.len()).unwrap().to_le_bytes());
        assert!(out == want);
        assert_eq!(decode(Compression::gzip(), &out), data);
    }

    /// Every gzip level gives the same bytes whatever the number of threads, and gzip reads
    /// them.
    #[test]
    fn gzip_levels_do_not_depend_on_threads() {
        let mut data = compressible_data(5 * B + 77, 7);
        data.extend(random_data(B + 3, 8));
        data.extend(compressible_data(2 * B, 9));
        let pools = [pool(1), pool(2), pool(4)];
        for level in Compression::GZIP_LEVELS {
            let compression = Compression::gzip_level(level).unwrap();
            let reference = encode_chunked(&data, compression, &pools[0], B, 100_000, 1);
            for pool in &pools[1..] {
                let out = encode_chunked(&data, compression, pool, B, 30_000, 2);
                assert!(
                    out == reference,
                    "level {level}, {} threads",
                    pool.current_num_threads()
                );
            }
            let (ok, decoded) = run_cli("gzip", &["-dc"], &reference);
            assert!(ok && decoded == data, "gzip -dc, level {level}");
        }
    }

    #[test]
    fn deterministic_across_threads_and_chunking() {
        let mut data = compressible_data(9 * B + 333, 11);
        data.extend(random_data(2 * B, 12));
        data.extend(compressible_data(B / 2, 13));
        for compression in ALL {
            let reference = encode_chunked(&data, compression, &pool(1), B, data.len(), 1);
            for threads in [1, 2, 4] {
                let pool = pool(threads);
                for (max_chunk, seed) in [(1, 2), (17, 3), (5000, 4), (3 * B, 5)] {
                    // Byte-at-a-time only on a prefix: it is slow in debug builds.
                    let input = if max_chunk == 1 {
                        &data[..B + 10]
                    } else {
                        &data
                    };
                    let out = encode_chunked(input, compression, &pool, B, max_chunk, seed);
                    if max_chunk == 1 {
                        let whole = encode_chunked(input, compression, &pool, B, B + 10, 9);
                        assert!(out == whole, "{compression:?} threads {threads} bytewise");
                    } else {
                        assert!(
                            out == reference,
                            "{compression:?} threads {threads} chunk {max_chunk}"
                        );
                    }
                }
                // The pipeline depth does not change the bytes either.
                let mut enc = ParallelEncoder::new(Vec::new(), compression, Arc::clone(&pool))
                    .with_block_size(B)
                    .with_max_in_flight(2);
                enc.write_all(&data).unwrap();
                assert!(enc.peak_in_flight() <= 2);
                assert!(
                    enc.finish().unwrap() == reference,
                    "{compression:?} max_in_flight 2"
                );
            }
        }
    }

    /// The workers reuse per-thread state: a block must compress to the same bytes whatever
    /// the thread compressed before (zlib-rs's `Compress::reset` failed this).
    #[test]
    fn block_output_does_not_depend_on_previous_blocks() {
        let mut data = compressible_data(5 * B + 333, 11);
        data.extend(random_data(2 * B, 12));
        data.extend(compressible_data(B / 2, 13));
        let blocks: Vec<&[u8]> = data.chunks(B).collect();
        let n = blocks.len();
        for compression in [gz(1), gz(4), gz(6), zs(1), zs(3), zs(9)] {
            let run = |i: usize| {
                compress_block(compression, blocks[i].to_vec(), Vec::new(), i == n - 1)
                    .unwrap()
                    .output
            };
            // Each on a new thread, so with new thread-local state.
            let fresh: Vec<Vec<u8>> = (0..n)
                .map(|i| std::thread::scope(|s| s.spawn(|| run(i)).join().unwrap()))
                .collect();
            std::thread::scope(|s| {
                s.spawn(|| {
                    for j in 0..n {
                        for (i, want) in fresh.iter().enumerate() {
                            run(j);
                            assert!(run(i) == *want, "{compression:?}: block {i} after {j}");
                        }
                    }
                });
            });
        }
    }

    #[test]
    fn flush_does_not_change_output() {
        let data = compressible_data(5 * B + 99, 21);
        let pool = pool(2);
        for compression in ALL {
            let reference = encode_chunked(&data, compression, &pool, B, 1 << 20, 1);
            let mut enc =
                ParallelEncoder::new(Vec::new(), compression, Arc::clone(&pool)).with_block_size(B);
            for chunk in data.chunks(10_000) {
                enc.write_all(chunk).unwrap();
                enc.flush().unwrap();
            }
            assert!(enc.finish().unwrap() == reference, "{compression:?}");
        }
    }

    /// Runs `program args` with `input` on stdin.
    fn run_cli(program: &str, args: &[&str], input: &[u8]) -> (bool, Vec<u8>) {
        let mut child = match Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(child) => child,
            // The reference decoders are part of the test: a missing one fails, never skips.
            Err(e) => panic!("`{program}` is needed by this test (apt-get install {program}): {e}"),
        };
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        (output.status.success(), output.stdout)
    }

    #[test]
    fn gzip_cli_accepts_output() {
        let pool = pool(2);
        for len in [0, 1, 10 * B + 7] {
            let mut data = compressible_data(len, 31);
            data.extend(random_data(len / 3, 32));
            for level in [1, 4, 9] {
                let encoded = encode_chunked(&data, gz(level), &pool, B, 50_000, 3);
                let (ok, _) = run_cli("gzip", &["-t"], &encoded);
                assert!(ok, "gzip -t failed, level {level}, len {len}");
                let (ok, decoded) = run_cli("gzip", &["-dc"], &encoded);
                assert!(ok);
                assert!(
                    decoded == data,
                    "gzip -dc mismatch, level {level}, len {len}"
                );
            }
        }
    }

    #[test]
    fn zstd_cli_accepts_output() {
        let pool = pool(2);
        for len in [0, 1, 10 * B + 7] {
            let mut data = compressible_data(len, 41);
            data.extend(random_data(len / 3, 42));
            let encoded = encode_chunked(&data, Compression::zstd(), &pool, B, 50_000, 3);
            let (ok, _) = run_cli("zstd", &["-t", "-q"], &encoded);
            assert!(ok, "zstd -t failed, len {len}");
            let (ok, decoded) = run_cli("zstd", &["-dc", "-q"], &encoded);
            assert!(ok);
            assert!(decoded == data, "zstd -dc mismatch, len {len}");
        }
    }

    /// Accepts `limit` bytes, then fails every write.
    #[derive(Debug)]
    struct FailAfter {
        limit: usize,
        written: usize,
    }
    impl Write for FailAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.written >= self.limit {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            let n = buf.len().min(self.limit - self.written);
            self.written += n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn inner_error_is_reported() {
        let pool = pool(2);
        for compression in ALL {
            for limit in [0, 5, 3 * B] {
                let inner = FailAfter { limit, written: 0 };
                let mut enc =
                    ParallelEncoder::new(inner, compression, Arc::clone(&pool)).with_block_size(B);
                let data = random_data(20 * B, 51);
                let mut error = None;
                for chunk in data.chunks(10_000) {
                    if let Err(e) = enc.write_all(chunk) {
                        error = Some(e);
                        break;
                    }
                }
                let error = match error {
                    Some(e) => {
                        // Broken for good: later calls fail too, finish included.
                        assert!(enc.write_all(b"more").is_err());
                        assert!(enc.flush().is_err());
                        assert!(enc.finish().is_err());
                        e
                    }
                    None => enc.finish().unwrap_err(),
                };
                assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{compression:?}");
            }
        }
    }

    #[test]
    fn worker_panic_becomes_error() {
        let pool = pool(2);
        for compression in [Compression::gzip(), Compression::zstd()] {
            for at in [0, 3] {
                let mut enc = ParallelEncoder::new(Vec::new(), compression, Arc::clone(&pool))
                    .with_block_size(B);
                enc.panic_at_block = Some(at);
                let data = compressible_data(8 * B, 61);
                let result = enc.write_all(&data).and_then(|()| enc.finish().map(drop));
                let error = result.unwrap_err();
                assert!(error.to_string().contains("panicked"), "{error}");
            }
        }
        // The pool survives and works afterwards.
        let data = compressible_data(3 * B, 62);
        let out = encode_chunked(&data, Compression::gzip(), &pool, B, 9999, 1);
        assert_eq!(decode(Compression::gzip(), &out), data);
    }

    #[test]
    fn drop_without_finish_does_not_hang() {
        let pool = pool(2);
        for compression in ALL {
            let mut enc =
                ParallelEncoder::new(Vec::new(), compression, Arc::clone(&pool)).with_block_size(B);
            enc.write_all(&random_data(7 * B + 3, 71)).unwrap();
            drop(enc);
        }
        // The abandoned blocks still finish on the pool, which stays usable.
        let data = random_data(2 * B, 72);
        let out = encode_chunked(&data, Compression::zstd(), &pool, B, 9999, 1);
        assert_eq!(decode(Compression::zstd(), &out), data);
    }

    /// A writer recording what it gets, shared with the test.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_blocks_when_pipeline_is_full() {
        // One worker thread, held busy: no block can complete, so write() must stop accepting
        // input once max_in_flight blocks are alive.
        let pool = pool(1);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let started = Arc::new(AtomicBool::new(false));
        let started2 = Arc::clone(&started);
        pool.spawn(move || {
            started2.store(true, Ordering::SeqCst);
            let _ = release_rx.recv();
        });
        while !started.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let max_in_flight = 4;
        let data = compressible_data(20 * B, 81);
        let blocks_accepted = Arc::new(AtomicUsize::new(0));
        let sink = Shared::default();
        let writer = {
            let pool = Arc::clone(&pool);
            let data = data.clone();
            let blocks_accepted = Arc::clone(&blocks_accepted);
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut enc = ParallelEncoder::new(sink, Compression::gzip(), pool)
                    .with_block_size(B)
                    .with_max_in_flight(max_in_flight);
                for chunk in data.chunks(B) {
                    enc.write_all(chunk).unwrap();
                    blocks_accepted.fetch_add(1, Ordering::SeqCst);
                    assert!(enc.peak_in_flight() <= max_in_flight);
                }
                enc.finish().unwrap();
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        // Blocks 0..=2 dispatched (3 pending) and block 3 being filled = 4 alive; the write of
        // block 4 waits for block 0 to be written.
        assert_eq!(blocks_accepted.load(Ordering::SeqCst), max_in_flight);
        assert!(sink.0.lock().unwrap().is_empty());
        release_tx.send(()).unwrap();
        writer.join().unwrap();
        let out = sink.0.lock().unwrap().clone();
        assert_eq!(decode(Compression::gzip(), &out), data);
    }

    #[test]
    fn usable_from_inside_the_pool() {
        // Driving the encoder from the pool's only thread must not deadlock.
        let pool = pool(1);
        let data = compressible_data(12 * B + 1, 91);
        for compression in [Compression::gzip(), Compression::zstd()] {
            let inner_pool = Arc::clone(&pool);
            let out = pool.install(|| {
                let mut enc =
                    ParallelEncoder::new(Vec::new(), compression, inner_pool).with_block_size(B);
                enc.write_all(&data).unwrap();
                enc.finish().unwrap()
            });
            assert_eq!(decode(compression, &out), data);
        }
    }

    #[test]
    fn out_of_range_levels_are_errors() {
        for level in [-1, 10, 42] {
            let error = Compression::gzip_level(level).unwrap_err();
            assert_eq!(
                (error.kind, error.level, error.min, error.max),
                ("gzip", level, 0, 9)
            );
            assert_eq!(
                error.to_string(),
                format!("compression level {level} is out of range: gzip takes 0 to 9")
            );
        }
        let error = Compression::zstd_level(23).unwrap_err();
        assert_eq!((error.kind, error.max), ("zstd", 22));
        assert_eq!(Compression::gzip_level(9), Ok(gz(9)));
        assert_eq!(Compression::zstd_level(22), Ok(zs(22)));
        assert_eq!(Compression::zstd_level(-5), Ok(zs(-5)));
        // zstd reads 0 as its default level.
        assert_eq!(Compression::zstd_level(0), Ok(Compression::zstd()));
        let data = compressible_data(B + 1, 1);
        let out = encode_chunked(&data, gz(0), &pool(1), B, B, 1);
        assert_eq!(decode(Compression::gzip(), &out), data);
    }
}
