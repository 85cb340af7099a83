//! eval::{stats, frechet, inception_score, prdc} against the `frechet` fixture (numpy / scipy /
//! pytorch-fid / ADM / reference-evaluator values), tolerances from its sidecar.

mod common;

use common::{assert_close_atol as assert_close, load_fixture, get, scalar, tolerance};
use sftok_model::eval::frechet::frechet_distance;
use sftok_model::eval::inception_score::InceptionScore;
use sftok_model::eval::prdc::{ADM_K, precision_recall};
use sftok_model::eval::stats::{RunningStats, Stats};
use std::collections::HashMap;
use tch::{Kind, Tensor};

const FX: &str = "frechet";

fn check(name: &str, got: &Tensor, fx: &HashMap<String, Tensor>) {
    assert_close(name, got, get(fx, name), tolerance(FX, name));
}

fn check_scalar(name: &str, got: f64, fx: &HashMap<String, Tensor>) {
    check(name, &Tensor::from(got), fx);
}

/// Streams `feats` in uneven batches through two accumulators and merges them, so both the
/// batching and the merge are exercised.
fn streamed_stats(feats: &Tensor) -> Stats {
    let n = feats.size()[0];
    let d = feats.size()[1];
    let cut = n / 3;
    let mut first = RunningStats::new(d);
    for b in feats.narrow(0, 0, cut).split(17, 0) {
        first.update(&b).unwrap();
    }
    let mut second = RunningStats::new(d);
    for b in feats.narrow(0, cut, n - cut).split(64, 0) {
        second.update(&b).unwrap();
    }
    first.merge(&second).unwrap();
    assert_eq!(first.count(), n as u64);
    first.finish().unwrap()
}

#[test]
fn statistics_match_numpy_mean_and_cov() {
    let fx = load_fixture(FX);
    for x in ["a", "b"] {
        let s = streamed_stats(get(&fx, &format!("input.feats_{x}")));
        check(&format!("expect.pytorch_fid.mu_{x}"), &s.mu, &fx);
        check(&format!("expect.pytorch_fid.sigma_{x}"), &s.sigma, &fx);
    }
    for x in ["c", "d"] {
        let s = streamed_stats(get(&fx, &format!("input.feats_{x}")));
        check(&format!("expect.pytorch_fid.mu_{x}"), &s.mu, &fx);
        check(&format!("expect.pytorch_fid.sigma_{x}_diag"), &s.sigma.diagonal(0, 0, 1), &fx);
        check(&format!("expect.pytorch_fid.sigma_{x}_block64"), &s.sigma.narrow(0, 0, 64).narrow(1, 0, 64), &fx);
        check(&format!("expect.pytorch_fid.sigma_{x}_rowsum"), &s.sigma.sum_dim_intlist(1, false, Kind::Double), &fx);
    }
}

#[test]
fn frechet_distance_matches_scipy_sqrtm_including_the_singular_case() {
    let fx = load_fixture(FX);
    let stats = |x: &str| streamed_stats(get(&fx, &format!("input.feats_{x}")));
    let ab = frechet_distance(&stats("a"), &stats("b")).unwrap();
    assert!(!ab.singular && !ab.eps_retry);
    check_scalar("expect.pytorch_fid.fid_ab", ab.value, &fx);
    // ADM's variant (float32 means) differs from pytorch-fid's by ~1e-7, inside its tolerance.
    check_scalar("expect.adm.fid_ab", ab.value, &fx);
    // Fewer samples than dimensions: singular covariances, and no ε may be added.
    let cd = frechet_distance(&stats("c"), &stats("d")).unwrap();
    assert!(cd.singular && !cd.eps_retry);
    check_scalar("expect.pytorch_fid.fid_cd", cd.value, &fx);
    let eps_value = scalar(get(&fx, "expect.pytorch_fid.fid_cd_eps_offset"));
    assert!((cd.value - eps_value).abs() > 10.0 * tolerance(FX, "expect.pytorch_fid.fid_cd"), "must not match the ε branch");
}

#[test]
fn reference_evaluator_rfid_on_paired_samples() {
    let fx = load_fixture(FX);
    let real = streamed_stats(&get(&fx, "input.feats_a").narrow(0, 0, 400));
    let fake = streamed_stats(&get(&fx, "input.feats_b").narrow(0, 0, 400));
    check("expect.ref_eval.mu_real", &real.mu, &fx);
    check("expect.ref_eval.sigma_real", &real.sigma, &fx);
    check("expect.ref_eval.mu_fake", &fake.mu, &fx);
    check("expect.ref_eval.sigma_fake", &fake.sigma, &fx);
    check_scalar("expect.ref_eval.rfid", frechet_distance(&real, &fake).unwrap().value, &fx);
}

#[test]
fn inception_score_adm_splits_and_reference_single_split() {
    let fx = load_fixture(FX);
    let probs = get(&fx, "input.is_logits_f16").to_kind(Kind::Float).softmax(1, Kind::Float);
    for (split, key) in [(100, "expect.adm.inception_score_10splits"), (1000, "expect.adm.inception_score_1splits")] {
        let mut is = InceptionScore::new(1000, split);
        // Batches that straddle the split boundaries.
        for b in probs.split(64, 0) {
            is.update(&b).unwrap();
        }
        assert_eq!(is.count(), 1000);
        check_scalar(key, is.adm().unwrap(), &fx);
        if split == 1000 {
            check_scalar("expect.ref_eval.inception_score", is.reference().unwrap(), &fx);
        }
    }
}

#[test]
fn precision_recall_k3_matches_adm() {
    let fx = load_fixture(FX);
    let pr = precision_recall(get(&fx, "input.pr_ref"), get(&fx, "input.pr_smp"), ADM_K).unwrap();
    assert_eq!(pr.precision, scalar(get(&fx, "expect.adm.precision")));
    assert_eq!(pr.recall, scalar(get(&fx, "expect.adm.recall")));
    assert!(pr.smp_in_ref_manifold.equal(get(&fx, "expect.adm.smp_in_ref_manifold")));
    assert!(pr.ref_in_smp_manifold.equal(get(&fx, "expect.adm.ref_in_smp_manifold")));
    check("expect.adm.radii_ref_f64", &pr.radii_ref, &fx);
    check("expect.adm.radii_smp_f64", &pr.radii_smp, &fx);
    println!("precision {} recall {}", pr.precision, pr.recall);
}
