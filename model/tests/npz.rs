//! `.npz` round trip with the venv's numpy as the oracle: numpy writes (savez, savez_compressed,
//! Fortran order, every supported dtype) → we read and stream; we write ADM-layout statistics →
//! numpy reads and checks them.

use sftok_model::eval::npz::{NpzReader, write_npz};
use sftok_testkit_tch::run_python;
use tch::{Device, Kind, Tensor};

/// numpy writes the arrays and, as an independent copy of the values, a raw little-endian
/// C-order dump of each (`<name>.raw`) plus its dtype/shape.
const NUMPY_WRITES: &str = r#"
import sys, os, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(7)
arrays = {
    "arr_0": rng.integers(0, 256, (5, 6, 4, 3), dtype=np.uint8),
    "mu": rng.standard_normal(2023),
    "sigma": rng.standard_normal((33, 33)),
    "f32": rng.standard_normal((3, 4)).astype(np.float32),
    "labels": rng.integers(0, 1000, 5).astype(np.int64),
    "mask": rng.random(7) > 0.5,
    "fortran": np.asfortranarray(rng.standard_normal((4, 3))),
    "scalar": np.float64(2.5),
}
np.savez(os.path.join(d, "plain.npz"), **arrays)
np.savez_compressed(os.path.join(d, "compressed.npz"), **arrays)
for k, v in arrays.items():
    np.ascontiguousarray(v).tofile(os.path.join(d, k + ".raw"))
    print(k, np.asarray(v).dtype.str, ",".join(map(str, np.shape(v))))
"#;

fn raw_tensor(dir: &std::path::Path, name: &str, kind: Kind, shape: &[i64]) -> Tensor {
    let bytes = std::fs::read(dir.join(format!("{name}.raw"))).unwrap();
    Tensor::from_data_size(&bytes, shape, kind)
}

#[test]
fn reads_what_numpy_writes() {
    let dir = tempfile::tempdir().unwrap();
    let listing = run_python(NUMPY_WRITES, &[dir.path().to_str().unwrap()]);
    for file in ["plain.npz", "compressed.npz"] {
        let mut npz = NpzReader::open(&dir.path().join(file)).unwrap();
        for line in listing.lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (name, descr) = (parts[0], parts[1]);
            let shape: Vec<i64> = parts.get(2).map_or(vec![], |s| s.split(',').map(|d| d.parse().unwrap()).collect());
            let kind = match descr {
                "|u1" => Kind::Uint8,
                "<f8" => Kind::Double,
                "<f4" => Kind::Float,
                "<i8" => Kind::Int64,
                "|b1" => Kind::Bool,
                other => panic!("unexpected dtype {other}"),
            };
            let got = npz.read(name).unwrap();
            assert_eq!(got.kind(), kind, "{file}:{name}");
            assert_eq!(got.size(), shape, "{file}:{name}");
            assert!(got.equal(&raw_tensor(dir.path(), name, kind, &shape)), "{file}:{name} values differ");
        }
        // Streaming the image array in batches of 2 gives the same rows.
        let batches: Vec<Tensor> = npz.stream("arr_0", 2).unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(batches.iter().map(|b| b.size()[0]).collect::<Vec<_>>(), [2, 2, 1]);
        assert!(Tensor::cat(&batches, 0).equal(&npz.read("arr_0").unwrap()));
        assert!(npz.contains("mu") && !npz.contains("mu_s"));
    }
}

#[test]
fn numpy_reads_adm_statistics_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.npz");
    let opts = (Kind::Double, Device::Cpu);
    let mu = Tensor::arange(2048, opts) / 7.0;
    let sigma = Tensor::arange(2048 * 2048, opts).reshape([2048, 2048]) / 3.0;
    let mu_s = Tensor::arange(2023, opts) / 11.0;
    let sigma_s = Tensor::arange(2023 * 2023, opts).reshape([2023, 2023]) / 13.0;
    let images = Tensor::arange(2 * 5 * 4 * 3, (Kind::Int64, Device::Cpu)).remainder(256).to_kind(Kind::Uint8).reshape([2, 5, 4, 3]);
    write_npz(&path, &[("mu", &mu), ("sigma", &sigma), ("mu_s", &mu_s), ("sigma_s", &sigma_s), ("arr_0", &images)])
        .unwrap();
    let check = r#"
import sys, os, numpy as np
with np.load(os.path.join(sys.argv[1], "stats.npz")) as f:
    assert sorted(f.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"], f.files
    assert f["mu"].dtype == np.float64 and f["sigma"].shape == (2048, 2048)
    assert np.array_equal(f["mu"], np.arange(2048) / 7.0)
    assert np.array_equal(f["sigma"], np.arange(2048 * 2048).reshape(2048, 2048) / 3.0)
    assert np.array_equal(f["mu_s"], np.arange(2023) / 11.0)
    assert np.array_equal(f["sigma_s"], np.arange(2023 * 2023).reshape(2023, 2023) / 13.0)
    assert f["arr_0"].dtype == np.uint8 and f["arr_0"].flags["C_CONTIGUOUS"]
    assert np.array_equal(f["arr_0"], (np.arange(120) % 256).astype(np.uint8).reshape(2, 5, 4, 3))
print("ok")
"#;
    assert_eq!(run_python(check, &[dir.path().to_str().unwrap()]).trim(), "ok");
    // And we read back what we wrote.
    let mut npz = NpzReader::open(&path).unwrap();
    assert!(npz.read("sigma_s").unwrap().equal(&sigma_s));
}
