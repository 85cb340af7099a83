//! eval::{stats, frechet, inception_score, prdc} against the `frechet` fixture (numpy / scipy /
//! pytorch-fid / ADM / reference-evaluator values), tolerances from its sidecar. Row counts come
//! from the inputs, the feature sets and their summaries from the sidecar's `tensors`, the IS
//! split sizes and the precision/recall k from its `details`.

use sftok_model::eval::frechet::frechet_distance;
use sftok_model::eval::inception_score::InceptionScore;
use sftok_model::eval::prdc::precision_recall;
use sftok_model::eval::stats::{RunningStats, Stats};
use sftok_testkit_tch::{Fixture, scalar};
use tch::{Kind, Tensor};

const FX: &str = "frechet";

fn check(name: &str, got: &Tensor, fx: &Fixture) {
    fx.assert_close(name, got);
}

fn check_scalar(name: &str, got: f64, fx: &Fixture) {
    check(name, &Tensor::from(got), fx);
}

/// The feature sets `x` of the fixture's `input.feats_<x>`.
fn feature_sets(fx: &Fixture) -> Vec<String> {
    let sets: Vec<String> =
        fx.side.tensor_names("input.feats_").iter().map(|k| k["input.feats_".len()..].to_string()).collect();
    assert!(!sets.is_empty(), "no input.feats_* in the fixture");
    sets
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
    let fx = Fixture::load(FX);
    let mut summarised = 0;
    for x in feature_sets(&fx) {
        let s = streamed_stats(fx.get(&format!("input.feats_{x}")));
        check(&format!("expect.pytorch_fid.mu_{x}"), &s.mu, &fx);
        let full = format!("expect.pytorch_fid.sigma_{x}");
        if fx.t.contains_key(&full) {
            check(&full, &s.sigma, &fx);
            continue;
        }
        // Too big to store: the diagonal, the leading block (its size from the stored shape) and
        // the row sums.
        summarised += 1;
        check(&format!("{full}_diag"), &s.sigma.diagonal(0, 0, 1), &fx);
        let blocks = fx.side.tensor_names(&format!("{full}_block"));
        assert_eq!(blocks.len(), 1, "one {full}_block* summary: {blocks:?}");
        let (rows, cols) = (fx.side.dim(&blocks[0], 0), fx.side.dim(&blocks[0], 1));
        check(&blocks[0], &s.sigma.narrow(0, 0, rows).narrow(1, 0, cols), &fx);
        check(&format!("{full}_rowsum"), &s.sigma.sum_dim_intlist(1, false, Kind::Double), &fx);
    }
    assert!(summarised > 0, "the fixture has high-dimensional feature sets with summarised covariances");
}

#[test]
fn frechet_distance_matches_scipy_sqrtm_including_the_singular_case() {
    let fx = Fixture::load(FX);
    let stats = |x: &str| streamed_stats(fx.get(&format!("input.feats_{x}")));
    let ab = frechet_distance(&stats("a"), &stats("b")).unwrap();
    assert!(!ab.singular && !ab.eps_retry);
    check_scalar("expect.pytorch_fid.fid_ab", ab.value, &fx);
    // ADM's variant (float32 means) differs from pytorch-fid's by ~1e-7, inside its tolerance.
    check_scalar("expect.adm.fid_ab", ab.value, &fx);
    // Fewer samples than dimensions: singular covariances, and no ε may be added.
    let cd = frechet_distance(&stats("c"), &stats("d")).unwrap();
    assert!(cd.singular && !cd.eps_retry);
    check_scalar("expect.pytorch_fid.fid_cd", cd.value, &fx);
    let eps_value = scalar(fx.get("expect.pytorch_fid.fid_cd_eps_offset"));
    assert!((cd.value - eps_value).abs() > 10.0 * fx.side.tolerance("expect.pytorch_fid.fid_cd").atol(), "must not match the ε branch");
}

#[test]
fn reference_evaluator_rfid_on_paired_samples() {
    let fx = Fixture::load(FX);
    // Paired samples: real = feats_a[:n], fake = feats_b[:n], n = min of the two row counts.
    let (a, b) = (fx.get("input.feats_a"), fx.get("input.feats_b"));
    let n = a.size()[0].min(b.size()[0]);
    let real = streamed_stats(&a.narrow(0, 0, n));
    let fake = streamed_stats(&b.narrow(0, 0, n));
    check("expect.ref_eval.mu_real", &real.mu, &fx);
    check("expect.ref_eval.sigma_real", &real.sigma, &fx);
    check("expect.ref_eval.mu_fake", &fake.mu, &fx);
    check("expect.ref_eval.sigma_fake", &fake.sigma, &fx);
    check_scalar("expect.ref_eval.rfid", frechet_distance(&real, &fake).unwrap().value, &fx);
}

#[test]
fn inception_score_adm_splits_and_reference_single_split() {
    let fx = Fixture::load(FX);
    let probs = fx.get("input.is_logits_f16").to_kind(Kind::Float).softmax(1, Kind::Float);
    let (rows, classes) = (probs.size()[0], probs.size()[1]);
    // details.inception_score."<n>_splits".split_size ↔ expect.adm.inception_score_<n>splits
    let runs = fx.side.at("/details/inception_score").as_object().unwrap();
    let mut checked = 0;
    for (name, run) in runs.iter().filter(|(name, _)| name.ends_with("_splits")) {
        let splits = name.strip_suffix("_splits").unwrap();
        let split = run["split_size"].as_u64().unwrap_or_else(|| panic!("no split_size in {name}")) as usize;
        let mut is = InceptionScore::new(classes, split);
        // Batches that straddle the split boundaries (a batch size that divides no split size).
        for b in probs.split(split as i64 / 2 + 3, 0) {
            is.update(&b).unwrap();
        }
        assert_eq!(is.count(), rows as usize);
        check_scalar(&format!("expect.adm.inception_score_{splits}splits"), is.adm().unwrap(), &fx);
        // The reference evaluator: one split over all samples, whatever the ADM split size.
        check_scalar("expect.ref_eval.inception_score", is.reference().unwrap(), &fx);
        checked += 1;
    }
    assert_eq!(checked, fx.side.tensor_names("expect.adm.inception_score_").len(), "every ADM IS of the fixture is checked");
}

#[test]
fn precision_recall_k3_matches_adm() {
    let fx = Fixture::load(FX);
    let k = fx.side.i64_at("/details/precision_recall/k");
    let pr = precision_recall(fx.get("input.pr_ref"), fx.get("input.pr_smp"), k).unwrap();
    assert_eq!(pr.precision, scalar(fx.get("expect.adm.precision")));
    assert_eq!(pr.recall, scalar(fx.get("expect.adm.recall")));
    fx.assert_exact("expect.adm.smp_in_ref_manifold", &pr.smp_in_ref_manifold);
    fx.assert_exact("expect.adm.ref_in_smp_manifold", &pr.ref_in_smp_manifold);
    check("expect.adm.radii_ref_f64", &pr.radii_ref, &fx);
    check("expect.adm.radii_smp_f64", &pr.radii_smp, &fx);
    println!("precision {} recall {}", pr.precision, pr.recall);
}
