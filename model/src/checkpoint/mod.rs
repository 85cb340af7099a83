//! The one loading entry point for every model: PyTorch checkpoints (zip format of torch ≥ 1.6
//! and the legacy format, read natively — tch's own loader fails on ordinary
//! `torch.save(model.state_dict())` files), safetensors, and Hugging Face-style directories
//! (`config.json` + `model.safetensors` or `pytorch_model.bin`).
//!
//! Loading is strict by default: a mismatch lists missing, unexpected and mis-shaped keys.

mod pickle;

use anyhow::{Context, Result, anyhow, bail};
use pickle::{TensorRef, Value};
use sftok_pipeline::fsutil::write_atomic_with;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor, nn::VarStore};

/// Named tensors in file order.
pub struct StateDict {
    pub tensors: Vec<(String, Tensor)>,
}

impl StateDict {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    /// Keeps the tensors under `prefix` (e.g. `weights.` in the fixtures), without the prefix.
    pub fn strip_prefix(self, prefix: &str) -> StateDict {
        let tensors = self
            .tensors
            .into_iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|s| (s.to_string(), t)))
            .collect();
        StateDict { tensors }
    }

    /// Renames legacy key names (`from` → `to`) where the new name is absent.
    pub fn apply_aliases(&mut self, aliases: &[(&str, &str)]) {
        for (from, to) in aliases {
            if self.get(to).is_none()
                && let Some(entry) = self.tensors.iter_mut().find(|(n, _)| n == from)
            {
                entry.0 = to.to_string();
            }
        }
    }
}

/// A weights argument (`--teacher`, `--vgg16-weights`, …) of the form `random:SEED`: seeded random
/// weights for tests and the demo. None for anything else (a file path).
pub fn random_weights_seed(spec: &str) -> Option<Result<i64>> {
    spec.strip_prefix("random:")
        .map(|s| s.trim().parse::<i64>().map_err(|_| anyhow::anyhow!("`{spec}`: expected random:<integer seed> or a weights file")))
}

/// Reads any supported checkpoint file or directory into named tensors (on the CPU, with the
/// file's dtypes; non-contiguous and shared-storage tensors come out as independent contiguous ones).
pub fn read(path: &Path) -> Result<StateDict> {
    read_inner(path).with_context(|| format!("reading checkpoint {}", path.display()))
}

fn read_inner(path: &Path) -> Result<StateDict> {
    if path.is_dir() {
        return read(&hf_weights_file(path)?);
    }
    // The 8-byte safetensors header length and the JSON's first byte; enough for the other formats.
    let mut head = Vec::with_capacity(9);
    std::fs::File::open(path).with_context(|| "cannot open the file (check the path)")?.take(9).read_to_end(&mut head)?;
    // safetensors first, by its structure: its first byte is the low byte of the header length,
    // which is 0x80 — a pickle's PROTO opcode — for one header size in 256.
    if looks_like_safetensors(&head) {
        let tensors = Tensor::read_safetensors(path).map_err(|e| anyhow!("safetensors: {e}"))?;
        Ok(StateDict { tensors })
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        bail!("named .safetensors, but it does not start with a safetensors header (8-byte length + JSON): truncated or not a safetensors file")
    } else if head.starts_with(b"PK\x03\x04") {
        read_torch_zip(path)
    } else if head.first() == Some(&0x80) {
        read_torch_legacy(path)
    } else {
        bail!("not a PyTorch checkpoint (zip or legacy pickle) nor a safetensors file")
    }
}

/// A little-endian u64 header length of a plausible size, then the header's JSON object.
fn looks_like_safetensors(head: &[u8]) -> bool {
    let Some((len, rest)) = head.split_first_chunk::<8>() else { return false };
    let n = u64::from_le_bytes(*len);
    n > 1 && n < 100_000_000 && rest.first() == Some(&b'{')
}

/// Hugging Face-style directory: `model.safetensors` preferred, else `pytorch_model.bin`.
pub fn hf_weights_file(dir: &Path) -> Result<PathBuf> {
    for name in ["model.safetensors", "pytorch_model.bin", "ema_model.safetensors"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{} is a directory without model.safetensors or pytorch_model.bin", dir.display())
}

fn kind_of_storage(storage_type: &str) -> Result<Kind> {
    Ok(match storage_type {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        other => bail!("unsupported tensor storage type {other}"),
    })
}

/// Walks the unpickled object: dicts of tensors, possibly nested (`a.b.c` names).
fn collect_tensors(v: &Value, prefix: &str, out: &mut Vec<(String, TensorRef)>) {
    match v {
        Value::Tensor(t) => out.push((prefix.to_string(), t.clone())),
        Value::Dict(d) => {
            for (k, v) in d.borrow().iter() {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                collect_tensors(v, &name, out);
            }
        }
        _ => {}
    }
}

/// `{"state_dict": {...}}`-style wrappers around the actual state dict are unwrapped.
fn unwrap_common_wrappers(v: Value) -> Value {
    if let Value::Dict(d) = &v {
        let d = d.borrow();
        let has_tensor = d.iter().any(|(_, x)| matches!(x, Value::Tensor(_)));
        if !has_tensor {
            for wrapper in ["state_dict", "model", "model_state_dict", "module"] {
                if let Some((_, inner @ Value::Dict(_))) = d.iter().find(|(k, _)| k.as_str() == Some(wrapper)) {
                    return inner.clone();
                }
            }
        }
    }
    v
}

fn materialise(refs: Vec<(String, TensorRef)>, mut storage: impl FnMut(&str, Kind) -> Result<Tensor>) -> Result<StateDict> {
    let mut cache: HashMap<String, Tensor> = HashMap::new();
    let mut tensors = Vec::with_capacity(refs.len());
    for (name, r) in refs {
        let kind = kind_of_storage(&r.storage.storage_type)?;
        if !cache.contains_key(&r.storage.key) {
            cache.insert(r.storage.key.clone(), storage(&r.storage.key, kind)?);
        }
        let base = &cache[&r.storage.key];
        let numel = base.numel() as i64;
        let extent: i64 = r.offset + r.size.iter().zip(&r.stride).map(|(s, st)| (s - 1).max(0) * st).sum::<i64>();
        if r.size.iter().all(|&s| s > 0) && extent >= numel {
            bail!("tensor {name}: view (offset {}, size {:?}, stride {:?}) exceeds its storage of {numel} elements", r.offset, r.size, r.stride);
        }
        let t = base.as_strided(r.size.as_slice(), r.stride.as_slice(), Some(r.offset)).contiguous();
        // `contiguous` may return the storage itself: detach the name from the shared buffer.
        tensors.push((name, if t.data_ptr() == base.data_ptr() { t.copy() } else { t }));
    }
    Ok(StateDict { tensors })
}

fn storage_from_bytes(bytes: &[u8], kind: Kind) -> Result<Tensor> {
    let elem = kind.elt_size_in_bytes();
    if bytes.len() % elem != 0 {
        bail!("storage of {} bytes is not a whole number of {kind:?} elements", bytes.len());
    }
    Ok(Tensor::from_data_size(bytes, &[(bytes.len() / elem) as i64], kind))
}

/// torch ≥ 1.6: a zip archive `<name>/data.pkl` + `<name>/data/<storage key>` (+ `byteorder`).
fn read_torch_zip(path: &Path) -> Result<StateDict> {
    let file = std::fs::File::open(path)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).context("not a valid zip archive")?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| anyhow!("zip archive has no data.pkl: not a torch.save file"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    if let Ok(mut f) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut order = String::new();
        f.read_to_string(&mut order)?;
        if order.trim() != "little" {
            bail!("big-endian checkpoints are not supported");
        }
    }
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name)?.read_to_end(&mut pkl)?;
    let obj = unwrap_common_wrappers(pickle::load(&pkl, &mut 0).context("unpickling data.pkl")?);
    let mut refs = Vec::new();
    collect_tensors(&obj, "", &mut refs);
    materialise(refs, |key, kind| {
        let mut f = zip.by_name(&format!("{prefix}data/{key}")).with_context(|| format!("storage {key} missing from the archive"))?;
        let mut bytes = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut bytes)?;
        storage_from_bytes(&bytes, kind)
    })
}

/// torch < 1.6 (`_use_new_zipfile_serialization=False`): pickles back to back — magic number,
/// protocol version, sys info, the object, the sorted storage keys — then every storage as
/// `i64 numel` + raw little-endian data, in key order.
fn read_torch_legacy(path: &Path) -> Result<StateDict> {
    const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    let data = std::fs::read(path)?;
    let mut pos = 0;
    match pickle::load(&data, &mut pos)? {
        Value::BigInt(b) if b == MAGIC => {}
        _ => bail!("a pickle, but not a torch.save file (magic number missing)"),
    }
    let _protocol = pickle::load(&data, &mut pos)?;
    let _sys_info = pickle::load(&data, &mut pos)?;
    let obj = unwrap_common_wrappers(pickle::load(&data, &mut pos).context("unpickling the saved object")?);
    let keys: Vec<String> = match pickle::load(&data, &mut pos)? {
        Value::List(l) => l.borrow().iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        other => bail!("legacy checkpoint: expected the storage key list, found {other:?}"),
    };
    let mut refs = Vec::new();
    collect_tensors(&obj, "", &mut refs);
    let kinds: HashMap<String, Kind> =
        refs.iter().map(|(_, r)| Ok((r.storage.key.clone(), kind_of_storage(&r.storage.storage_type)?))).collect::<Result<_>>()?;
    // Storages follow in key order; locate each one (sizes depend on every earlier storage's dtype).
    let mut offsets: HashMap<String, (usize, usize)> = HashMap::new();
    for key in &keys {
        let header = data.get(pos..pos + 8).ok_or_else(|| anyhow!("legacy checkpoint truncated at storage {key}"))?;
        let numel = i64::from_le_bytes(header.try_into()?) as usize;
        let elem = kinds.get(key).map(|k| k.elt_size_in_bytes()).ok_or_else(|| anyhow!("storage {key} has no tensor"))?;
        let start = pos + 8;
        let end = start + numel * elem;
        if end > data.len() {
            bail!("legacy checkpoint truncated inside storage {key}");
        }
        offsets.insert(key.clone(), (start, end));
        pos = end;
    }
    materialise(refs, |key, kind| {
        let (s, e) = offsets.get(key).ok_or_else(|| anyhow!("storage {key} missing from the file"))?;
        storage_from_bytes(&data[*s..*e], kind)
    })
}

/// Copies a state dict into the variables of a `VarStore` (converted to each variable's dtype and
/// device). `strict`: every variable must be present with its shape, and nothing else may be in
/// the checkpoint. Returns the names of checkpoint tensors that were not used (non-strict).
pub fn load_into(vs: &VarStore, sd: &StateDict, strict: bool) -> Result<Vec<String>> {
    let vars = vs.variables();
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    for (name, var) in &vars {
        match sd.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.size() != var.size() => misshaped.push(format!("{name}: checkpoint {:?} vs model {:?}", t.size(), var.size())),
            Some(_) => {}
        }
    }
    let unexpected: Vec<String> = sd.names().filter(|n| !vars.contains_key(*n)).map(String::from).collect();
    if !misshaped.is_empty() || (strict && (!missing.is_empty() || !unexpected.is_empty())) {
        missing.sort();
        let mut unexpected = unexpected.clone();
        unexpected.sort();
        bail!("{}", mismatch_report(&missing, &unexpected, &misshaped));
    }
    tch::no_grad(|| {
        for (name, var) in &vars {
            if let Some(t) = sd.get(name) {
                let mut var = var.shallow_clone();
                var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
            }
        }
    });
    Ok(unexpected)
}

fn mismatch_report(missing: &[String], unexpected: &[String], misshaped: &[String]) -> String {
    const SHOW: usize = 10;
    let list = |what: &str, v: &[String]| -> String {
        if v.is_empty() {
            return String::new();
        }
        let more = if v.len() > SHOW { format!(", … ({} more)", v.len() - SHOW) } else { String::new() };
        format!("\n  {} {what}: {}{more}", v.len(), v[..v.len().min(SHOW)].join(", "))
    };
    format!(
        "checkpoint does not match the model (is it the right checkpoint for this config?):{}{}{}",
        list("missing from the checkpoint", missing),
        list("unexpected in the checkpoint", unexpected),
        list("with a different shape", misshaped)
    )
}

/// The single entry point: read `path` and load it strictly into `vs`.
pub fn load_file(vs: &VarStore, path: &Path) -> Result<()> {
    let sd = read(path)?;
    load_into(vs, &sd, true).with_context(|| format!("loading {}", path.display()))?;
    Ok(())
}

/// Writes named tensors as safetensors (sorted by name, on the CPU, contiguous), atomically
/// (`sftok_pipeline::fsutil`'s rule: a partial file never looks complete).
pub fn save_tensors(tensors: impl IntoIterator<Item = (String, Tensor)>, path: &Path) -> Result<()> {
    let mut named: Vec<(String, Tensor)> =
        tensors.into_iter().map(|(n, t)| (n, t.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    write_atomic_with(path, |tmp| Tensor::write_safetensors(&named, tmp).map_err(|e| anyhow!("{e}")))
}

/// A weights directory as the reference's `PyTorchModelHubMixin` writes it: `model.safetensors`
/// (these tensors, their names unchanged) + `config.json` (the full config, reference layout).
pub fn save_weights_dir(tensors: impl IntoIterator<Item = (String, Tensor)>, config: &crate::config::Config, dir: &Path) -> Result<()> {
    save_tensors(tensors, &dir.join("model.safetensors"))?;
    let json = serde_json::to_string_pretty(config)?;
    sftok_pipeline::fsutil::write_atomic(&dir.join("config.json"), json.as_bytes())
}
