//! SFTok vs ../shared/fixtures/sftok-tiny-stage12 and sftok-tiny-stage3 (reference outputs at tiny
//! sizes): encoder, quantizer, decoder in every masking mode, seeded generate, losses, gradients,
//! stage-3 soft path. Discrete outputs must match exactly, floats within the sidecar tolerances.
//! Seeds, loss weights and the gradient set come from the sidecars (`seeds`, `config.losses`,
//! `tensors`), so another fixture set runs through the same tests (`SFTOK_FIXTURES`).

use sftok_model::device::cpu;
use sftok_model::checkpoint::{self, StateDict};
use sftok_model::config::Config;
use sftok_model::losses::masked_token_ce;
use sftok_model::multistep_decoder::DecoderInput;
use sftok_model::sftok::{SFTok, SFTokConfig};
use sftok_testkit_tch::{self as tk, Bound};
use std::collections::BTreeSet;
use std::ops::Deref;
use tch::{Kind, Tensor, nn};

struct Fixture {
    fx: tk::Fixture,
    vs: nn::VarStore,
    model: SFTok,
}

/// The fixture's tensors and sidecar (`f.t`, `f.side`, `f.assert_close(..)`, …).
impl Deref for Fixture {
    type Target = tk::Fixture;
    fn deref(&self) -> &tk::Fixture {
        &self.fx
    }
}

fn build(name: &str) -> Fixture {
    let fx = tk::Fixture::load(name);
    let side = &fx.side;
    // The sidecar's config is the reference's OmegaConf tree: parse it with our config loader.
    let mut tree = side.config().clone();
    tree["model"]["size_tables"] = side.at("/size_tables").clone();
    if side["pixel_decoder_config"].is_object() {
        // Stage 3: the pixel decoder's sizes through our config key `model.pixel_decoder`.
        let p = side.at("/pixel_decoder_config");
        tree["model"]["pixel_decoder"] = serde_json::json!({
            "num_channels": p["num_channels"],
            "hidden_channels": p["hidden_channels"],
            "channel_mult": p["channel_mult"],
            "num_res_blocks": p["num_res_blocks"],
            "z_channels": p["z_channels"],
            "num_embeddings": side.at("/pixel_quantize/num_embeddings"),
        });
    }
    let cfg = Config::from_yaml_str(&tree.to_string(), &[]).expect("fixture config parses");
    let scfg = SFTokConfig::from_config(&cfg).unwrap();
    let vs = nn::VarStore::new(cpu().unwrap());
    let model = SFTok::new(&vs.root(), &scfg);
    let sd = StateDict { tensors: fx.with_prefix("weights.") };
    checkpoint::load_into(&vs, &sd, true).expect("strict load of the fixture weights");
    Fixture { fx, vs, model }
}

impl Fixture {
    fn close(&self, key: &str, got: &Tensor) {
        self.assert_close(key, got);
    }
    fn exact(&self, key: &str, got: &Tensor) {
        self.assert_exact(key, got);
    }
    fn scalar_close(&self, key: &str, got: &Tensor) {
        self.close(key, &got.reshape([]));
    }
    /// `seeds[name]` of the sidecar, set as libtorch's seed.
    fn seed(&self, name: &str) {
        tch::manual_seed(self.side.seed(name));
    }
    /// `config.losses.<key>`.
    fn loss_param(&self, key: &str) -> f64 {
        self.side.f64_at(&format!("/config/losses/{key}"))
    }
    /// Steps 1–2 of both fixtures: encoder output, then the quantizer's latent and indices.
    fn check_encoder_and_quantizer(&self) -> sftok_model::optvq::QuantizerOutput {
        let m = &self.model;
        let z = m.encoder.forward(&self.t["input.x"], &m.latent_tokens);
        self.close("expect.encoder.z", &z);
        let (z_q, q) = m.quantize.forward(&z);
        self.close("expect.quantize.z_q", &z_q);
        self.exact("expect.quantize.min_encoding_indices", &q.min_encoding_indices);
        q
    }
}

#[test]
fn stage12_forward_paths_match_the_reference() {
    let _rng = tk::rng_lock();
    let f = build("sftok-tiny-stage12");
    let m = &f.model;
    let x = &f.t["input.x"];
    let codes = &f.t["input.proxy_codes"];
    tch::no_grad(|| {
        // 1–2. encoder and quantizer
        let q = f.check_encoder_and_quantizer();
        f.scalar_close("expect.quantize.quantizer_loss", &q.quantizer_loss);
        f.scalar_close("expect.quantize.commitment_loss", &q.commitment_loss);
        f.scalar_close("expect.quantize.codebook_loss", &q.codebook_loss);
        // 3. decoder alone, no masking
        let (logits, _, _) = m.decoder.forward(&f.t["input.ids_partial"], &f.t["expect.quantize.z_q"], &DecoderInput::Ids, &m.cfg.masking);
        f.close("expect.decoder.nomask.logits", &logits);
        // 4. all masked
        let out = m.forward(x, codes, &DecoderInput::MaskAll);
        f.close("expect.forward.maskall.logits", &out.logits);
        f.exact("expect.forward.maskall.masks", &out.masks);
        // 5. random masking
        f.seed("train_mask");
        let out = m.forward(x, codes, &DecoderInput::Random(None));
        f.exact("expect.forward.randmask.masks", &out.masks);
        f.exact("expect.forward.randmask.ids", &out.ids);
        f.close("expect.forward.randmask.logits", &out.logits);
        // 6. guided masking
        f.seed("guided");
        let out = m.forward(x, codes, &DecoderInput::Random(Some(&f.t["input.guided_mask"])));
        f.exact("expect.forward.guided.masks", &out.masks);
        f.exact("expect.forward.guided.ids", &out.ids);
        f.close("expect.forward.guided.logits", &out.logits);
        // 7. iterative decoding
        f.seed("generate");
        let dec = m.decode_tokens(&f.t["expect.quantize.min_encoding_indices"]);
        assert!(dec.image.is_none());
        f.exact("expect.generate.step_input_ids", &dec.generated.step_input_ids);
        f.exact("expect.generate.ids", &dec.generated.ids);
        f.close("expect.generate.last_logits", &dec.generated.last_logits);
    });
}

#[test]
fn stage12_losses_and_gradients_match_the_reference() {
    let _rng = tk::rng_lock();
    let f = build("sftok-tiny-stage12");
    let m = &f.model;
    let x = &f.t["input.x"];
    let codes = &f.t["input.proxy_codes"];
    let (label_smoothing, unmasked_weight) = (f.loss_param("label_smoothing"), f.loss_param("loss_weight_unmasked_token"));
    let quantizer_weight = f.loss_param("quantizer_weight");
    let loss_of = |out: &sftok_model::sftok::ForwardOutput| {
        let rec = masked_token_ce(&out.logits, codes, &out.masks, label_smoothing, unmasked_weight);
        let total = &rec + &out.quant.quantizer_loss * quantizer_weight;
        (rec, total)
    };
    // 8. stage-1 loss (everything masked)
    tch::no_grad(|| {
        let out = m.forward(x, codes, &DecoderInput::MaskAll);
        let (rec, total) = loss_of(&out);
        f.scalar_close("expect.train_s1.reconstruction_loss", &rec);
        f.scalar_close("expect.train_s1.total_loss", &total);
        // 9. stage-2 step values: guidance pass, then the guided forward
        f.seed("train_s2");
        let g = m.generate_guided_mask(x, codes);
        let out = m.forward(x, codes, &DecoderInput::Random(Some(&g)));
        f.exact("expect.train_s2.masks", &out.masks);
        f.exact("expect.train_s2.ids", &out.ids);
        let (rec, total) = loss_of(&out);
        f.scalar_close("expect.train_s2.reconstruction_loss", &rec);
        f.scalar_close("expect.train_s2.total_loss", &total);
        // The trainer's single-encode step gives the same draws and values.
        f.seed("train_s2");
        let out = m.forward_self_forcing_one_encode(x, codes);
        f.exact("expect.train_s2.masks", &out.masks);
        f.exact("expect.train_s2.ids", &out.ids);
        f.scalar_close("expect.train_s2.total_loss", &loss_of(&out).1);
    });
    // 10. gradient step: every parameter's gradient
    f.seed("train_step");
    let out = m.forward(x, codes, &DecoderInput::Random(None));
    f.exact("expect.train.masks", &out.masks);
    f.exact("expect.train.ids", &out.ids);
    let (rec, total) = loss_of(&out);
    f.scalar_close("expect.train.reconstruction_loss", &rec);
    f.scalar_close("expect.train.quantizer_loss", &out.quant.quantizer_loss);
    f.scalar_close("expect.train.commitment_loss", &out.quant.commitment_loss);
    f.scalar_close("expect.train.codebook_loss", &out.quant.codebook_loss);
    f.scalar_close("expect.train.total_loss", &total);
    total.backward();
    // Every floating-point parameter has a stored gradient, and every stored gradient is compared
    // (the int64 `quantize.index_offset` buffer has none).
    let mut checked = BTreeSet::new();
    for (name, var) in f.vs.variables() {
        if var.kind() == Kind::Int64 {
            continue;
        }
        let key = format!("grad.{name}");
        let grad = var.grad();
        assert!(grad.defined(), "{name} received no gradient");
        tk::assert_within(&f.side, &key, Bound::Atol, &grad, f.get(&key));
        checked.insert(key);
    }
    let stored: BTreeSet<String> = f.side.tensor_names("grad.").into_iter().collect();
    assert_eq!(checked, stored, "the compared gradients are exactly the fixture's grad.* tensors");
}

#[test]
fn stage3_soft_path_and_generate_match_the_reference() {
    let _rng = tk::rng_lock();
    let f = build("sftok-tiny-stage3");
    let m = &f.model;
    let x = &f.t["input.x"];
    let codes = &f.t["input.proxy_codes"];
    tch::no_grad(|| {
        f.check_encoder_and_quantizer();
        let g = m.generate_guided_mask(x, codes);
        f.close("expect.forward.guidance_logits", &g);
        f.seed("s3_forward");
        let out = m.forward(x, codes, &DecoderInput::Random(Some(&g)));
        f.exact("expect.forward.masks", &out.masks);
        f.exact("expect.forward.ids", &out.ids);
        f.close("expect.forward.logits", &out.logits);
        f.close("expect.forward.soft_embedding", &m.soft_embedding(&out.logits));
        f.close("expect.forward.decoded_img", out.decoded_img.as_ref().unwrap());
        f.seed("s3_generate");
        let dec = m.decode_tokens(&f.t["expect.quantize.min_encoding_indices"]);
        f.exact("expect.generate.step_input_ids", &dec.generated.step_input_ids);
        f.exact("expect.generate.ids", &dec.generated.ids);
        f.close("expect.generate.last_logits", &dec.generated.last_logits);
        f.close("expect.generate.soft_embedding", &m.soft_embedding(&dec.generated.last_logits));
        f.close("expect.generate.decoded_img", dec.image.as_ref().unwrap());
    });
}

/// Stage 2's step as the trainer runs it (one encode, reused by the guidance pass) against the
/// reference's sequence (guidance with its own encode, then the forward): the same loss and the
/// same gradient for every parameter, bit for bit, in float32.
#[test]
fn the_single_encode_self_forcing_step_is_the_two_encode_one_bit_for_bit() {
    let _rng = tk::rng_lock();
    let f = build("sftok-tiny-stage12");
    let (m, x, codes) = (&f.model, &f.t["input.x"], &f.t["input.proxy_codes"]);
    let run = |single: bool| {
        sftok_model::train::optim::set_grads_to_none(f.vs.variables().values());
        f.seed("train_s2");
        let out = if single {
            m.forward_self_forcing_one_encode(x, codes)
        } else {
            let g = m.generate_guided_mask(x, codes);
            m.forward(x, codes, &DecoderInput::Random(Some(&g)))
        };
        let rec = masked_token_ce(&out.logits, codes, &out.masks, f.loss_param("label_smoothing"), f.loss_param("loss_weight_unmasked_token"));
        let loss = rec + &out.quant.quantizer_loss * f.loss_param("quantizer_weight");
        loss.backward();
        let grads: Vec<(String, Tensor)> =
            f.vs.variables().into_iter().filter(|(_, v)| v.grad().defined()).map(|(n, v)| (n, v.grad().copy())).collect();
        (loss.double_value(&[]), out.ids, grads)
    };
    let (l2, ids2, g2) = run(false);
    let (l1, ids1, g1) = run(true);
    assert_eq!(l1.to_bits(), l2.to_bits(), "loss {l1} vs {l2}");
    assert!(ids1.equal(&ids2));
    let g2: std::collections::BTreeMap<String, Tensor> = g2.into_iter().collect();
    assert_eq!(g1.len(), g2.len());
    assert!(g1.len() > 10);
    for (name, g) in &g1 {
        assert!(g.equal(&g2[name]), "gradient of {name} differs");
    }
}
