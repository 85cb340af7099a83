//! SFTok vs ../shared/fixtures/sftok-tiny-stage12 and sftok-tiny-stage3 (reference outputs at tiny
//! sizes): encoder, quantizer, decoder in every masking mode, seeded generate, losses, gradients,
//! stage-3 soft path. Discrete outputs must match exactly, floats within the sidecar tolerances.

mod common;

use sftok_model::checkpoint::{self, StateDict};
use sftok_model::config::Config;
use sftok_model::losses::masked_token_ce;
use sftok_model::multistep_decoder::DecoderInput;
use sftok_model::sftok::{SFTok, SFTokConfig};
use sftok_model::vqgan::VqganConfig;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor, nn};

struct Fixture {
    side: serde_json::Value,
    t: HashMap<String, Tensor>,
    vs: nn::VarStore,
    model: SFTok,
}

fn build(name: &str) -> Fixture {
    let side = common::sidecar(name);
    let t = common::load_fixture(name);
    // The sidecar's config is the reference's OmegaConf tree: parse it with our config loader.
    let mut tree = side["config"].clone();
    tree["model"]["size_tables"] = side["size_tables"].clone();
    let cfg = Config::from_yaml_str(&tree.to_string(), &[]).expect("fixture config parses");
    let mut scfg = SFTokConfig::from_config(&cfg).unwrap();
    if let Some(p) = side.get("pixel_decoder_config") {
        let i = |k: &str| p[k].as_i64().unwrap();
        scfg.pixel_decoder = Some(VqganConfig {
            num_channels: i("num_channels"),
            hidden_channels: i("hidden_channels"),
            channel_mult: p["channel_mult"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect(),
            num_res_blocks: i("num_res_blocks"),
            z_channels: i("z_channels"),
            num_embeddings: 1024,
        });
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let model = SFTok::new(&vs.root(), &scfg);
    let sd = StateDict { tensors: t.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect() }.strip_prefix("weights.");
    checkpoint::load_into(&vs, &sd, true).expect("strict load of the fixture weights");
    Fixture { side, t, vs, model }
}

impl Fixture {
    fn close(&self, key: &str, got: &Tensor) {
        common::assert_close(&self.side, key, got, &self.t[key]);
    }
    fn exact(&self, key: &str, got: &Tensor) {
        let e = &self.t[key];
        assert_eq!(got.size(), e.size(), "{key} shape");
        assert!(got.to_kind(e.kind()).equal(e), "{key}: differs from the reference\n got {got}\n expected {e}");
    }
    fn scalar_close(&self, key: &str, got: &Tensor) {
        self.close(key, &got.reshape([]));
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
    let _rng = common::rng_lock();
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
        // 5. random masking (seed 1234)
        tch::manual_seed(1234);
        let out = m.forward(x, codes, &DecoderInput::Random(None));
        f.exact("expect.forward.randmask.masks", &out.masks);
        f.exact("expect.forward.randmask.ids", &out.ids);
        f.close("expect.forward.randmask.logits", &out.logits);
        // 6. guided masking (seed 1235)
        tch::manual_seed(1235);
        let out = m.forward(x, codes, &DecoderInput::Random(Some(&f.t["input.guided_mask"])));
        f.exact("expect.forward.guided.masks", &out.masks);
        f.exact("expect.forward.guided.ids", &out.ids);
        f.close("expect.forward.guided.logits", &out.logits);
        // 7. iterative decoding (seed 1238)
        tch::manual_seed(1238);
        let dec = m.decode_tokens(&f.t["expect.quantize.min_encoding_indices"]);
        assert!(dec.image.is_none());
        f.exact("expect.generate.step_input_ids", &dec.generated.step_input_ids);
        f.exact("expect.generate.ids", &dec.generated.ids);
        f.close("expect.generate.last_logits", &dec.generated.last_logits);
    });
}

#[test]
fn stage12_losses_and_gradients_match_the_reference() {
    let _rng = common::rng_lock();
    let f = build("sftok-tiny-stage12");
    let m = &f.model;
    let x = &f.t["input.x"];
    let codes = &f.t["input.proxy_codes"];
    let loss_of = |out: &sftok_model::sftok::ForwardOutput| {
        let rec = masked_token_ce(&out.logits, codes, &out.masks, 0.0, 0.1);
        let total = &rec + &out.quant.quantizer_loss * 1.0;
        (rec, total)
    };
    // 8. stage-1 loss (everything masked)
    tch::no_grad(|| {
        let out = m.forward(x, codes, &DecoderInput::MaskAll);
        let (rec, total) = loss_of(&out);
        f.scalar_close("expect.train_s1.reconstruction_loss", &rec);
        f.scalar_close("expect.train_s1.total_loss", &total);
        // 9. stage-2 step values: guidance pass, then the guided forward (seed 1238)
        tch::manual_seed(1238);
        let g = m.generate_guided_mask(x, codes);
        let out = m.forward(x, codes, &DecoderInput::Random(Some(&g)));
        f.exact("expect.train_s2.masks", &out.masks);
        f.exact("expect.train_s2.ids", &out.ids);
        let (rec, total) = loss_of(&out);
        f.scalar_close("expect.train_s2.reconstruction_loss", &rec);
        f.scalar_close("expect.train_s2.total_loss", &total);
    });
    // 10. gradient step (seed 1237): every parameter's gradient
    tch::manual_seed(1237);
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
    let mut checked = 0;
    for (name, var) in f.vs.variables() {
        if var.kind() == Kind::Int64 {
            continue; // quantize.index_offset buffer
        }
        let key = format!("grad.{name}");
        let grad = var.grad();
        assert!(grad.defined(), "{name} received no gradient");
        let tol = f.side["tolerances"][&key]["suggested_atol"].as_f64().unwrap_or_else(|| panic!("no tolerance for {key}"));
        let d = common::max_abs_diff(&grad, &f.t[&key]);
        assert!(d <= tol, "{key}: max abs diff {d:e} > {tol:e}");
        checked += 1;
    }
    assert_eq!(checked, 77, "every parameter's gradient is compared");
}

#[test]
fn stage3_soft_path_and_generate_match_the_reference() {
    let _rng = common::rng_lock();
    let f = build("sftok-tiny-stage3");
    let m = &f.model;
    let x = &f.t["input.x"];
    let codes = &f.t["input.proxy_codes"];
    tch::no_grad(|| {
        f.check_encoder_and_quantizer();
        let g = m.generate_guided_mask(x, codes);
        f.close("expect.forward.guidance_logits", &g);
        tch::manual_seed(2234);
        let out = m.forward(x, codes, &DecoderInput::Random(Some(&g)));
        f.exact("expect.forward.masks", &out.masks);
        f.exact("expect.forward.ids", &out.ids);
        f.close("expect.forward.logits", &out.logits);
        f.close("expect.forward.soft_embedding", &m.soft_embedding(&out.logits));
        f.close("expect.forward.decoded_img", out.decoded_img.as_ref().unwrap());
        tch::manual_seed(2236);
        let dec = m.decode_tokens(&f.t["expect.quantize.min_encoding_indices"]);
        f.exact("expect.generate.step_input_ids", &dec.generated.step_input_ids);
        f.exact("expect.generate.ids", &dec.generated.ids);
        f.close("expect.generate.last_logits", &dec.generated.last_logits);
        f.close("expect.generate.soft_embedding", &m.soft_embedding(&dec.generated.last_logits));
        f.close("expect.generate.decoded_img", dec.image.as_ref().unwrap());
    });
}
