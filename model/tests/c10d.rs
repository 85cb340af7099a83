//! libtorch's c10d through `sftok_model::dist`: two ranks (threads) over a FileStore with Gloo.
//! The all-reduce, broadcast, barrier and gather results are checked against sums written out here;
//! a rank alone in a two-rank world gets an error after the timeout instead of an abort.

use sftok_model::dist::Dist;
use sftok_model::dist::c10d::{ProcessGroup, Store};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

fn two_ranks<T: Send + 'static>(f: impl Fn(Dist) -> T + Send + Sync + Copy + 'static) -> Vec<T> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let path = path.clone();
            std::thread::spawn(move || {
                let store = Store::file(&path, 2, Duration::from_secs(30)).unwrap();
                let dist = Dist::new(store, rank, 2, Device::Cpu, Duration::from_secs(30), "test file store".into()).unwrap();
                f(dist)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn gradients_are_averaged_in_buckets_and_parameters_come_from_rank_0() {
    let out = two_ranks(|d| {
        let r = d.rank as f64;
        // Gradients: rank r has grad = (r + 1) * base; the mean is 1.5 * base. One tensor is larger
        // than a bucket (25 MB), so the bucketing splits.
        let shapes: [&[i64]; 3] = [&[3, 4], &[7_000_000], &[5]];
        let params: Vec<Tensor> = shapes.iter().map(|s| Tensor::zeros(*s, (Kind::Float, Device::Cpu)).set_requires_grad(true)).collect();
        let loss: Tensor = params.iter().enumerate().map(|(i, p)| (p * (i as f64 + 1.0)).sum(Kind::Float)).sum::<Tensor>() * (r + 1.0);
        loss.backward();
        d.average_gradients(&params, 1).unwrap();
        let grads: Vec<f64> = params.iter().map(|p| p.grad().mean(Kind::Double).double_value(&[])).collect();

        // Broadcast: every rank ends with rank 0's values, whatever it started with (int64 too).
        let mut named = BTreeMap::new();
        named.insert("b.weight".to_string(), Tensor::full([4], r + 10.0, (Kind::Float, Device::Cpu)));
        named.insert("a.index".to_string(), Tensor::full([2], d.rank as i64 + 7, (Kind::Int64, Device::Cpu)));
        d.broadcast_named(&named).unwrap();
        let weight = named["b.weight"].double_value(&[3]);
        let index = named["a.index"].int64_value(&[1]);

        let mut sums = [r + 0.25, 1.0];
        d.sum_all(&mut sums, "test sum").unwrap();
        let sum = sums[0];
        let mut metrics = BTreeMap::from([("loss".to_string(), 2.0 * r), ("acc".to_string(), r)]);
        d.average_metrics(&mut metrics, "test metrics").unwrap();
        let equal = d.all_equal(3.0, "test equal").unwrap();
        let unequal = d.all_equal(r, "test unequal").unwrap();
        let gathered = d.gather_on_main("loader/5", format!("state of {}", d.rank).as_bytes()).unwrap();
        d.barrier("test barrier").unwrap();
        (d.rank, grads, weight, index, sum, metrics, gathered, (equal, unequal))
    });
    for (rank, grads, weight, index, sum, metrics, gathered, equal) in out {
        assert_eq!(equal, (true, false), "rank {rank}: all_equal");
        for (i, g) in grads.iter().enumerate() {
            assert!((g - 1.5 * (i as f64 + 1.0)).abs() < 1e-6, "rank {rank} param {i}: mean grad {g}");
        }
        assert_eq!(weight, 10.0, "rank {rank}");
        assert_eq!(index, 7, "rank {rank}");
        assert_eq!(sum, 0.25 + 1.25);
        assert_eq!(metrics["loss"], 1.0);
        assert_eq!(metrics["acc"], 0.5);
        match rank {
            0 => assert_eq!(gathered.unwrap(), vec![b"state of 0".to_vec(), b"state of 1".to_vec()]),
            _ => assert!(gathered.is_none()),
        }
    }
}

#[test]
fn a_gradient_on_one_rank_only_is_refused() {
    let out = two_ranks(|d| {
        let p = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        if d.rank == 1 {
            p.sum(Kind::Float).backward();
        }
        d.average_gradients(&[p], 3).map_err(|e| e.to_string())
    });
    for r in out {
        let e = r.unwrap_err();
        assert!(e.contains("has a gradient on 1 of 2 ranks"), "{e}");
    }
}

#[test]
fn a_rank_alone_gets_an_error_after_the_timeout_not_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::file(&dir.path().join("store"), 2, Duration::from_secs(2)).unwrap();
    let t0 = Instant::now();
    let e = ProcessGroup::gloo(&store, 0, 2, Duration::from_secs(2), None).err().expect("no peer: must fail");
    assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}", t0.elapsed());
    assert!(!e.to_string().is_empty());
    // The process is still usable.
    assert_eq!(Tensor::from_slice(&[1.0f32, 2.0]).sum(Kind::Float).double_value(&[]), 3.0);
}

#[test]
fn ranks_logging_different_metric_names_are_refused() {
    let out = two_ranks(|d| {
        let key = if d.rank == 0 { "train/loss" } else { "train/los" };
        let mut m = BTreeMap::from([(key.to_string(), 1.0)]);
        d.average_metrics(&mut m, "test metrics").map_err(|e| e.to_string())
    });
    for r in out {
        let e = r.unwrap_err();
        assert!(e.contains("different metric names"), "{e}");
    }
}
