//! Gorilla-style compressed samples (Facebook's "Gorilla" paper): time
//! stamps as delta-of-delta, values XORed with the previous one, leading
//! and trailing zeros not stored. Regular 15 s samples take about 1-2 bytes.

use serde::{Deserialize, Serialize};

/// Samples per chunk before it is sealed.
pub const CHUNK_SAMPLES: usize = 120;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Bits {
    bytes: Vec<u8>,
    len: usize,
}

impl Bits {
    /// Appends the low `count` bits of `value`, highest first; a byte's
    /// worth at a time (bit by bit, decoding was most of ingest and replay).
    fn push(&mut self, value: u64, count: u32) {
        let mut left = count;
        while left > 0 {
            if self.len.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let room = 8 - (self.len % 8) as u32;
            let take = room.min(left);
            let part = ((value >> (left - take)) & ((1u64 << take) - 1)) as u8;
            let last = self.bytes.len() - 1;
            self.bytes[last] |= part << (room - take);
            self.len += take as usize;
            left -= take;
        }
    }
}

struct Reader<'a> {
    bits: &'a Bits,
    pos: usize,
}

impl Reader<'_> {
    /// The next `count` bits (at most 64), a byte's worth at a time.
    fn read(&mut self, count: u32) -> Option<u64> {
        if self.pos + count as usize > self.bits.len {
            return None;
        }
        let mut v = 0u64;
        let mut left = count;
        while left > 0 {
            let byte = *self.bits.bytes.get(self.pos / 8)?;
            let avail = 8 - (self.pos % 8) as u32;
            let take = avail.min(left);
            let part = (u64::from(byte) >> (avail - take)) & ((1u64 << take) - 1);
            v = (v << take) | part;
            self.pos += take as usize;
            left -= take;
        }
        Some(v)
    }
}

/// An append-only compressed run of samples in strictly increasing time.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Chunk {
    bits: Bits,
    count: usize,
    first_ts: i64,
    last_ts: i64,
    last_value: u64,
    last_delta: i64,
    leading: u32,
    trailing: u32,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn is_full(&self) -> bool {
        self.count >= CHUNK_SAMPLES
    }

    pub fn first_ts(&self) -> i64 {
        self.first_ts
    }

    pub fn last_ts(&self) -> i64 {
        self.last_ts
    }

    pub fn bytes(&self) -> usize {
        self.bits.bytes.len()
    }

    /// Whether a chunk read from a file holds together: its bit count
    /// fits its bytes and its sample count fits a chunk.
    pub fn is_sound(&self) -> bool {
        self.bits.len <= self.bits.bytes.len() * 8 && self.count <= CHUNK_SAMPLES && (self.count == 0 || self.first_ts <= self.last_ts)
    }

    /// Appends a sample; the caller guarantees `ts > last_ts()`.
    pub fn push(&mut self, ts: i64, value: f64) {
        let v = value.to_bits();
        match self.count {
            0 => {
                self.bits.push(ts as u64, 64);
                self.bits.push(v, 64);
                self.first_ts = ts;
            }
            1 => {
                let delta = ts - self.last_ts;
                self.bits.push(delta as u64, 64);
                self.push_value(v);
                self.last_delta = delta;
            }
            _ => {
                let delta = ts - self.last_ts;
                let dod = delta - self.last_delta;
                match dod {
                    0 => self.bits.push(0, 1),
                    -63..=64 => {
                        self.bits.push(0b10, 2);
                        self.bits.push((dod as u64) & 0x7f, 7);
                    }
                    -255..=256 => {
                        self.bits.push(0b110, 3);
                        self.bits.push((dod as u64) & 0x1ff, 9);
                    }
                    -2047..=2048 => {
                        self.bits.push(0b1110, 4);
                        self.bits.push((dod as u64) & 0xfff, 12);
                    }
                    _ => {
                        self.bits.push(0b1111, 4);
                        self.bits.push(dod as u64, 64);
                    }
                }
                self.push_value(v);
                self.last_delta = delta;
            }
        }
        self.last_ts = ts;
        self.last_value = v;
        self.count += 1;
    }

    fn push_value(&mut self, v: u64) {
        let xor = v ^ self.last_value;
        if xor == 0 {
            self.bits.push(0, 1);
            return;
        }
        let leading = xor.leading_zeros().min(31);
        let trailing = xor.trailing_zeros();
        if self.count > 1 && leading >= self.leading && trailing >= self.trailing && self.leading + self.trailing > 0 {
            // Fits in the previous window.
            self.bits.push(0b10, 2);
            self.bits.push(xor >> self.trailing, 64 - self.leading - self.trailing);
        } else {
            let significant = 64 - leading - trailing;
            self.bits.push(0b11, 2);
            self.bits.push(leading as u64, 5);
            // 64 significant bits is written as 0.
            self.bits.push((significant % 64) as u64, 6);
            self.bits.push(xor >> trailing, significant);
            self.leading = leading;
            self.trailing = trailing;
        }
    }

    /// The samples, in time order.
    pub fn samples(&self) -> Vec<(i64, f64)> {
        self.iter().collect()
    }

    /// The samples one by one, in time order: a reader that stops early
    /// decodes only what it reads.
    pub fn iter(&self) -> Samples<'_> {
        Samples { r: Reader { bits: &self.bits, pos: 0 }, next: 0, count: self.count, ts: 0, value: 0, delta: 0, leading: 0, trailing: 0 }
    }

    /// Whether the chunk has a sample at `ts`.
    pub fn holds(&self, ts: i64) -> bool {
        !self.is_empty() && self.first_ts <= ts && ts <= self.last_ts && self.iter().map(|(t, _)| t).take_while(|t| *t <= ts).any(|t| t == ts)
    }
}

/// A chunk's decoder, as an iterator.
pub struct Samples<'a> {
    r: Reader<'a>,
    next: usize,
    count: usize,
    ts: i64,
    value: u64,
    delta: i64,
    leading: u32,
    trailing: u32,
}

impl Iterator for Samples<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.next >= self.count {
            return None;
        }
        let r = &mut self.r;
        if self.next == 0 {
            self.ts = r.read(64)? as i64;
            self.value = r.read(64)?;
        } else {
            if self.next == 1 {
                self.delta = r.read(64)? as i64;
            } else {
                self.delta = self.delta.wrapping_add(read_dod(r)?);
            }
            // Wrapping: a damaged chunk decodes to nonsense, never a panic.
            self.ts = self.ts.wrapping_add(self.delta);
            if r.read(1)? == 1 {
                if r.read(1)? == 1 {
                    let (l, s) = (r.read(5)?, r.read(6)?);
                    self.leading = l as u32;
                    let significant = if s == 0 { 64 } else { s as u32 };
                    // A damaged chunk must not underflow: stop instead.
                    self.trailing = 64u32.checked_sub(self.leading + significant)?;
                }
                let bits = r.read(64 - self.leading - self.trailing)?;
                self.value ^= bits.checked_shl(self.trailing).unwrap_or(0);
            }
        }
        self.next += 1;
        Some((self.ts, f64::from_bits(self.value)))
    }
}

fn read_dod(r: &mut Reader) -> Option<i64> {
    let sign_extend = |v: u64, bits: u32| -> i64 {
        let shift = 64 - bits;
        ((v << shift) as i64) >> shift
    };
    if r.read(1)? == 0 {
        return Some(0);
    }
    if r.read(1)? == 0 {
        return Some(sign_extend(r.read(7)?, 7));
    }
    if r.read(1)? == 0 {
        return Some(sign_extend(r.read(9)?, 9));
    }
    if r.read(1)? == 0 {
        return Some(sign_extend(r.read(12)?, 12));
    }
    Some(r.read(64)? as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(samples: &[(i64, f64)]) -> Chunk {
        let mut c = Chunk::default();
        for (t, v) in samples {
            c.push(*t, *v);
        }
        let got = c.samples();
        assert_eq!(got.len(), samples.len());
        for (a, b) in got.iter().zip(samples) {
            assert_eq!(a.0, b.0);
            assert!(a.1 == b.1 || (a.1.is_nan() && b.1.is_nan()), "{a:?} != {b:?}");
        }
        c
    }

    #[test]
    fn fields_of_every_width_read_back_at_every_offset() {
        let mut bits = Bits::default();
        let mut written = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for width in (0..=64u32).chain((0..=64).rev()).chain([1, 3, 7, 13, 64, 0, 5]) {
            x = x.rotate_left(7).wrapping_mul(0x2545_f491_4f6c_dd1d);
            let value = if width == 64 { x } else { x & ((1u64 << width) - 1) };
            bits.push(value, width);
            written.push((value, width));
        }
        assert_eq!(bits.len, written.iter().map(|(_, w)| *w as usize).sum::<usize>());
        let mut r = Reader { bits: &bits, pos: 0 };
        for (value, width) in written {
            assert_eq!(r.read(width), Some(value), "{width} bits");
        }
        assert_eq!(r.read(1), None, "nothing past the end");
    }

    #[test]
    fn a_chunk_holds_exactly_its_time_stamps() {
        let mut c = Chunk::default();
        assert!(!c.holds(0));
        for i in 0..120 {
            c.push(1000 + i * 10, i as f64);
        }
        assert!((0..120).all(|i| c.holds(1000 + i * 10)));
        assert!(!c.holds(1005) && !c.holds(999) && !c.holds(1000 + 120 * 10));
        assert_eq!(c.iter().nth(5), Some((1050, 5.0)));
    }

    #[test]
    fn regular_samples_compress_well_and_round_trip() {
        let samples: Vec<(i64, f64)> = (0..120).map(|i| (1_700_000_000_000 + i * 15_000, (i * 3) as f64)).collect();
        let c = round_trip(&samples);
        assert!(c.bytes() < 120 * 3, "{} bytes for 120 samples", c.bytes());
    }

    #[test]
    fn irregular_times_and_odd_values_round_trip() {
        let mut samples = Vec::new();
        let mut t = 5i64;
        for i in 0..120u64 {
            t += [1, 15_000, 14_990, 3_600_000, 7, 64, 65, 257, 2049][i as usize % 9];
            let v = [0.0, -0.0, 1.5, f64::MAX, f64::MIN_POSITIVE, f64::INFINITY, f64::NAN, 1e-300, 123456.789][i as usize % 9];
            samples.push((t, v));
        }
        round_trip(&samples);
        round_trip(&[(i64::MIN + 1, 1.0), (0, 2.0), (i64::MAX / 2, 3.0)]);
    }
}
