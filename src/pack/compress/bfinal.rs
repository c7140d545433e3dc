//! Finding the last block of a raw deflate stream, so that the stream can be continued.
//!
//! libdeflate compresses whole buffers and always marks the last block it writes as final
//! (BFINAL). To join its outputs into one deflate stream, every output but the last has its
//! final block turned into an ordinary one and is followed by an empty stored block (what
//! zlib's sync flush writes), which ends it on a byte boundary. The final block's header is
//! found by walking the stream: block headers, Huffman tables and symbols (without producing
//! any output). That costs about a tenth of the compression itself.

/// Bit positions in a raw deflate stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalBlock {
    /// Of the final block's header (its BFINAL bit).
    pub header: usize,
    /// Just past the final block's end-of-block code.
    pub end: usize,
}

/// Locates the final block of the raw deflate stream `data`. `None` if `data` is not a
/// complete, valid deflate stream.
#[must_use]
pub fn find(data: &[u8]) -> Option<FinalBlock> {
    let mut bits = Bits::new(data);
    loop {
        let header = bits.consumed();
        let head = bits.take(3)?;
        match head >> 1 {
            0 => {
                bits.align();
                let len = bits.take(16)?;
                let nlen = bits.take(16)?;
                if len != !nlen & 0xffff {
                    return None;
                }
                bits.seek_byte(bits.consumed() / 8 + len as usize)?;
            }
            1 => walk_codes(&mut bits, &fixed_tables().0, &fixed_tables().1)?,
            2 => {
                let (lit, dist) = dynamic_tables(&mut bits)?;
                walk_codes(&mut bits, &lit, &dist)?;
            }
            _ => return None,
        }
        if head & 1 == 1 {
            return Some(FinalBlock {
                header,
                end: bits.consumed(),
            });
        }
    }
}

/// Turns the raw deflate stream in `out` into one that does not end: its final block becomes
/// an ordinary block and an empty stored block follows (byte-aligned, as zlib's sync flush).
/// `None` (and `out` unchanged) if `out` is not a valid deflate stream.
#[must_use]
pub fn unfinish(out: &mut Vec<u8>) -> Option<()> {
    let last = find(out)?;
    out[last.header / 8] &= !(1u8 << (last.header % 8));
    // The empty stored block's 3 header bits (all zero) start at `end`; the bits after them
    // up to the byte boundary are zero padding, then LEN = 0 and NLEN = 0xffff.
    out.truncate(last.end.div_ceil(8));
    out.resize((last.end + 3).div_ceil(8), 0);
    let tail = last.end % 8;
    if tail != 0 {
        // Padding bits after the end-of-block code are not guaranteed zero: clear them.
        out[last.end / 8] &= (1u8 << tail) - 1;
    }
    out.extend_from_slice(&[0, 0, 0xff, 0xff]);
    Some(())
}

/// Little-endian bit reader.
struct Bits<'a> {
    data: &'a [u8],
    /// Next byte to load into `buf`.
    pos: usize,
    buf: u64,
    /// Valid bits in `buf`.
    count: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits {
            data,
            pos: 0,
            buf: 0,
            count: 0,
        }
    }

    /// Loads bits: afterwards at least 56 are buffered, unless the input ends first.
    #[inline]
    fn refill(&mut self) {
        if let Some(word) = self.data.get(self.pos..self.pos + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            self.buf |= word << self.count;
            self.pos += ((63 - self.count) >> 3) as usize;
            // 56 to 63 bits buffered now (whole bytes were loaded up to 63).
            self.count |= 0b11_1000;
        } else {
            while self.count <= 56 && self.pos < self.data.len() {
                self.buf |= u64::from(self.data[self.pos]) << self.count;
                self.pos += 1;
                self.count += 8;
            }
        }
    }

    /// The next `n` (at most 32) buffered bits, without consuming them.
    #[inline]
    #[allow(clippy::cast_possible_truncation)]
    fn peek(&self, n: u32) -> u32 {
        (self.buf & ((1u64 << n) - 1)) as u32
    }

    /// Consumes `n` buffered bits; `None` past the end of the input.
    #[inline]
    fn skip(&mut self, n: u32) -> Option<()> {
        if n > self.count {
            return None;
        }
        self.buf >>= n;
        self.count -= n;
        Some(())
    }

    /// Reads `n` (at most 32) bits.
    fn take(&mut self, n: u32) -> Option<u32> {
        if self.count < n {
            self.refill();
        }
        let bits = self.peek(n);
        self.skip(n)?;
        Some(bits)
    }

    /// Bits consumed so far.
    fn consumed(&self) -> usize {
        self.pos * 8 - self.count as usize
    }

    /// Skips to the next byte boundary.
    fn align(&mut self) {
        self.buf >>= self.count % 8;
        self.count -= self.count % 8;
    }

    /// Continues at byte `pos` (dropping the buffered bits).
    fn seek_byte(&mut self, pos: usize) -> Option<()> {
        if pos > self.data.len() {
            return None;
        }
        self.pos = pos;
        self.buf = 0;
        self.count = 0;
        Some(())
    }
}

/// Bits resolved by a table's first level.
const PRIMARY_BITS: u32 = 10;
/// Marks a first-level entry that points to a second-level table.
const SUBTABLE: u32 = 1 << 31;

/// A two-level Huffman decoding table, indexed by the next bits of the stream. An entry is
/// `symbol << 4 | length`, or `SUBTABLE | offset << 4 | bits` for codes longer than the
/// first level.
struct Table {
    bits: u32,
    entries: Vec<u32>,
}

impl Table {
    /// The canonical code of the code `lengths` (one per symbol, 0 = unused). `None` if the
    /// lengths are over-subscribed.
    fn new(lengths: &[u8]) -> Option<Table> {
        let mut count = [0u32; 16];
        for &len in lengths {
            count[usize::from(len)] += 1;
        }
        count[0] = 0;
        let mut next = [0u32; 16];
        let mut code = 0;
        for len in 1..16 {
            code = (code + count[len - 1]) << 1;
            next[len] = code;
        }
        let max = (1..16u32)
            .rev()
            .find(|&l| count[l as usize] > 0)
            .unwrap_or(1);
        let bits = max.min(PRIMARY_BITS);
        let size = 1usize << bits;
        let mut entries = vec![0u32; size];
        // (bit-reversed code, length, symbol): the stream holds codes most significant bit first.
        let mut codes = Vec::with_capacity(lengths.len());
        for (symbol, &len) in (0u32..).zip(lengths) {
            if len == 0 {
                continue;
            }
            let len = u32::from(len);
            let code = next[len as usize];
            next[len as usize] += 1;
            if code >= 1 << len {
                return None;
            }
            codes.push((code.reverse_bits() >> (32 - len), len, symbol));
        }
        if max > bits {
            let mut need = vec![0u32; size];
            for &(rev, len, _) in &codes {
                if len > bits {
                    let slot = &mut need[rev as usize & (size - 1)];
                    *slot = (*slot).max(len - bits);
                }
            }
            for (prefix, &sub_bits) in need.iter().enumerate() {
                if sub_bits > 0 {
                    let offset = u32::try_from(entries.len()).ok()?;
                    entries[prefix] = SUBTABLE | offset << 4 | sub_bits;
                    entries.resize(entries.len() + (1 << sub_bits), 0);
                }
            }
        }
        for &(rev, len, symbol) in &codes {
            if len <= bits {
                let mut i = rev as usize;
                while i < size {
                    entries[i] = symbol << 4 | len;
                    i += 1 << len;
                }
            } else {
                let link = entries[rev as usize & (size - 1)];
                let offset = ((link & !SUBTABLE) >> 4) as usize;
                let rest = len - bits;
                let mut i = (rev >> bits) as usize;
                while i < 1 << (link & 15) {
                    entries[offset + i] = symbol << 4 | rest;
                    i += 1 << rest;
                }
            }
        }
        Some(Table { bits, entries })
    }

    /// Decodes one symbol. Needs 15 buffered bits (or the end of the input).
    #[inline]
    fn decode(&self, bits: &mut Bits<'_>) -> Option<u32> {
        let mut entry = self.entries[bits.peek(self.bits) as usize];
        if entry & SUBTABLE != 0 {
            bits.skip(self.bits)?;
            let offset = ((entry & !SUBTABLE) >> 4) as usize;
            entry = *self.entries.get(offset + bits.peek(entry & 15) as usize)?;
        }
        let len = entry & 15;
        if len == 0 {
            // A bit pattern no code uses (incomplete code).
            return None;
        }
        bits.skip(len)?;
        Some(entry >> 4)
    }
}

/// Extra bits of the length codes 257..=285 and of the distance codes 0..=29.
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DISTANCE_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
/// The order in which a dynamic block lists the code length code's lengths.
const CODE_LENGTH_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// The tables of fixed-Huffman blocks (built once).
fn fixed_tables() -> &'static (Table, Table) {
    static FIXED: std::sync::OnceLock<(Table, Table)> = std::sync::OnceLock::new();
    FIXED.get_or_init(|| {
        let mut lit = [8u8; 288];
        lit[144..256].fill(9);
        lit[256..280].fill(7);
        (
            Table::new(&lit).expect("fixed code"),
            Table::new(&[5; 30]).expect("fixed code"),
        )
    })
}

/// Reads a dynamic block's code descriptions.
fn dynamic_tables(bits: &mut Bits<'_>) -> Option<(Table, Table)> {
    let literals = bits.take(5)? as usize + 257;
    let distances = bits.take(5)? as usize + 1;
    let code_lengths = bits.take(4)? as usize + 4;
    let mut cl = [0u8; 19];
    for &i in &CODE_LENGTH_ORDER[..code_lengths] {
        cl[i] = u8::try_from(bits.take(3)?).ok()?;
    }
    let cl = Table::new(&cl)?;
    let mut lengths = vec![0u8; literals + distances];
    let mut i = 0;
    while i < lengths.len() {
        bits.refill();
        let (len, repeat) = match cl.decode(bits)? {
            16 => (*lengths.get(i.checked_sub(1)?)?, 3 + bits.take(2)?),
            17 => (0, 3 + bits.take(3)?),
            18 => (0, 11 + bits.take(7)?),
            len => (u8::try_from(len).ok()?, 1),
        };
        let run = lengths.get_mut(i..i + repeat as usize)?;
        run.fill(len);
        i += repeat as usize;
    }
    Some((
        Table::new(&lengths[..literals])?,
        Table::new(&lengths[literals..])?,
    ))
}

/// Walks a Huffman-coded block's symbols up to its end-of-block code.
fn walk_codes(bits: &mut Bits<'_>, lit: &Table, dist: &Table) -> Option<()> {
    loop {
        bits.refill();
        // Three codes of at most 15 bits fit in the 56 refilled bits: literals come in runs.
        let mut symbol = lit.decode(bits)?;
        if symbol < 256 {
            symbol = lit.decode(bits)?;
            if symbol < 256 {
                symbol = lit.decode(bits)?;
                if symbol < 256 {
                    continue;
                }
            }
        }
        if symbol == 256 {
            return Some(());
        }
        let extra = *LENGTH_EXTRA.get(symbol as usize - 257)?;
        bits.refill();
        // Length extra bits (at most 5), distance code (15) and its extra bits (13) fit too.
        bits.skip(u32::from(extra))?;
        let extra = *DISTANCE_EXTRA.get(dist.decode(bits)? as usize)?;
        bits.skip(u32::from(extra))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn libdeflate(data: &[u8], level: i32) -> Vec<u8> {
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
        let mut out = vec![0; c.deflate_compress_bound(data.len())];
        let n = c.deflate_compress(data, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn inflate(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Text-like, binary-like and incompressible inputs, so that libdeflate writes fixed,
    /// dynamic and stored blocks.
    fn inputs() -> Vec<Vec<u8>> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let text: Vec<u8> = (0..300_000)
            .flat_map(|i| {
                format!(
                    "line {} of /opt/env/lib/python3.11 {}\n",
                    i % 977,
                    random() % 50
                )
                .into_bytes()
            })
            .take(700_000)
            .collect();
        let noise: Vec<u8> = (0..200_000).map(|_| random().to_le_bytes()[2]).collect();
        let mut mixed = text[..100_000].to_vec();
        mixed.extend(&noise[..50_000]);
        mixed.extend(vec![0u8; 70_000]);
        mixed.extend(&text[200_000..260_000]);
        vec![
            b"a".to_vec(),
            b"abcabcabcabc".to_vec(),
            (0..=255u8).collect(),
            text,
            noise,
            mixed,
        ]
    }

    #[test]
    fn finds_the_final_block_at_every_level() {
        for data in inputs() {
            for level in 0..=12 {
                let stream = libdeflate(&data, level);
                let last = find(&stream).unwrap();
                // The final block ends in the stream's last byte (then zero padding).
                assert!(last.end <= stream.len() * 8 && last.end > stream.len() * 8 - 8);
                assert!(last.header < last.end);
                assert_eq!((stream[last.header / 8] >> (last.header % 8)) & 1, 1);
            }
        }
    }

    #[test]
    fn continued_streams_join_into_one() {
        let inputs = inputs();
        for level in [0, 1, 4, 6, 9, 12] {
            let mut joined = Vec::new();
            let mut want: Vec<u8> = Vec::new();
            for data in &inputs {
                let mut stream = libdeflate(data, level);
                unfinish(&mut stream).unwrap();
                assert!(stream.ends_with(&[0, 0, 0xff, 0xff]));
                // A continued stream alone decodes to its input (then wants more).
                let mut part = Vec::new();
                let mut decoder = flate2::read::DeflateDecoder::new(&stream[..]);
                let mut buf = [0u8; 4096];
                while part.len() < data.len() {
                    let n = decoder.read(&mut buf).unwrap();
                    assert!(n > 0);
                    part.extend_from_slice(&buf[..n]);
                }
                assert!(part == *data, "level {level}");
                joined.extend(stream);
                want.extend(data);
            }
            joined.extend(libdeflate(b"the end", level));
            want.extend(b"the end");
            assert!(inflate(&joined) == want, "level {level}");
        }
    }

    #[test]
    fn invalid_streams_are_refused_without_panic() {
        let stream = libdeflate(&inputs()[3], 6);
        assert!(find(&[]).is_none());
        // Reserved block type 3.
        assert!(find(&[0b111]).is_none());
        // A stored block whose LEN and NLEN disagree.
        assert!(find(&[1, 5, 0, 0, 0]).is_none());
        for cut in [1, 2, 10, stream.len() / 2, stream.len() - 1] {
            assert!(find(&stream[..cut]).is_none(), "cut at {cut}");
        }
        let mut out = stream[..stream.len() / 2].to_vec();
        let copy = out.clone();
        assert!(unfinish(&mut out).is_none());
        assert!(out == copy, "left unchanged");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            if let Some(last) = find(&data) {
                proptest::prop_assert!(last.header < last.end && last.end <= data.len() * 8);
            }
        }
    }
}
