//! The OmegaConf-style engine over the YAML tree, before it becomes a typed [`Config`]: key
//! checking against the schema with nearest-key suggestions, `a.b.c=value` overrides, `${…}`
//! interpolation and `1_281_167`-style numbers. It knows the schema only as a YAML value (the
//! serialised defaults) plus [`OPEN_MAPS`].
//!
//! [`Config`]: super::Config

use super::schema::OPEN_MAPS;
use anyhow::{Context, Result, anyhow, bail};
use serde_yaml_ng::{Mapping, Value};

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
}

/// Every key of `tree` must exist in `schema` (the serialised defaults, which list all fields).
pub(super) fn check_keys(tree: &Value, schema: &Value, prefix: &str) -> Result<()> {
    if OPEN_MAPS.contains(&prefix) {
        return Ok(());
    }
    let (Value::Mapping(map), Value::Mapping(known)) = (tree, schema) else {
        return Ok(());
    };
    for (k, v) in map {
        let key = k.as_str().ok_or_else(|| anyhow!("config key {k:?} under `{prefix}` is not a string"))?;
        let path = join(prefix, key);
        match known.get(key) {
            Some(sub) => check_keys(v, sub, &path)?,
            None => bail!("{}", unknown_key_message(&path, known)),
        }
    }
    Ok(())
}

fn unknown_key_message(path: &str, siblings: &Mapping) -> String {
    let key = path.rsplit('.').next().unwrap_or(path);
    let parent = path.rsplit_once('.').map(|p| p.0).unwrap_or("");
    let nearest = siblings
        .keys()
        .filter_map(|k| k.as_str())
        .min_by_key(|cand| levenshtein(key, cand))
        .map(|best| join(parent, best));
    match nearest {
        Some(best) => format!("unknown config key `{path}`; did you mean `{best}`?"),
        None => format!("unknown config key `{path}`"),
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + (ca != *cb) as usize).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `a.b.c=value`: the value is parsed as a YAML scalar/flow value (`true`, `1e-4`, `[1, 2]`, `"s"`).
pub(super) fn apply_override(tree: &mut Value, schema: &Value, ov: &str) -> Result<()> {
    let (path, raw) = ov
        .split_once('=')
        .ok_or_else(|| anyhow!("override {ov:?} must look like key.path=value, e.g. training.per_gpu_batch_size=32"))?;
    let path = path.trim();
    // `key=` sets an empty string, as in Hydra/OmegaConf.
    let value: Value = if raw.trim().is_empty() {
        Value::String(String::new())
    } else {
        serde_yaml_ng::from_str(raw).with_context(|| format!("override {ov:?}: cannot parse the value"))?
    };
    let keys: Vec<&str> = path.split('.').collect();
    let mut schema_node = Some(schema);
    let mut node = tree;
    for (i, key) in keys.iter().enumerate() {
        let so_far = keys[..=i].join(".");
        let open = OPEN_MAPS.iter().any(|m| so_far.starts_with(&format!("{m}.")));
        if !open {
            let Some(Value::Mapping(known)) = schema_node else {
                bail!("override {ov:?}: `{}` is a value, not a section", keys[..i].join("."));
            };
            if !known.contains_key(*key) {
                bail!("override {ov:?}: {}", unknown_key_message(&so_far, known));
            }
            schema_node = known.get(*key);
        }
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let map = node.as_mapping_mut().expect("mapping");
        let k = Value::String(key.to_string());
        if i + 1 == keys.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map.entry(k).or_insert(Value::Null);
    }
    unreachable!("override path has at least one key")
}

/// YAML 1.2 parsers read `1_281_167` as a string (PyYAML/OmegaConf accept it as an int) —
/// turn such strings back into numbers.
pub(super) fn normalize_numbers(v: &mut Value) {
    match v {
        Value::Mapping(m) => m.values_mut().for_each(normalize_numbers),
        Value::Sequence(s) => s.iter_mut().for_each(normalize_numbers),
        Value::String(s) if s.contains('_') && s.chars().next().is_some_and(|c| c.is_ascii_digit() || c == '-') => {
            let plain: String = s.chars().filter(|&c| c != '_').collect();
            if let Ok(i) = plain.parse::<i64>() {
                *v = Value::Number(i.into());
            } else if let Ok(f) = plain.parse::<f64>() {
                *v = Value::Number(f.into());
            }
        }
        _ => {}
    }
}

pub(super) fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |node, key| node.as_mapping()?.get(key))
}

/// OmegaConf `${a.b.c}`: a whole-string reference takes the referenced value (any type);
/// references inside a longer string are replaced by the scalar's text.
pub(super) fn resolve_interpolations(v: &mut Value, root: &Value, depth: usize) -> Result<()> {
    if depth > 16 {
        bail!("config interpolation nests more than 16 levels (a cycle?)");
    }
    match v {
        Value::Mapping(m) => m.values_mut().try_for_each(|x| resolve_interpolations(x, root, depth)),
        Value::Sequence(s) => s.iter_mut().try_for_each(|x| resolve_interpolations(x, root, depth)),
        Value::String(s) if s.contains("${") => {
            let whole = s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
            if whole {
                let path = &s[2..s.len() - 1];
                let mut target = lookup(root, path)
                    .ok_or_else(|| anyhow!("interpolation ${{{path}}}: no such key in the config"))?
                    .clone();
                resolve_interpolations(&mut target, root, depth + 1)?;
                *v = target;
                return Ok(());
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let end = rest[start..].find('}').ok_or_else(|| anyhow!("unclosed ${{ in {s:?}"))? + start;
                let path = &rest[start + 2..end];
                let mut target = lookup(root, path)
                    .ok_or_else(|| anyhow!("interpolation ${{{path}}}: no such key in the config"))?
                    .clone();
                resolve_interpolations(&mut target, root, depth + 1)?;
                match target {
                    Value::String(t) => out.push_str(&t),
                    Value::Number(n) => out.push_str(&n.to_string()),
                    Value::Bool(b) => out.push_str(&b.to_string()),
                    _ => bail!("interpolation ${{{path}}} inside {s:?} must refer to a scalar"),
                }
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            *v = Value::String(out);
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, MixedPrecision};

    #[test]
    fn underscores_exponents_and_interpolation_parse_like_omegaconf() {
        let cfg = Config::from_yaml_str(
            "experiment:\n  max_train_examples: 1_281_167\noptimizer:\n  params:\n    learning_rate: 3e-4\n\
             lr_scheduler:\n  params:\n    learning_rate: ${optimizer.params.learning_rate}\n\
             experiment2: null\n"
                .replace("experiment2: null\n", "")
                .as_str(),
            &[],
        )
        .unwrap();
        assert_eq!(cfg.experiment.max_train_examples, 1_281_167);
        assert_eq!(cfg.optimizer.params.learning_rate, 3e-4);
        assert_eq!(cfg.lr_scheduler.params.learning_rate, 3e-4);
    }

    #[test]
    fn overrides_apply_in_order_and_reach_interpolations() {
        let text = "lr_scheduler:\n  params:\n    learning_rate: ${optimizer.params.learning_rate}\n";
        let ov = ["optimizer.params.learning_rate=2e-4".to_string(), "training.per_gpu_batch_size=8".to_string(),
                  "training.per_gpu_batch_size=16".to_string(), "training.mixed_precision=bf16".to_string()];
        let cfg = Config::from_yaml_str(text, &ov).unwrap();
        assert_eq!(cfg.lr_scheduler.params.learning_rate, 2e-4);
        assert_eq!(cfg.training.per_gpu_batch_size, 16);
        assert_eq!(cfg.training.mixed_precision, MixedPrecision::Bf16);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_nearest_valid_one() {
        let err = Config::from_yaml_str("", &["training.no_such_key=1".into()]).unwrap_err().to_string();
        assert!(err.contains("`training.no_such_key`") && err.contains("did you mean `training."), "{err}");
        let err = Config::from_yaml_str("training:\n  per_gpu_batchsize: 4\n", &[]).unwrap_err().to_string();
        assert!(err.contains("`training.per_gpu_batchsize`") && err.contains("`training.per_gpu_batch_size`"), "{err}");
        let err = Config::from_yaml_str("", &["modle.vq_model.token_size=4".into()]).unwrap_err().to_string();
        assert!(err.contains("did you mean `model`"), "{err}");
        let err = Config::from_yaml_str("", &["training.seed".into()]).unwrap_err().to_string();
        assert!(err.contains("key.path=value"), "{err}");
    }
}
