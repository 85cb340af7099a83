//! Fast path of `--verify full` for baseline JPEGs (ImageNet's usual kind): decodes every Huffman
//! code of every block of every scan, checks restart markers and that the data end exactly where
//! the last block does. That is the part of decoding that can fail; dequantisation, IDCT,
//! upsampling and colour conversion cannot once it passes, so they are skipped (3–4× cheaper
//! than a pixel decode).
//!
//! It only ever says "proven sound": anything it does not handle (progressive, arithmetic,
//! 12-bit, odd tables) or does not like answers `false`, and the caller then runs the full zune
//! decode, whose verdict stands. So being stricter than libjpeg here costs time, never a file.

/// Canonical Huffman decoder: a 9-bit lookup for short codes, the JPEG spec's
/// maxcode/valptr tables for longer ones.
struct Huffman {
    /// (code length, symbol) for every 9-bit prefix; length 0 = longer code.
    lut: Vec<(u8, u8)>,
    maxcode: [i32; 17],
    valptr: [i32; 17],
    mincode: [i32; 17],
    values: Vec<u8>,
}

const LUT_BITS: u32 = 9;

impl Huffman {
    fn new(counts: &[u8], values: &[u8]) -> Option<Huffman> {
        let mut lut = vec![(0u8, 0u8); 1 << LUT_BITS];
        let (mut maxcode, mut valptr, mut mincode) = ([-1i32; 17], [0i32; 17], [0i32; 17]);
        let (mut code, mut k) = (0i32, 0usize);
        for len in 1..=16usize {
            let n = counts[len - 1] as usize;
            valptr[len] = k as i32;
            mincode[len] = code;
            for _ in 0..n {
                if code >= 1 << len {
                    return None; // over-subscribed table
                }
                if len as u32 <= LUT_BITS {
                    let shift = LUT_BITS - len as u32;
                    let base = (code as usize) << shift;
                    for e in &mut lut[base..base + (1 << shift)] {
                        *e = (len as u8, values[k]);
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                maxcode[len] = code - 1;
            }
            code <<= 1;
        }
        Some(Huffman { lut, maxcode, valptr, mincode, values: values.to_vec() })
    }
}

/// MSB-first bit reader over entropy-coded data; stops at a marker and then feeds zero bits,
/// counting them, so reading past the real data is detected afterwards.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    nbits: u32,
    fake: u32,
    at_marker: bool,
}

impl<'a> Bits<'a> {
    #[inline(always)]
    fn refill(&mut self) {
        // Fast path: the next 8 bytes hold no 0xFF (no stuffing, no marker), so whole bytes
        // can be taken at once.
        if self.nbits > 56 {
            return;
        }
        if !self.at_marker
            && let Some(word) = self.data.get(self.pos..self.pos + 8)
        {
            let w = u64::from_be_bytes(word.try_into().expect("8 bytes"));
            let inv = !w;
            if (inv.wrapping_sub(0x0101_0101_0101_0101) & !inv & 0x8080_8080_8080_8080) == 0 {
                let take = (64 - self.nbits) / 8;
                self.acc |= (w >> (64 - 8 * take)) << (64 - self.nbits - 8 * take);
                self.nbits += 8 * take;
                self.pos += take as usize;
                return;
            }
        }
        while self.nbits <= 56 {
            let byte = if self.at_marker {
                self.fake += 8;
                0
            } else {
                match self.data.get(self.pos) {
                    Some(0xFF) if self.data.get(self.pos + 1) == Some(&0) => {
                        self.pos += 2;
                        0xFF
                    }
                    Some(0xFF) | None => {
                        self.at_marker = true;
                        self.fake += 8;
                        0
                    }
                    Some(&b) => {
                        self.pos += 1;
                        b
                    }
                }
            };
            self.acc |= (byte as u64) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    #[inline(always)]
    fn skip(&mut self, n: u32) {
        if self.nbits < n {
            self.refill();
        }
        self.acc <<= n;
        self.nbits -= n;
    }

    #[inline(always)]
    fn decode(&mut self, h: &Huffman) -> Option<u8> {
        if self.nbits < 16 {
            self.refill();
        }
        let (len, sym) = h.lut[(self.acc >> (64 - LUT_BITS)) as usize];
        if len != 0 {
            self.skip(len as u32);
            return Some(sym);
        }
        let code16 = (self.acc >> 48) as i32;
        for len in LUT_BITS as usize + 1..=16 {
            let code = code16 >> (16 - len);
            if code <= h.maxcode[len] {
                let sym = h.values[(h.valptr[len] + code - h.mincode[len]) as usize];
                self.skip(len as u32);
                return Some(sym);
            }
        }
        None
    }

    /// At the end of an interval or scan: only padding (< 8 bits) may be left before the marker,
    /// and no invented zero bits may have been used.
    fn ends_at_marker(&mut self) -> bool {
        self.refill();
        self.at_marker && self.nbits >= self.fake && self.nbits - self.fake < 8
    }
}

#[derive(Clone, Copy)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
}

/// True when `bytes` is a baseline 8-bit Huffman JPEG whose every scan decodes cleanly.
pub fn baseline_sound(bytes: &[u8]) -> bool {
    check(bytes).is_some()
}

fn check(b: &[u8]) -> Option<()> {
    let be16 = |p: usize| -> Option<usize> { Some(u16::from_be_bytes([*b.get(p)?, *b.get(p + 1)?]) as usize) };
    let mut dc: [Option<Huffman>; 4] = Default::default();
    let mut ac: [Option<Huffman>; 4] = Default::default();
    let mut quant = [false; 4];
    let mut frame: Option<(usize, usize, Vec<Component>)> = None;
    let mut covered = [false; 4];
    let mut restart = 0usize;
    let mut pos = 2;
    loop {
        while b.get(pos) == Some(&0xFF) && b.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if *b.get(pos)? != 0xFF {
            return None;
        }
        let marker = *b.get(pos + 1)?;
        pos += 2;
        if marker == 0xD9 {
            let (_, _, comps) = frame?;
            return covered[..comps.len()].iter().all(|&c| c).then_some(());
        }
        let len = be16(pos)?;
        let seg = b.get(pos + 2..pos + len)?;
        match marker {
            0xDB => {
                let mut s = seg;
                while !s.is_empty() {
                    let (pq, tq) = ((s[0] >> 4) as usize, (s[0] & 15) as usize);
                    let size = 1 + 64 * (pq + 1);
                    if pq > 0 || tq > 3 || s.len() < size {
                        return None;
                    }
                    quant[tq] = true;
                    s = &s[size..];
                }
            }
            0xC4 => {
                let mut s = seg;
                while !s.is_empty() {
                    let (tc, th) = (s[0] >> 4, (s[0] & 15) as usize);
                    let counts = s.get(1..17)?;
                    let n: usize = counts.iter().map(|&c| c as usize).sum();
                    let values = s.get(17..17 + n)?;
                    let table = Some(Huffman::new(counts, values)?);
                    match (tc, th) {
                        (0, 0..=3) => dc[th] = table,
                        (1, 0..=3) => ac[th] = table,
                        _ => return None,
                    }
                    s = &s[17 + n..];
                }
            }
            0xC0 | 0xC1 => {
                let (h, w, n) = (be16(pos + 3)?, be16(pos + 5)?, *seg.get(5)? as usize);
                if seg[0] != 8 || h == 0 || w == 0 || !matches!(n, 1 | 3) || frame.is_some() {
                    return None;
                }
                let mut comps = Vec::new();
                for c in seg.get(6..6 + 3 * n)?.chunks_exact(3) {
                    let (ch, cv, tq) = ((c[1] >> 4) as usize, (c[1] & 15) as usize, c[2] as usize);
                    if !(1..=4).contains(&ch) || !(1..=4).contains(&cv) || tq > 3 {
                        return None;
                    }
                    comps.push(Component { id: c[0], h: ch, v: cv, tq });
                }
                frame = Some((w, h, comps));
            }
            0xC2..=0xCF => return None, // progressive, lossless, arithmetic: zune decides
            0xDD => restart = be16(pos + 2)?,
            0xDA => {
                let (w, h, comps) = frame.as_ref()?;
                // Quantisation tables may follow the frame header but must precede the scan.
                if comps.iter().any(|c| !quant[c.tq]) {
                    return None;
                }
                let ns = *seg.first()? as usize;
                let mut scan = Vec::new();
                for s in seg.get(1..1 + 2 * ns)?.chunks_exact(2) {
                    let ci = comps.iter().position(|c| c.id == s[0])?;
                    let (td, ta) = ((s[1] >> 4) as usize, (s[1] & 15) as usize);
                    dc.get(td)?.as_ref()?;
                    ac.get(ta)?.as_ref()?;
                    covered[ci] = true;
                    scan.push((comps[ci], td, ta));
                }
                if seg.get(1 + 2 * ns..4 + 2 * ns)? != [0, 63, 0] || ns == 0 {
                    return None;
                }
                pos = scan_data(b, pos + len, *w, *h, comps, &scan, &dc, &ac, restart)?;
                continue;
            }
            _ => {}
        }
        pos += len;
    }
}

/// Decodes one scan's entropy data starting at `start`; returns the position of the marker after it.
#[allow(clippy::too_many_arguments)]
fn scan_data(
    b: &[u8],
    start: usize,
    w: usize,
    h: usize,
    comps: &[Component],
    scan: &[(Component, usize, usize)],
    dc: &[Option<Huffman>; 4],
    ac: &[Option<Huffman>; 4],
    restart: usize,
) -> Option<usize> {
    let hmax = comps.iter().map(|c| c.h).max()?;
    let vmax = comps.iter().map(|c| c.v).max()?;
    // Blocks per MCU for each scan component, and the MCU count.
    let (mcus, blocks): (usize, Vec<usize>) = if scan.len() == 1 {
        let c = scan[0].0;
        let bw = (w * c.h).div_ceil(hmax).div_ceil(8);
        let bh = (h * c.v).div_ceil(vmax).div_ceil(8);
        (bw * bh, vec![1])
    } else {
        let n = w.div_ceil(8 * hmax) * h.div_ceil(8 * vmax);
        (n, scan.iter().map(|s| s.0.h * s.0.v).collect())
    };
    let tables: Vec<(&Huffman, &Huffman)> =
        scan.iter().map(|s| Some((dc[s.1].as_ref()?, ac[s.2].as_ref()?))).collect::<Option<_>>()?;
    let mut bits = Bits { data: b, pos: start, acc: 0, nbits: 0, fake: 0, at_marker: false };
    let mut next_rst = 0u8;
    for m in 0..mcus {
        if restart > 0 && m > 0 && m % restart == 0 {
            if !bits.ends_at_marker() || b.get(bits.pos + 1) != Some(&(0xD0 + next_rst)) {
                return None;
            }
            next_rst = (next_rst + 1) % 8;
            bits = Bits { data: b, pos: bits.pos + 2, acc: 0, nbits: 0, fake: 0, at_marker: false };
        }
        for (&(dct, act), &n) in tables.iter().zip(&blocks) {
            for _ in 0..n {
                let s = bits.decode(dct)?;
                if s > 11 {
                    return None;
                }
                bits.skip(s as u32);
                let mut k = 1;
                while k < 64 {
                    let rs = bits.decode(act)?;
                    let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
                    if s == 0 {
                        if r != 15 {
                            break;
                        }
                        k += 16;
                        continue;
                    }
                    k += r;
                    if k > 63 || s > 10 {
                        return None;
                    }
                    bits.skip(s);
                    k += 1;
                }
                if k > 64 {
                    return None;
                }
            }
        }
    }
    bits.ends_at_marker().then_some(bits.pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(color: jpeg_encoder::ColorType, w: u16, h: u16, f: impl Fn(&mut jpeg_encoder::Encoder<&mut Vec<u8>>)) -> Vec<u8> {
        let n = if color == jpeg_encoder::ColorType::Luma { 1 } else { 3 };
        let px: Vec<u8> = (0..w as usize * h as usize * n).map(|i| ((i * 37) ^ (i / 7)) as u8).collect();
        let mut buf = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut buf, 85);
        f(&mut enc);
        enc.encode(&px, w, h, color).unwrap();
        buf
    }

    #[test]
    fn sound_baseline_files_pass() {
        use jpeg_encoder::{ColorType, SamplingFactor};
        for (w, h) in [(1, 1), (17, 9), (64, 48), (333, 500)] {
            let f444 = |e: &mut jpeg_encoder::Encoder<&mut Vec<u8>>| e.set_sampling_factor(SamplingFactor::F_1_1);
            assert!(baseline_sound(&encode(ColorType::Rgb, w, h, f444)), "{w}x{h} 4:4:4");
            assert!(baseline_sound(&encode(ColorType::Luma, w, h, |_| {})), "{w}x{h} gray");
            for sf in [SamplingFactor::F_2_2, SamplingFactor::F_2_1, SamplingFactor::F_1_2] {
                assert!(baseline_sound(&encode(ColorType::Rgb, w, h, |e| e.set_sampling_factor(sf))), "{w}x{h} {sf:?}");
            }
            assert!(baseline_sound(&encode(ColorType::Rgb, w, h, |e| e.set_restart_interval(3))), "{w}x{h} restarts");
            assert!(baseline_sound(&encode(ColorType::Rgb, w, h, |e| e.set_optimized_huffman_tables(true))));
        }
    }

    #[test]
    fn damaged_or_unhandled_files_are_not_vouched_for() {
        let good = encode(jpeg_encoder::ColorType::Rgb, 64, 48, |e| e.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2));
        // Entropy data cut short, end-of-image marker still there.
        let mut cut = good[..good.len() * 2 / 3].to_vec();
        cut.extend_from_slice(&[0xFF, 0xD9]);
        assert!(!baseline_sound(&cut));
        // Extra bytes after the last block.
        let mut extra = good[..good.len() - 2].to_vec();
        extra.extend_from_slice(&[0x12, 0x34, 0x56, 0xFF, 0xD9]);
        assert!(!baseline_sound(&extra));
        // Destroyed Huffman table.
        let mut bad = good.clone();
        let dht = bad.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
        bad[dht + 5..dht + 21].fill(0xFF);
        assert!(!baseline_sound(&bad));
        // Wrong restart marker number.
        let mut rst = encode(jpeg_encoder::ColorType::Rgb, 64, 48, |e| e.set_restart_interval(2));
        let at = rst.windows(2).rposition(|w| w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1])).unwrap();
        rst[at + 1] = 0xD0 + (rst[at + 1] - 0xD0 + 3) % 8;
        assert!(!baseline_sound(&rst));
        // Progressive is left to the full decoder.
        assert!(!baseline_sound(&encode(jpeg_encoder::ColorType::Rgb, 64, 48, |e| e.set_progressive(true))));
    }
}
