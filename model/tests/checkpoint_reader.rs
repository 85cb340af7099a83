//! The PyTorch checkpoint reader against files written by the venv's Python torch (oracle):
//! zip and legacy formats, every common dtype, views, shared storages, nested dicts, Parameters.

use sftok_model::checkpoint;
use std::path::Path;
use tch::{Tensor, nn};

const WRITE: &str = r#"
import sys, torch, collections
from safetensors.torch import save_file
out = sys.argv[1]
torch.manual_seed(0)
base = torch.randn(6, 8)
t = {
    "f32": torch.randn(3, 4),
    "f16": torch.randn(5).half(),
    "bf16": torch.randn(2, 3).bfloat16(),
    "f64": torch.randn(4, dtype=torch.float64),
    "i64": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
    "u8": torch.arange(0, 250, 10, dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "transposed": base.t(),                 # non-contiguous view
    "slice": base[2:5, 1:7],                # offset + strides into the same storage
    "whole": base,                          # shares its storage with the two above
    "scalar": torch.tensor(3.5),
}
nested = {"model": {"encoder": {"w": t["f32"] * 2}, "head.bias": t["f16"]}, "epoch": 7}
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.register_buffer("index_offset", torch.tensor([0], dtype=torch.int64))
m = M()
for legacy in (False, True):
    suffix = "legacy.pth" if legacy else "zip.bin"
    kw = dict(_use_new_zipfile_serialization=not legacy)
    torch.save(t, f"{out}/plain_{suffix}", **kw)
    torch.save(nested, f"{out}/nested_{suffix}", **kw)
    torch.save(m.state_dict(), f"{out}/module_{suffix}", **kw)          # OrderedDict + _metadata
    torch.save({k: torch.nn.Parameter(v) for k, v in m.state_dict().items() if v.is_floating_point()},
               f"{out}/params_{suffix}", **kw)
save_file({k: v.contiguous() for k, v in t.items()}, f"{out}/plain.safetensors")
save_file({"encoder.w": nested["model"]["encoder"]["w"], "head.bias": t["f16"]}, f"{out}/nested.safetensors")
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, f"{out}/module.safetensors")
"#;

fn assert_same(got: &checkpoint::StateDict, expect_path: &Path) {
    let expect = Tensor::read_safetensors(expect_path).unwrap();
    let mut got_names: Vec<&str> = got.names().collect();
    let mut exp_names: Vec<&str> = expect.iter().map(|(n, _)| n.as_str()).collect();
    got_names.sort();
    exp_names.sort();
    assert_eq!(got_names, exp_names, "{}", expect_path.display());
    for (name, e) in &expect {
        let g = got.get(name).unwrap();
        assert_eq!(g.kind(), e.kind(), "{name}: dtype");
        assert_eq!(g.size(), e.size(), "{name}: shape");
        assert!(g.equal(e), "{name}: values differ");
    }
}

#[test]
fn reads_zip_and_legacy_torch_files_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    sftok_testkit_tch::run_python(WRITE, &[dir.path().to_str().unwrap()]);
    for suffix in ["zip.bin", "legacy.pth"] {
        let p = |n: &str| dir.path().join(format!("{n}_{suffix}"));
        assert_same(&checkpoint::read(&p("plain")).unwrap(), &dir.path().join("plain.safetensors"));
        // {"model": {...}, "epoch": 7}: the wrapper is unwrapped, nested dicts get dotted names.
        assert_same(&checkpoint::read(&p("nested")).unwrap(), &dir.path().join("nested.safetensors"));
        assert_same(&checkpoint::read(&p("module")).unwrap(), &dir.path().join("module.safetensors"));
        let params = checkpoint::read(&p("params")).unwrap();
        assert_eq!(params.names().count(), 4, "{suffix}: nn.Parameter values");
    }
    // safetensors goes through the same entry point.
    assert_same(&checkpoint::read(&dir.path().join("plain.safetensors")).unwrap(), &dir.path().join("plain.safetensors"));
}

#[test]
fn strict_loading_reports_missing_unexpected_and_misshaped_keys() {
    let dir = tempfile::tempdir().unwrap();
    sftok_testkit_tch::run_python(WRITE, &[dir.path().to_str().unwrap()]);

    // A module whose parameter names match the Python module loads every value.
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let root = vs.root();
    let lin = nn::linear(&root / "lin", 4, 3, Default::default());
    let _norm = nn::layer_norm(&root / "norm", vec![3], Default::default());
    let _off = root.var_copy("index_offset", &Tensor::from_slice(&[5i64]));
    checkpoint::load_file(&vs, &dir.path().join("module_zip.bin")).unwrap();
    let expect = Tensor::read_safetensors(dir.path().join("module.safetensors")).unwrap();
    let w = &expect.iter().find(|(n, _)| n == "lin.weight").unwrap().1;
    assert!(lin.ws.equal(w));
    assert_eq!(vs.variables()["index_offset"].int64_value(&[0]), 0);

    // Wrong checkpoint: all three kinds of mismatch are listed.
    let vs2 = nn::VarStore::new(tch::Device::Cpu);
    let r2 = vs2.root();
    let _ = nn::linear(&r2 / "lin", 4, 5, Default::default()); // mis-shaped
    let _ = r2.zeros("extra", &[2]); // missing from the checkpoint
    let err = format!("{:#}", checkpoint::load_file(&vs2, &dir.path().join("module_legacy.pth")).unwrap_err());
    assert!(err.contains("lin.weight: checkpoint [3, 4] vs model [5, 4]"), "{err}");
    assert!(err.contains("missing from the checkpoint: extra"), "{err}");
    assert!(err.contains("unexpected in the checkpoint") && err.contains("norm.weight"), "{err}");
    assert!(err.contains("module_legacy.pth"), "{err}");
}

#[test]
fn unreadable_files_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    sftok_testkit_tch::run_python(WRITE, &[dir.path().to_str().unwrap()]);
    let full = std::fs::read(dir.path().join("plain_legacy.pth")).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &full[..full.len() - 10]).unwrap();
    let err = format!("{:#}", checkpoint::read(&cut).err().expect("truncated file must fail"));
    assert!(err.contains("cut.pth") && err.contains("truncated"), "{err}");
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"hello world, not a checkpoint").unwrap();
    let err = format!("{:#}", checkpoint::read(&junk).err().unwrap());
    assert!(err.contains("junk.bin") && err.contains("not a PyTorch checkpoint"), "{err}");
    let err = format!("{:#}", checkpoint::read(&dir.path().join("nope.bin")).err().unwrap());
    assert!(err.contains("nope.bin") && err.contains("check the path"), "{err}");
}

/// A safetensors file starts with its header length (u64, little endian). When that length's low
/// byte is 0x80 — a pickle's first byte — the file must still be read as safetensors (it was
/// once taken for a legacy torch pickle: SFTok weights of one config failed to load).
#[test]
fn safetensors_whose_first_byte_is_a_pickle_opcode() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys, torch
from safetensors.torch import save_file
out = sys.argv[1]
for k in range(1, 400):
    p = f"{out}/w.safetensors"
    save_file({"w" + "x" * k: torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4}, p)
    if open(p, "rb").read(1) == b"\x80":
        print("x" * k)
        break
else:
    raise SystemExit("no name length gives a 0x80 first byte")
"#;
    let name = sftok_testkit_tch::run_python(script, &[dir.path().to_str().unwrap()]);
    let path = dir.path().join("w.safetensors");
    assert_eq!(std::fs::read(&path).unwrap()[0], 0x80);
    let sd = checkpoint::read(&path).expect("a safetensors file starting with 0x80");
    let t = sd.get(&format!("w{}", name.trim())).expect("the tensor by its name");
    assert_eq!(Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(), vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &std::fs::read(&path).unwrap()[..4]).unwrap();
    let err = format!("{:#}", checkpoint::read(&cut).err().expect("a 4-byte file must fail"));
    assert!(err.contains("cut.safetensors") && err.contains("does not start with a safetensors header"), "{err}");
}
