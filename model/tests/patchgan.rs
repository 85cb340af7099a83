//! PatchGAN `NLayerDiscriminator` (training spec §7.4, `discriminator_type: patchgan`): the
//! reference's state-dict names and sizes, output shapes, and that gradients reach the input.
//! No fixture covers this module; the counts are the spec's.

use sftok_model::patchgan::NLayerDiscriminator;
use std::collections::BTreeSet;
use tch::{Device, Kind, Tensor, nn};

/// Spec §7.4: "21 state-dict tensors, 1,909,889 values" (the values of the parameters; the three
/// blur kernels, persistent buffers of 4×4, are state-dict tensors but not parameters).
const STATE_DICT_TENSORS: usize = 21;
const PARAMETER_VALUES: i64 = 1_909_889;

/// A seeded discriminator; the guard keeps the tests' draws from libtorch's global generator apart.
fn build() -> (std::sync::MutexGuard<'static, ()>, nn::VarStore, NLayerDiscriminator) {
    let lock = sftok_testkit_tch::rng_lock();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let d = NLayerDiscriminator::new(vs.root());
    (lock, vs, d)
}

#[test]
fn state_dict_names_and_sizes_are_the_references() {
    let (_lock, vs, _d) = build();
    let vars = vs.variables();
    assert_eq!(vars.len(), STATE_DICT_TENSORS);
    let mut expect: BTreeSet<String> = BTreeSet::new();
    for m in ["block_in.0", "to_logits.0", "to_logits.2"] {
        expect.extend([format!("{m}.weight"), format!("{m}.bias")]);
    }
    for i in 0..3 {
        expect.extend([
            format!("blocks.{i}.0.weight"),
            format!("blocks.{i}.0.bias"),
            format!("blocks.{i}.1.kernel"),
            format!("blocks.{i}.2.weight"),
            format!("blocks.{i}.2.bias"),
        ]);
    }
    assert_eq!(vars.keys().cloned().collect::<BTreeSet<_>>(), expect);
    let trainable: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    assert_eq!(trainable, PARAMETER_VALUES);
    assert_eq!(vs.trainable_variables().len(), STATE_DICT_TENSORS - 3, "the blur kernels are not trainable");
    let shape = |k: &str| vars[k].size();
    assert_eq!(shape("block_in.0.weight"), [128, 3, 5, 5]);
    assert_eq!(shape("blocks.0.0.weight"), [128, 128, 3, 3]);
    assert_eq!(shape("blocks.1.0.weight"), [256, 128, 3, 3]);
    assert_eq!(shape("blocks.2.0.weight"), [512, 256, 3, 3]);
    assert_eq!(shape("blocks.2.2.weight"), [512]);
    assert_eq!(shape("to_logits.0.weight"), [512, 512, 1, 1]);
    assert_eq!(shape("to_logits.2.weight"), [1, 512, 5, 5]);
    // The blur kernel: outer((1,3,3,1), (1,3,3,1)) / 64.
    let taps = Tensor::from_slice(&[1f32, 3., 3., 1.]);
    let k = (taps.unsqueeze(0) * taps.unsqueeze(1) / 64.0).view([1, 1, 4, 4]);
    for i in 0..3 {
        assert!(vars[&format!("blocks.{i}.1.kernel")].equal(&k));
    }
}

#[test]
fn output_is_16x16_logits_for_any_input_size() {
    let (_lock, _vs, d) = build();
    for (b, side) in [(2, 64), (1, 256), (1, 65)] {
        let x = Tensor::rand([b, 3, side, side], (Kind::Float, Device::Cpu));
        let y = tch::no_grad(|| d.forward(&x));
        assert_eq!(y.size(), [b, 1, 16, 16], "input {side}×{side}");
        assert!(bool::try_from(y.isfinite().all()).unwrap());
    }
}

#[test]
fn gradients_reach_the_input_and_the_parameters() {
    let (_lock, vs, d) = build();
    let x = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let y = d.forward(&x);
    (-y.mean(Kind::Float)).backward();
    let g = x.grad();
    assert!(bool::try_from(g.isfinite().all()).unwrap());
    assert!(g.abs().max().double_value(&[]) > 0.0, "no gradient reached the input");
    for (name, t) in vs.variables() {
        if t.requires_grad() {
            assert!(t.grad().defined() && t.grad().abs().max().double_value(&[]) > 0.0, "{name}: no gradient");
        }
    }
}

/// An independent oracle: the architecture of spec §7.4 / the module docs written with
/// `torch.nn.functional` in the test venv (TF-SAME blur padding, depthwise blur, GroupNorm eps
/// 1e-5, LeakyReLU 0.1, AdaptiveMaxPool2d(16)), run on the Rust module's weights. Reads
/// `in.safetensors` (weights + `x`), writes `out.safetensors` (`y`, `grad_x` of mean(y)).
const FUNCTIONAL_ORACLE: &str = r#"
import sys, math, torch, torch.nn.functional as F
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1] + "/in.safetensors")
x = t["x"].clone().requires_grad_(True)
act = lambda h: F.leaky_relu(h, 0.1)
def same_blur(h, k):
    c, ih, iw = h.shape[-3:]
    p = lambda i: max((math.ceil(i / 2) - 1) * 2 + 4 - i, 0)
    ph, pw = p(ih), p(iw)
    h = F.pad(h, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return F.conv2d(h, k.expand(c, -1, -1, -1), stride=2, groups=c)
h = act(F.conv2d(x, t["block_in.0.weight"], t["block_in.0.bias"], padding=2))
for i in range(3):
    b = "blocks.%d." % i
    h = F.conv2d(h, t[b + "0.weight"], t[b + "0.bias"], padding=1)
    h = same_blur(h, t[b + "1.kernel"])
    h = act(F.group_norm(h, 32, t[b + "2.weight"], t[b + "2.bias"], 1e-5))
h = F.adaptive_max_pool2d(h, (16, 16))
h = act(F.conv2d(h, t["to_logits.0.weight"], t["to_logits.0.bias"]))
y = F.conv2d(h, t["to_logits.2.weight"], t["to_logits.2.bias"], padding=2)
y.mean().backward()
save_file({"y": y.detach().contiguous(), "grad_x": x.grad.contiguous()}, sys.argv[1] + "/out.safetensors")
"#;

#[test]
fn matches_a_functional_torch_oracle_on_odd_sizes() {
    let (_lock, vs, d) = build();
    let x = Tensor::rand([2, 3, 67, 45], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let y = d.forward(&x);
    y.mean(Kind::Float).backward();
    let dir = tempfile::tempdir().unwrap();
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.push(("x".into(), x.detach()));
    sftok_model::checkpoint::save_tensors(named, &dir.path().join("in.safetensors")).unwrap();
    sftok_testkit_tch::run_python(FUNCTIONAL_ORACLE, &[dir.path().to_str().unwrap()]);
    let out: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("out.safetensors")).unwrap().into_iter().collect();
    // Same libtorch kernels in the same order: round-off only (observed: identical).
    for (name, got, expect) in [("y", y.detach(), &out["y"]), ("grad_x", x.grad(), &out["grad_x"])] {
        let err = sftok_testkit_tch::max_abs_diff(&got, expect);
        let scale = sftok_testkit_tch::max_abs(expect);
        println!("{name}: max abs diff {err:.3e} (max |value| {scale:.3e})");
        assert!(err <= 1e-5 * scale, "{name}: {err:e} vs max |value| {scale:e}");
    }
}
