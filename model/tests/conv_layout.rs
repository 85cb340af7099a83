//! Training a conv net in channels-last (what a CUDA device does with the stage-3 pixel decoder,
//! `conv_layout`), run on the CPU: the same gradients and AdamW update as in NCHW, the layout kept
//! by the gradients, the optimiser state and the EMA, and checkpoints written in logical order.

use sftok_model::conv_layout::{is_channels_last, to_channels_last};
use sftok_model::train::ema::Ema;
use sftok_model::train::optim::{AdamW, AdamWConfig, reference_param_groups};
use sftok_model::vqgan::{Decoder, VqganConfig};
use std::collections::BTreeMap;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

const LR: f64 = 1e-4;

fn decoder(seed: i64) -> (nn::VarStore, Decoder) {
    tch::manual_seed(seed);
    let cfg = VqganConfig { num_channels: 3, hidden_channels: 32, channel_mult: vec![1, 2], num_res_blocks: 1, z_channels: 8, num_embeddings: 16 };
    let vs = nn::VarStore::new(Device::Cpu);
    let d = Decoder::new(vs.root(), &cfg);
    (vs, d)
}

fn named(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables().into_iter().collect()
}

/// One MSE step: forward, backward, fused AdamW, EMA; returns the loss.
fn step(d: &Decoder, opt: &mut AdamW, ema: &mut Ema, vars: &BTreeMap<String, Tensor>, z: &Tensor, target: &Tensor) -> f64 {
    let loss = (d.forward(z) - target).square().mean(Kind::Float);
    loss.backward();
    opt.step(LR).unwrap();
    ema.update(vars).unwrap();
    loss.double_value(&[])
}

#[test]
fn a_channels_last_pixel_decoder_trains_like_nchw_and_saves_in_logical_order() {
    let (vs_a, dec_a) = decoder(3);
    let (vs_b, dec_b) = decoder(3);
    let converted = to_channels_last(&vs_b, "").unwrap();
    let (va, vb) = (named(&vs_a), named(&vs_b));
    assert!(converted >= 4, "{converted} conv weights converted");
    for (name, t) in &vb {
        assert_eq!(is_channels_last(t), t.dim() == 4, "{name}");
        assert!(t.equal(&va[name]), "{name}: converting the layout changed values");
    }
    let groups = |v: &BTreeMap<String, Tensor>| reference_param_groups(v.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), 1e-4);
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8 };
    let (mut opt_a, mut opt_b) = (AdamW::new(&groups(&va), cfg), AdamW::new(&groups(&vb), cfg));
    let (mut ema_a, mut ema_b) = (Ema::new(&va, 0.999), Ema::new(&vb, 0.999));
    tch::manual_seed(9);
    let z = Tensor::randn([2, 8, 4, 4], (Kind::Float, Device::Cpu));
    let target = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let mut losses = Vec::new();
    for k in 0..3 {
        let (la, lb) = (step(&dec_a, &mut opt_a, &mut ema_a, &va, &z, &target), step(&dec_b, &mut opt_b, &mut ema_b, &vb, &z, &target));
        // The layouts round differently (~1e-7); Adam's normalised update can turn that into up to
        // 2·lr per weight and step, which the later losses carry.
        assert!((la - lb).abs() <= 1e-5 * la.abs(), "step {k}: loss {la} (NCHW) vs {lb} (channels-last)");
        losses.push(lb);
        if k == 0 {
            // Gradients follow their parameter's layout (the fused AdamW treats them as flat arrays).
            for (name, t) in &vb {
                assert_eq!(is_channels_last(&t.grad()), t.dim() == 4, "gradient of {name}");
            }
        }
        opt_a.zero_grad();
        opt_b.zero_grad();
    }
    assert!(losses[2] < losses[0], "the loss falls: {losses:?}");
    // Bound: 3 steps of at most 2·lr each. An update applied in the wrong element order would be
    // off by the weights' own scale (~0.1).
    let max_abs = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    for (name, t) in &vb {
        let d = max_abs(&va[name], t);
        assert!(d <= 6.0 * LR, "{name}: weights after 3 steps differ by {d:e}");
        assert_eq!(is_channels_last(t), t.dim() == 4, "{name} keeps its layout");
    }
    let state: BTreeMap<String, Tensor> = opt_b.state_tensors().into_iter().collect();
    let (ema_b_named, ema_a_named): (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) =
        (ema_b.named().into_iter().collect(), ema_a.named().into_iter().collect());
    let conv = vb.iter().find(|(_, t)| t.dim() == 4).map(|(n, _)| n.clone()).unwrap();
    assert!(is_channels_last(&state[&format!("exp_avg.{conv}")]) && is_channels_last(&ema_b_named[&conv]));
    assert!(max_abs(&ema_a_named[&conv], &ema_b_named[&conv]) <= 6.0 * LR);

    // A checkpoint holds the logical values: read back, it equals the NCHW copy of the weight.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    sftok_model::checkpoint::save_tensors(vb.iter().map(|(n, t)| (n.clone(), t.shallow_clone())), &path).unwrap();
    let back: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path).unwrap().into_iter().collect();
    for (name, t) in &vb {
        assert!(back[name].equal(&t.contiguous()), "{name}: the saved tensor is not the weight");
    }
}
