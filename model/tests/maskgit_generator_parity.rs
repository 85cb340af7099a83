//! ImageBert (the MaskGIT generator) vs ../shared/fixtures/maskgit-generator-tiny: logits with
//! label dropout, the training masks, MLM loss and every gradient, and the seeded sampling runs
//! (ids exact). Seeds, settings, shapes and key names come from the sidecar; the full-size key list
//! from ../shared/spec/keys/maskgit-generator.json.

use sftok_model::device::cpu;
use sftok_model::checkpoint::StateDict;
use sftok_model::config::Config;
use sftok_model::image_bert::{self, ImageBert, ImageBertConfig};
use sftok_model::losses::{masked_token_accuracy, masked_token_ce};
use sftok_model::maskgit_sampler::{GeneratorSampling, GuidanceDecay, generate};
use sftok_model::train::optim::uses_weight_decay;
use sftok_testkit_tch::{self as tk};
use std::collections::BTreeMap;
use tch::{Device, Tensor, nn};

const NAME: &str = "maskgit-generator-tiny";

fn config_of(fx: &tk::Fixture) -> Config {
    Config::from_yaml_str(&fx.side.config().to_string(), &[]).expect("fixture config parses")
}

fn build(fx: &tk::Fixture) -> (nn::VarStore, ImageBert, Config) {
    let cfg = config_of(fx);
    let vs = nn::VarStore::new(cpu().unwrap());
    let model = ImageBert::new(&vs.root(), &ImageBertConfig::from_config(&cfg).unwrap());
    image_bert::load_state_dict(&vs, StateDict { tensors: fx.with_prefix("weights.") }).expect("strict load of the fixture weights");
    (vs, model, cfg)
}

#[test]
fn forward_with_label_dropout_matches_the_reference() {
    let _rng = tk::rng_lock();
    let fx = tk::Fixture::load(NAME);
    let (_vs, model, _) = build(&fx);
    let (ids, cond) = (fx.get("input.input_ids"), fx.get("input.condition"));
    tch::manual_seed(fx.side.seed("fwd"));
    let (cond_logits, none_dropped) = model.forward(ids, cond, 0.0, false);
    let (uncond_logits, all_dropped) = model.forward(ids, cond, 1.0, false);
    let (half_logits, half_dropped) = model.forward(ids, cond, 0.5, false);
    fx.assert_close("expect.forward.cond.logits", &cond_logits);
    fx.assert_close("expect.forward.uncond.logits", &uncond_logits);
    fx.assert_close("expect.forward.half.logits", &half_logits);
    fx.assert_exact("expect.forward.half.dropped", &half_dropped);
    assert!(!bool::try_from(none_dropped.any()).unwrap() && bool::try_from(all_dropped.all()).unwrap());
    // The null class really is a different input: otherwise CFG would be a no-op.
    assert!(tk::max_abs_diff(&cond_logits, &uncond_logits) > 1e-3);
}

#[test]
fn training_step_matches_masks_loss_and_every_gradient() {
    let _rng = tk::rng_lock();
    let fx = tk::Fixture::load(NAME);
    let (vs, model, cfg) = build(&fx);
    let tokens = fx.get("input.tokens");
    let cond = fx.get("input.condition");
    tch::manual_seed(fx.side.seed("train"));
    let (masked, masks) = model.masking_input_tokens(tokens);
    let (logits, dropped) = model.forward(&masked, cond, cfg.model.img_generator.class_label_dropout, true);
    let l = &cfg.losses;
    let loss = masked_token_ce(&logits, tokens, &masks, l.label_smoothing, l.loss_weight_unmasked_token);
    fx.assert_exact("expect.train.masked_ids", &masked);
    fx.assert_exact("expect.train.masks", &masks);
    fx.assert_exact("expect.train.label_dropped", &dropped);
    let counts: Vec<i64> = Vec::try_from(masks.sum_dim_intlist(1, false, tch::Kind::Int64)).unwrap();
    let want: Vec<i64> = fx.side.at("/train_mask_counts").as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(counts, want, "mask counts");
    fx.assert_close("expect.train.logits", &logits);
    fx.assert_close("expect.train.loss", &loss);
    fx.assert_close("expect.train.correct_tokens", &masked_token_accuracy(&logits, tokens, &masks));
    loss.backward();
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let grads = fx.side.tensor_names("grad.");
    assert_eq!(grads.len(), vars.len(), "a gradient in the fixture for every parameter");
    for key in grads {
        let name = key.strip_prefix("grad.").unwrap();
        let p = vars.get(name).unwrap_or_else(|| panic!("no parameter {name}"));
        fx.assert_close(&key, &p.grad());
    }
}

#[test]
fn seeded_sampling_runs_give_the_reference_ids() {
    let _rng = tk::rng_lock();
    let fx = tk::Fixture::load(NAME);
    let (_vs, model, _) = build(&fx);
    let cond = fx.get("input.condition");
    let runs = fx.side.at("/sample_runs").as_object().expect("sample_runs").clone();
    assert!(!runs.is_empty());
    let mut decays = Vec::new();
    for (run, s) in runs {
        let settings = GeneratorSampling {
            guidance_scale: s["guidance_scale"].as_f64().unwrap(),
            guidance_decay: GuidanceDecay::parse(s["guidance_decay"].as_str().unwrap()).unwrap(),
            guidance_scale_pow: s["guidance_scale_pow"].as_f64().unwrap(),
            randomize_temperature: s["randomize_temperature"].as_f64().unwrap(),
            softmax_temperature_annealing: s["softmax_temperature_annealing"].as_bool().unwrap(),
            num_steps: s["num_sample_steps"].as_i64().unwrap(),
        };
        decays.push(settings.guidance_decay);
        tch::manual_seed(s["seed"].as_i64().unwrap());
        let out = generate(&model, cond, &settings);
        fx.assert_exact(&format!("expect.sample.{run}.step_input_ids"), &out.step_input_ids);
        fx.assert_exact(&format!("expect.sample.{run}.ids"), &out.ids);
        fx.assert_close(&format!("expect.sample.{run}.last_logits"), &out.last_logits);
    }
    println!("sampling runs: {decays:?}");
}

/// The full-size model (configs/sftok_maskgit.yaml) has exactly the reference's keys and shapes,
/// its parameter count, the spec's weight-decay split, and accepts a legacy `position_ids` buffer.
#[test]
fn full_size_keys_parameter_count_and_decay_groups() {
    let _rng = tk::rng_lock(); // construction draws from the generator the other tests seed
    let keys: BTreeMap<String, Vec<i64>> =
        serde_json::from_str(&std::fs::read_to_string(tk::spec_dir().join("keys/maskgit-generator.json")).unwrap()).unwrap();
    let cfg = Config::load(&tk::repo_root().join("configs/sftok_maskgit.yaml"), &[]).unwrap();
    let vs = nn::VarStore::new(cpu().unwrap());
    let _model = tch::no_grad(|| ImageBert::new(&vs.root(), &ImageBertConfig::from_config(&cfg).unwrap()));
    let ours: BTreeMap<String, Vec<i64>> = vs.variables().into_iter().map(|(k, t)| (k, t.size())).collect();
    assert_eq!(ours, keys, "state-dict keys and shapes");
    let count: i64 = keys.values().map(|s| s.iter().product::<i64>()).sum();
    let our_count: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    assert_eq!(our_count, count);
    println!("{} tensors, {count} parameters", keys.len());
    // generator-maskgit.md §4.4: 145 tensors / 176,160,768 values with decay, 246 / 7,361,792 without.
    let (mut decay, mut no_decay) = ((0, 0i64), (0, 0i64));
    for (k, s) in &keys {
        let side = if uses_weight_decay(k, s.len()) { &mut decay } else { &mut no_decay };
        side.0 += 1;
        side.1 += s.iter().product::<i64>();
    }
    assert_eq!(decay, (145, 176_160_768));
    assert_eq!(no_decay, (246, 7_361_792));

    // A checkpoint from transformers < 4.31 carries `position_ids`: accepted and ignored. Any
    // other extra key is refused.
    let mut sd: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    sd.push(("model.embeddings.position_ids".into(), Tensor::arange(keys["model.embeddings.position_embeddings.weight"][0], (tch::Kind::Int64, Device::Cpu)).unsqueeze(0)));
    image_bert::load_state_dict(&vs, StateDict { tensors: sd.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect() }).expect("position_ids is ignored");
    sd.push(("model.pooler.dense.weight".into(), Tensor::zeros([1], (tch::Kind::Float, Device::Cpu))));
    let err = image_bert::load_state_dict(&vs, StateDict { tensors: sd }).unwrap_err();
    assert!(format!("{err:#}").contains("model.pooler.dense.weight"), "{err:#}");
}
