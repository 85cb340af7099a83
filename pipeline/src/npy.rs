//! The `.npy` header numpy writes (`numpy.lib.format`), for writers that stream the array data
//! themselves (the sample batch `.npz` of `sample_store`).

/// The `.npy` magic string.
pub const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Header bytes of a C-order array of dtype `descr` (`|u1`, `<f4`, `<f8`, `<i8`, `|b1`, …) and
/// `shape`, as numpy writes them: magic, version 1.0 (2.0 when the dict does not fit a 16-bit
/// length), little-endian header length, the dict
/// `{'descr': '|u1', 'fortran_order': False, 'shape': (N, S, S, 3), }` padded with spaces and a
/// final `\n` so the data starts at a multiple of 64 bytes.
pub fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // magic (6) + version (2) + length (2 or 4), then the dict and its `\n`.
    let (version, lead) = if dict.len() + 11 < 65536 { (1u8, 10) } else { (2u8, 12) };
    let pad = (64 - (lead + dict.len() + 1) % 64) % 64;
    dict.push_str(&" ".repeat(pad));
    dict.push('\n');
    let mut out = NPY_MAGIC.to_vec();
    out.extend([version, 0]);
    if version == 1 {
        out.extend((dict.len() as u16).to_le_bytes());
    } else {
        out.extend((dict.len() as u32).to_le_bytes());
    }
    out.extend(dict.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_numpy_byte_for_byte() {
        // numpy.lib.format.write_array_header_1_0 for np.zeros((50000, 256, 256, 3), np.uint8).
        let h = npy_header("|u1", &[50000, 256, 256, 3]);
        let dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (50000, 256, 256, 3), }";
        assert_eq!(h.len(), 128);
        assert_eq!(&h[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert_eq!(&h[10..10 + dict.len()], dict.as_bytes());
        assert!(h[10 + dict.len()..127].iter().all(|&b| b == b' '));
        assert_eq!(h[127], b'\n');
        // 1-d shapes keep the trailing comma.
        let h = npy_header("<f8", &[2048]);
        assert_eq!(h.len() % 64, 0);
        assert!(String::from_utf8_lossy(&h).contains("'shape': (2048,), }"));
    }
}
