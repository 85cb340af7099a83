//! Data-parallel `sftok-train` on the CPU over libtorch's Gloo, launched the way users launch it:
//! the test venv's `torchrun --no-python`, and by hand with Slurm's variables (as `srun` sets them).
//!
//! Equivalence. Two ranks of B images each average their gradients; one process sees the same 2B
//! images per optimiser step as 2 micro-batches of B (`gradient_accumulation_steps=2`), read from a
//! shard that interleaves the two ranks' shards B images at a time. (Not one batch of 2B: SFTok's
//! quantizer balances its codes over the batch with Sinkhorn, so a 2B batch is another
//! computation, in the reference as here.) Tolerance: the one process accumulates g0/2 + g1/2,
//! the ranks compute (g0 + g1)/2; halving is exact in binary floating point and a sum of two
//! addends does not depend on their order, so at one thread per process (torchrun's default)
//! the two runs must agree exactly: max |difference| 0. The loss log is the ranks' mean; the one
//! process logs its last micro-batch, so it is compared with the mean of two one-process runs
//! whose interleaving puts either rank's images last. `sftok-prep proxy-codes` with torchrun's
//! variables splits its shards by rank with the same files as one process.

mod common;

use common::{bin, metric_rows, run_ok, shards};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Images per rank and micro-batch.
const B: usize = 2;
/// Optimiser steps: 8 images per shard = one epoch per rank.
const STEPS: u64 = 4;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Two shards of 8 images (one per rank), two interleavings of them for one process, proxy codes
/// for all three (one image per teacher call, so the codes do not depend on the grouping).
fn setup(dir: &Path) {
    shards(dir, 2, 8, 8);
    let merge = "import sys, webdataset as wds\n\
        b = int(sys.argv[1]); out = sys.argv[2]\n\
        shards = [list(wds.WebDataset(p, shardshuffle=False)) for p in sys.argv[3:]]\n\
        with wds.TarWriter(out) as w:\n\
        \x20   for i in range(0, len(shards[0]), b):\n\
        \x20       for s in shards:\n\
        \x20           for x in s[i:i + b]:\n\
        \x20               w.write({k: v for k, v in x.items() if k in ('__key__', 'jpg', 'cls', 'json')})\n";
    let (a, b) = (dir.join("shards/train/train-000000.tar"), dir.join("shards/train/train-000001.tar"));
    for (name, order) in [("ab", [&a, &b]), ("ba", [&b, &a])] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let out = dir.join(name).join("train-000000.tar");
        sftok_testkit_tch::run_python(merge, &[&B.to_string(), out.to_str().unwrap(), order[0].to_str().unwrap(), order[1].to_str().unwrap()]);
    }
    for (shards, codes) in [("shards/train", "codes/train"), ("ab", "codes/ab"), ("ba", "codes/ba")] {
        run_ok(bin("sftok-prep").current_dir(dir).args([
            "proxy-codes", "--teacher", "random:0", "--shards", shards, "--out", codes, "--views", "2", "--resize-shorter", "64", "--crop", "64",
            "--device", "cpu", "--batch", "1",
        ]));
    }
}

/// The `sftok-train stage1` arguments of every run here (absolute paths: ranks may run elsewhere).
fn stage1_args(dir: &Path, out: &str, shards: &str, codes: &str, batch: usize, accum: usize) -> Vec<String> {
    let config = common::repo().join("configs/tiny/sftok_tiny_stage1.yaml");
    let abs = |p: &str| dir.join(p).display().to_string();
    [
        "stage1", "--config", config.to_str().unwrap(), "--device", "cpu", "--workers", "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("experiment.output_dir={out}"),
        format!("training.max_train_steps={STEPS}"),
        "experiment.save_every=2".into(),
        "experiment.log_every=1".into(),
        format!("training.per_gpu_batch_size={batch}"),
        format!("training.gradient_accumulation_steps={accum}"),
        "dataset.params.shuffle_buffer_size=0".into(),
        format!("dataset.params.train_shards_path_or_url={}", abs(shards)),
        format!("dataset.params.train_proxy_codes_path={}", abs(codes)),
    ])
    .collect()
}

/// One process, 2 micro-batches of B per step, one thread (as each torchrun rank).
fn one_process(dir: &Path, out: &str, interleaving: &str) -> Command {
    let mut c = bin("sftok-train");
    c.current_dir(dir).env("OMP_NUM_THREADS", "1").args(stage1_args(dir, out, interleaving, &format!("codes/{interleaving}"), B, 2));
    c
}

/// Two ranks of B under the test venv's torchrun (a fresh rendezvous port each time).
fn torchrun(dir: &Path, out: &str, extra: &[&str]) -> Command {
    let torchrun = sftok_testkit_tch::python_path().with_file_name("torchrun");
    let mut c = Command::new(torchrun);
    c.current_dir(dir)
        .env_remove("LD_LIBRARY_PATH")
        .env("OMP_NUM_THREADS", "1")
        .env("GLOO_SOCKET_IFNAME", "lo")
        .args(["--nproc_per_node=2", "--master_addr=127.0.0.1", &format!("--master_port={}", free_port()), "--no-python", "--"])
        .arg(env!("CARGO_BIN_EXE_sftok-train"))
        .args(stage1_args(dir, out, "shards/train", "codes/train", B, 1))
        .args(extra);
    c
}

fn load(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut v = tch::Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// max |a − b| over every tensor of two safetensors files with the same names and shapes.
fn max_abs_diff(a: &Path, b: &Path) -> f64 {
    let (ta, tb) = (load(a), load(b));
    assert_eq!(ta.iter().map(|t| &t.0).collect::<Vec<_>>(), tb.iter().map(|t| &t.0).collect::<Vec<_>>(), "{} vs {}", a.display(), b.display());
    ta.iter().zip(&tb).map(|((_, x), (_, y))| sftok_testkit_tch::max_abs_diff(x, y)).fold(0.0, f64::max)
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

const CHECKPOINT_FILES: [&str; 3] = ["model/model.safetensors", "ema_model/model.safetensors", "optimizer.safetensors"];

#[test]
fn two_ranks_equal_one_process_and_resume_exactly_after_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);

    // Equivalence.
    let text = run_ok(&mut torchrun(dir, "two", &[]));
    assert!(text.contains("2 data-parallel ranks over gloo"), "{text}");
    assert_eq!(text.matches("stage1 finished at step 4").count(), 1, "rank 0 alone reports:\n{text}");
    run_ok(&mut one_process(dir, "ab", "ab"));
    run_ok(&mut one_process(dir, "ba", "ba"));
    for f in CHECKPOINT_FILES {
        let (two, ab, ba) = (dir.join("two/checkpoint-4").join(f), dir.join("ab/checkpoint-4").join(f), dir.join("ba/checkpoint-4").join(f));
        let d = max_abs_diff(&two, &ab);
        eprintln!("{f}: max |2 ranks − 1 process| = {d:e}");
        assert_eq!(d, 0.0, "{f}: 2 ranks × {B} differ from 1 process × 2 micro-batches of {B} by {d:e}");
        assert_eq!(max_abs_diff(&ab, &ba), 0.0, "{f}: the interleaving order changed the accumulated result");
    }
    let (two, ab, ba) = (metric_rows(&dir.join("two/metrics.jsonl")), metric_rows(&dir.join("ab/metrics.jsonl")), metric_rows(&dir.join("ba/metrics.jsonl")));
    assert_eq!(two.len(), STEPS as usize);
    for ((t, a), b) in two.iter().zip(&ab).zip(&ba) {
        for (key, v) in t.as_object().unwrap() {
            let (v, x, y) = (v.as_f64().unwrap(), a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            let want = if key.starts_with("train/") { (x + y) / 2.0 } else { x };
            assert!((v - want).abs() <= 1e-12 * want.abs().max(1.0), "step {}: {key} = {v} on 2 ranks, {want} expected", t["step"]);
        }
    }

    // proxy-codes as torchrun's ranks: each process converts its part (--part from RANK/WORLD_SIZE);
    // the two parts together are the one-process output, file for file. (One after the other, so
    // that each one's output can be read whole.)
    let files = ["train-000000.parquet", "train-000001.parquet"];
    for rank in 0..2 {
        let text = run_ok(
            bin("sftok-prep")
                .current_dir(dir)
                .envs([("RANK", rank.to_string()), ("WORLD_SIZE", "2".into()), ("LOCAL_RANK", rank.to_string())])
                .args(["proxy-codes", "--teacher", "random:0", "--shards", "shards/train", "--out", "codes/two", "--views", "2"])
                .args(["--resize-shorter", "64", "--crop", "64", "--device", "cpu", "--batch", "1"]),
        );
        assert!(text.contains(&format!("1 shard(s) in part {}/2", rank + 1)), "{text}");
        let written: Vec<bool> = files.iter().map(|f| dir.join("codes/two").join(f).is_file()).collect();
        assert_eq!(written, [true, rank == 1], "after rank {rank}");
    }
    for f in files {
        assert!(same_bytes(&dir.join("codes/train").join(f), &dir.join("codes/two").join(f)), "{f}: 2 ranks differ from 1 process");
    }

    // kill -9 of the whole job (torchrun and both ranks) right after its step-2 checkpoint, then the same command resumes.
    let mut job = torchrun(dir, "killed", &[]);
    let child = job.env("SFTOK_TEST_PAUSE_AFTER_CHECKPOINT", "2").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    kill_job_when_exists(child, &dir.join("killed/checkpoint-2/trainer_state.json"), 300);
    assert!(!dir.join("killed/checkpoint-4").exists());
    let text = run_ok(torchrun(dir, "killed", &[]).args(["--resume", "auto"]));
    assert!(text.contains("resumed from") && text.contains("at step 2"), "{text}");
    for f in CHECKPOINT_FILES {
        assert!(same_bytes(&dir.join("two/checkpoint-4").join(f), &dir.join("killed/checkpoint-4").join(f)), "{f} differs after the resume");
    }
    let state = |p: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(dir.join(p)).unwrap()).unwrap() };
    let saved = state("two/checkpoint-4/trainer_state.json");
    assert_eq!(saved, state("killed/checkpoint-4/trainer_state.json"));
    assert_eq!(saved["world_size"], 2);
    assert_eq!(saved["rank_loaders"].as_array().unwrap().len(), 2);
    assert_eq!(metric_rows(&dir.join("killed/metrics.jsonl")), two, "loss logs differ after the resume");

    // Another world size is refused with what to do.
    let out = bin("sftok-train").current_dir(dir).args(stage1_args(dir, "two", "shards/train", "codes/train", B, 1)).args(["--resume", "auto"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("written by a 2-process run") && err.contains("--nproc_per_node 2"), "{err}");
}

/// Rank `rank` of 2 started by hand with Slurm's variables, in `cwd`, output_dir relative to it.
fn slurm_rank(dir: &Path, cwd: &Path, rank: usize, port: u16, extra_env: &[(&str, &str)], extra: &[&str]) -> Child {
    let mut c = bin("sftok-train");
    c.current_dir(cwd)
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .envs([("SLURM_PROCID", rank.to_string()), ("SLURM_NTASKS", "2".into()), ("SLURM_LOCALID", rank.to_string())])
        .envs([("MASTER_ADDR", "127.0.0.1".to_string()), ("MASTER_PORT", port.to_string()), ("OMP_NUM_THREADS", "1".into()), ("GLOO_SOCKET_IFNAME", "lo".into())])
        .envs(extra_env.iter().copied())
        .args(stage1_args(dir, "out", "shards/train", "codes/train", B, 1))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        }
        out.push(p);
    }
    out
}

fn stderr_of(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn under_slurm_only_rank_0_writes_and_a_lost_rank_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let (cwd0, cwd1) = (dir.join("rank0"), dir.join("rank1"));
    std::fs::create_dir_all(&cwd0).unwrap();
    std::fs::create_dir_all(&cwd1).unwrap();

    // A clean run: rank 1 writes nothing, not even its output_dir.
    let port = free_port();
    let r0 = slurm_rank(dir, &cwd0, 0, port, &[], &[]);
    let r1 = slurm_rank(dir, &cwd1, 1, port, &[], &[]);
    let ((ok0, t0), (ok1, t1)) = (stderr_of(r0), stderr_of(r1));
    assert!(ok0 && ok1, "rank 0:\n{t0}\nrank 1:\n{t1}");
    assert!(cwd0.join("out/checkpoint-4/trainer_state.json").is_file(), "{t0}");
    assert_eq!(files_under(&cwd1), Vec::<PathBuf>::new(), "rank 1 wrote files");
    assert!(t1.trim().is_empty(), "rank 1 printed: {t1}");

    // A hung rank: rank 1 stops after the step-2 checkpoint; rank 0 gives up after the timeout.
    std::fs::remove_dir_all(cwd0.join("out")).unwrap();
    let port = free_port();
    let t = Instant::now();
    let r0 = slurm_rank(dir, &cwd0, 0, port, &[], &["--dist-timeout", "10", "--resume", "never"]);
    let mut r1 = slurm_rank(dir, &cwd1, 1, port, &[("SFTOK_TEST_PAUSE_AFTER_CHECKPOINT", "2@1")], &["--dist-timeout", "10", "--resume", "never"]);
    let (ok0, t0) = stderr_of(r0);
    let waited = t.elapsed();
    r1.kill().unwrap();
    r1.wait().unwrap();
    assert!(!ok0, "rank 0 succeeded without rank 1:\n{t0}");
    assert!(t0.contains("rank 0 of 2") && t0.contains("rank 1 is alive but behind") && t0.contains("stuck"), "{t0}");
    assert!(waited < Duration::from_secs(120), "rank 0 took {waited:?}");
    assert!(cwd0.join("out/checkpoint-2/trainer_state.json").is_file(), "the last complete checkpoint is kept");
    assert!(!cwd0.join("out/checkpoint-4").exists());

    // A dead rank: kill -9 rank 1 while rank 0 waits for it.
    std::fs::remove_dir_all(cwd0.join("out")).unwrap();
    let port = free_port();
    let r0 = slurm_rank(dir, &cwd0, 0, port, &[], &["--resume", "never"]);
    let mut r1 = slurm_rank(dir, &cwd1, 1, port, &[("SFTOK_TEST_PAUSE_AFTER_CHECKPOINT", "2@1")], &["--resume", "never"]);
    let marker = cwd0.join("out/checkpoint-2/trainer_state.json");
    let t = Instant::now();
    common::wait_until_exists(&mut r1, &marker, 300);
    std::thread::sleep(Duration::from_millis(500)); // past the barrier, into the pause
    r1.kill().unwrap();
    r1.wait().unwrap();
    let (ok0, t0) = stderr_of(r0);
    assert!(!ok0, "rank 0 succeeded without rank 1:\n{t0}");
    assert!(t0.contains("rank 1 is gone"), "{t0}");
    // Well within the default 30-minute timeout: a closed connection is noticed at once.
    assert!(t.elapsed() < Duration::from_secs(120), "rank 0 took {:?}", t.elapsed());
    assert_eq!(files_under(&cwd1), Vec::<PathBuf>::new(), "rank 1 wrote files");

    // Ranks that see different checkpoints (an output_dir that is not shared) are refused.
    assert!(marker.is_file());
    let port = free_port();
    let r0 = slurm_rank(dir, &cwd0, 0, port, &[], &["--resume", "auto"]);
    let r1 = slurm_rank(dir, &cwd1, 1, port, &[], &["--resume", "auto"]);
    let ((ok0, t0), (ok1, t1)) = (stderr_of(r0), stderr_of(r1));
    assert!(!ok0 && !ok1, "rank 0:\n{t0}\nrank 1:\n{t1}");
    assert!(t0.contains("disagree about the checkpoint") && t0.contains("checkpoint-2") && t0.contains("shared file system"), "{t0}");
    assert!(t1.contains("disagree about the checkpoint") && t1.contains("this rank: none"), "{t1}");
}

/// Waits for `path`, then SIGKILLs torchrun and its ranks together (torchrun starts every rank in
/// a session of its own, so they are found as its children).
fn kill_job_when_exists(mut child: Child, path: &Path, secs: u64) {
    common::wait_until_exists(&mut child, path, secs);
    let parent = child.id().to_string();
    let mut pids = vec![parent.clone()];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
        if ppid.as_deref() == Some(parent.as_str()) {
            pids.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(pids.len() >= 3, "torchrun's ranks not found: {pids:?}");
    assert!(Command::new("kill").arg("-9").args(&pids).status().unwrap().success());
    child.wait().unwrap();
}
