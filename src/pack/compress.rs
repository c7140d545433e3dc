//! Placeholder until the parallel encoder lands.
use std::io::{self, Write};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip { level: u32 },
    Zstd { level: i32 },
}

pub struct ParallelEncoder<W: Write> {
    inner: Inner<W>,
    counters: (u64, u64),
}

enum Inner<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> ParallelEncoder<W> {
    pub fn new(inner: W, compression: Compression, _pool: Arc<rayon::ThreadPool>) -> Self {
        let inner = match compression {
            Compression::None => Inner::None(inner),
            Compression::Gzip { level } => Inner::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .write(inner, flate2::Compression::new(level)),
            ),
            Compression::Zstd { level } => {
                Inner::Zstd(zstd::Encoder::new(inner, level).expect("zstd"))
            }
        };
        Self {
            inner,
            counters: (0, 0),
        }
    }
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Inner::None(w) => Ok(w),
            Inner::Gzip(g) => g.finish(),
            Inner::Zstd(z) => z.finish(),
        }
    }
    pub fn counters(&self) -> (u64, u64) {
        self.counters
    }
}

impl<W: Write> Write for ParallelEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Inner::None(w) => w.write(buf)?,
            Inner::Gzip(g) => g.write(buf)?,
            Inner::Zstd(z) => z.write(buf)?,
        };
        self.counters.0 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
