//! LPIPS (VGG16) parity against the `lpips-vgg16` fixture (the reference LPIPS with random float16
//! VGG weights): every `expect.*` key within its sidecar tolerance, the gradient w.r.t. the second
//! input, and the loader (torchvision / LPIPS v0.1 key layouts, errors, random weights). Key
//! names, counts and batch sizes come from the sidecar.

use sftok_model::device::cpu;
use sftok_model::checkpoint::StateDict;
use sftok_model::lpips::{LPIPS_LIN_URL, Lpips, VGG16_URL, load_lpips};
use sftok_testkit_tch::{self as tk, Bound, Fixture};
use std::collections::BTreeSet;
use tch::{Device, Kind, Tensor, nn};

const FX: &str = "lpips-vgg16";

fn fixture_weights(fx: &Fixture) -> StateDict {
    StateDict { tensors: fx.with_prefix("weights.") }
}

fn fixture_lpips(fx: &Fixture) -> (nn::VarStore, Lpips) {
    let vs = nn::VarStore::new(cpu().unwrap());
    let lpips = Lpips::new(vs.root());
    lpips.load_state_dict(&fixture_weights(fx), FX).unwrap();
    (vs, lpips)
}

/// `expect.<stem>.{k}` keys of the sidecar → their indices k, sorted.
fn indexed(fx: &Fixture, stem: &str) -> Vec<usize> {
    let prefix = format!("expect.{stem}.");
    let mut v: Vec<usize> = fx
        .side
        .tensor_names(&prefix)
        .iter()
        .map(|k| k[prefix.len()..].parse().unwrap_or_else(|_| panic!("{k}: index is not an integer")))
        .collect();
    v.sort();
    v
}

/// Asserts the sidecar's suggested atol, and prints whether the same-branch atol is met too.
fn check(fx: &Fixture, key: &str, got: &Tensor, checked: &mut BTreeSet<String>) -> f64 {
    let err = fx.assert_close(key, got);
    let same = fx.side.tolerance(key).bound(Bound::SameBranchAtol);
    println!("{key:<40} same-branch atol {same:.1e}: {}", if err <= same { "met" } else { "NOT met" });
    checked.insert(key.to_string());
    err
}

#[test]
fn every_expected_key_matches_the_reference() {
    let fx = Fixture::load(FX);
    let (vs, lpips) = fixture_lpips(&fx);
    // Frozen: nothing trainable, no variable requires grad.
    assert!(vs.trainable_variables().is_empty());
    assert!(vs.variables().values().all(|t| !t.requires_grad()));
    assert_eq!(vs.variables().len(), fx.side.tensor_names("weights.").len());

    let in0 = fx.get("input.in0");
    let in1 = fx.get("input.in1").detach().set_requires_grad(true);
    let mut checked = BTreeSet::new();

    let out = lpips.forward_detailed(in0, &in1);
    check(&fx, "expect.lpips", &out.value, &mut checked);
    let mean = out.value.mean(Kind::Float);
    check(&fx, "expect.perceptual_loss_mean", &mean, &mut checked);
    mean.backward();
    let grad = in1.grad();
    assert!(bool::try_from(grad.isfinite().all()).unwrap(), "grad_in1 is not finite");
    check(&fx, "expect.grad_in1", &grad, &mut checked);
    fx.assert_close_rel("expect.grad_in1", &grad);

    // The per-layer terms, summed left to right, give the value bit for bit.
    let terms = indexed(&fx, "layer_term");
    assert_eq!(terms, (0..out.layer_terms.len()).collect::<Vec<_>>(), "one expect.layer_term per tapped layer");
    for &k in &terms {
        check(&fx, &format!("expect.layer_term.{k}"), &out.layer_terms[k], &mut checked);
    }
    let sum = out.layer_terms[1..].iter().fold(out.layer_terms[0].shallow_clone(), |a, t| a + t);
    assert!(sum.equal(&out.value), "sum of the layer terms differs from the value");

    for (stem, feats) in [("feats0", &out.feats0), ("feats1", &out.feats1)] {
        let layers = indexed(&fx, stem);
        assert!(!layers.is_empty(), "no expect.{stem}.* in the sidecar");
        for k in layers {
            check(&fx, &format!("expect.{stem}.{k}"), &feats[k], &mut checked);
        }
    }

    let n = fx.side.dim("expect.scaled_in0", 0);
    check(&fx, "expect.scaled_in0", &lpips.scale_input(&in0.narrow(0, 0, n)), &mut checked);

    let direct = tch::no_grad(|| lpips.forward(in0, fx.get("input.in1")));
    check(&fx, "expect.lpips_direct", &direct, &mut checked);
    assert!(direct.equal(&out.value.detach()), "LPIPS called directly differs from the perceptual-loss call");

    let all: BTreeSet<String> = fx.side.tensor_names("expect.").into_iter().collect();
    assert_eq!(checked, all, "every expect.* key of the sidecar is compared");
}

#[test]
fn state_dict_errors_name_the_keys() {
    let fx = Fixture::load(FX);
    let vs = nn::VarStore::new(cpu().unwrap());
    let lpips = Lpips::new(vs.root());
    let mut sd = fixture_weights(&fx);
    let dropped = sd.tensors.iter().position(|(n, _)| n.starts_with("net.slice4.")).expect("a net.slice4 key");
    let (name, _) = sd.tensors.remove(dropped);
    sd.tensors.push(("lin5.model.1.weight".into(), Tensor::zeros([1, 8, 1, 1], (Kind::Float, Device::Cpu))));
    let err = lpips.load_state_dict(&sd, "partial").unwrap_err().to_string();
    assert!(err.contains(&name) && err.contains("1 missing") && err.contains("lin5.model.1.weight"), "{err}");
    // Scaling constants other than LPIPS's are refused.
    let mut sd = fixture_weights(&fx);
    for (n, t) in sd.tensors.iter_mut() {
        if n == "scaling_layer.scale" {
            *t = t.ones_like();
        }
    }
    let err = lpips.load_state_dict(&sd, "odd scale").unwrap_err().to_string();
    assert!(err.contains("scaling_layer.scale"), "{err}");
}

/// Writes the fixture's weights in the layouts of the two published files, as torch pickles
/// (legacy format): `vgg16.pth` with torchvision's own `vgg16()` state-dict key names
/// (`features.{i}.*` from the fixture; `classifier.*` present under their names, tiny, ignored)
/// and `vgg.pth` with the `lin{k}.model.1.weight` keys. Prints the torchvision feature keys.
const WRITE_PUBLISHED_LAYOUTS: &str = r#"
import sys, torch, torchvision
from safetensors.torch import load_file
fx = load_file(sys.argv[1])
with torch.device("meta"):
    ref = torchvision.models.vgg16().state_dict()
vgg = {}
for key in ref:
    if key.startswith("features."):
        i = int(key.split(".")[1])
        k = 1 + sum(i >= s for s in (4, 9, 16, 23))
        vgg[key] = fx["weights.net.slice%d.%s" % (k, key[len("features."):])].float().clone()
        assert list(vgg[key].shape) == list(ref[key].shape), key
    else:
        vgg[key] = torch.zeros(1)
torch.save(vgg, sys.argv[2], _use_new_zipfile_serialization=False)
lin = {k[len("weights."):]: v.clone() for k, v in fx.items() if k.startswith("weights.lin")}
torch.save(lin, sys.argv[3], _use_new_zipfile_serialization=False)
print(" ".join(k for k in ref if k.startswith("features.")))
"#;

#[test]
fn loader_maps_torchvision_and_lpips_files() {
    let fx = Fixture::load(FX);
    let dir = tempfile::tempdir().unwrap();
    let (vgg, lin) = (dir.path().join("vgg16-397923af.pth"), dir.path().join("vgg.pth"));
    let fixture = tk::safetensors_path(FX);
    let listing = tk::run_python(
        WRITE_PUBLISHED_LAYOUTS,
        &[fixture.to_str().unwrap(), vgg.to_str().unwrap(), lin.to_str().unwrap()],
    );
    let torchvision_keys: Vec<&str> = listing.split_whitespace().collect();
    assert_eq!(torchvision_keys.len(), fx.with_prefix("weights.net.").len(), "one features.* key per net.slice* key");

    let (vs, lpips) = load_lpips(vgg.to_str().unwrap(), lin.to_str().unwrap(), cpu().unwrap()).unwrap();
    assert!(vs.trainable_variables().is_empty());
    let vars = vs.variables();
    for (name, expect) in fx.with_prefix("weights.") {
        let got = vars.get(&name).unwrap_or_else(|| panic!("no variable {name}"));
        assert!(got.equal(&expect.to_kind(Kind::Float)), "{name} differs from the file");
    }
    let value = tch::no_grad(|| lpips.forward(fx.get("input.in0"), fx.get("input.in1")));
    fx.assert_close("expect.lpips", &value);

    // One file holding the LPIPS module's own keys serves as both arguments.
    let own = dir.path().join("lpips.safetensors");
    sftok_model::checkpoint::save_tensors(fx.with_prefix("weights."), &own).unwrap();
    let own = own.to_str().unwrap();
    let (_vs, lpips) = load_lpips(own, own, cpu().unwrap()).unwrap();
    let value = tch::no_grad(|| lpips.forward(fx.get("input.in0"), fx.get("input.in1")));
    fx.assert_close("expect.lpips", &value);
}

#[test]
fn missing_files_name_the_file_and_where_it_is_published() {
    let _lock = tk::rng_lock(); // random:SEED seeds the global generator
    let dir = tempfile::tempdir().unwrap();
    let vgg = dir.path().join("vgg16-397923af.pth");
    let lin = dir.path().join("vgg.pth");
    let err = load_lpips(vgg.to_str().unwrap(), "random:1", cpu().unwrap()).err().expect("missing VGG16 file").to_string();
    assert!(err.contains(vgg.to_str().unwrap()) && err.contains(VGG16_URL) && err.contains("IMAGENET1K_V1"), "{err}");
    let err = load_lpips("random:1", lin.to_str().unwrap(), cpu().unwrap()).err().expect("missing vgg.pth").to_string();
    assert!(err.contains(lin.to_str().unwrap()) && err.contains(LPIPS_LIN_URL) && err.contains("d507d7349b931f0638a25a48a722f98a"), "{err}");
    let err = load_lpips("random:x", "random:1", cpu().unwrap()).err().expect("bad seed").to_string();
    assert!(err.contains("random:x"), "{err}");
}

#[test]
fn random_weights_give_a_usable_frozen_network() {
    let _lock = tk::rng_lock();
    let fx = Fixture::load(FX);
    let (vs, lpips) = load_lpips("random:1", "random:2", cpu().unwrap()).unwrap();
    assert!(vs.trainable_variables().is_empty());
    let x0 = fx.get("input.in0");
    let x1 = fx.get("input.in1").detach().set_requires_grad(true);
    let same = tch::no_grad(|| lpips.forward(x0, x0));
    assert_eq!(same.size(), [x0.size()[0], 1, 1, 1]);
    assert_eq!(tk::max_abs(&same), 0.0, "LPIPS(x, x) = 0");
    let d = lpips.forward(x0, &x1);
    assert!(tk::scalar(&d.min()) > 0.0, "{d}");
    d.mean(Kind::Float).backward();
    assert!(tk::max_abs(&x1.grad()) > 0.0);
}
