//! Where the shards are: a shard directory, a `manifest.json` (from `sftok-prep shard`), a single
//! `.tar`, or a brace pattern (`dir/train-{000000..001281}.tar`), in any mix.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};

/// One input shard. `name` (the file name) is what proxy-code files are matched by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub path: PathBuf,
    pub name: String,
}

impl Shard {
    fn new(path: PathBuf) -> Shard {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        Shard { path, name }
    }
}

/// Resolves every source to its shards, in the order given (a directory: sorted by name).
pub fn resolve(sources: &[String]) -> Result<Vec<Shard>> {
    let mut shards = Vec::new();
    for src in sources {
        let found = resolve_one(src)?;
        if found.is_empty() {
            bail!("{src}: no shards found (expected a directory of *.tar, a manifest.json, a .tar or a brace pattern)");
        }
        shards.extend(found);
    }
    if shards.is_empty() {
        bail!("no shard sources given");
    }
    Ok(shards)
}

fn resolve_one(src: &str) -> Result<Vec<Shard>> {
    if src.contains('{') {
        let shards: Vec<Shard> = expand_braces(src)?.into_iter().map(|p| Shard::new(PathBuf::from(p))).collect();
        if let Some(missing) = shards.iter().find(|s| !s.path.is_file()) {
            bail!("{src}: shard {} does not exist", missing.path.display());
        }
        return Ok(shards);
    }
    let path = Path::new(src);
    if path.is_dir() {
        let manifest = path.join("manifest.json");
        if manifest.is_file() {
            return from_manifest(&manifest);
        }
        let mut tars: Vec<PathBuf> = fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        tars.sort();
        return Ok(tars.into_iter().map(Shard::new).collect());
    }
    if path.extension().is_some_and(|x| x == "json") {
        return from_manifest(path);
    }
    if path.is_file() {
        return Ok(vec![Shard::new(path.to_path_buf())]);
    }
    bail!("{src}: no such file or directory")
}

/// Reads only `shards[].name` (relative to the manifest's directory), so manifests with more
/// fields, or a newer layout that keeps these, still load.
fn from_manifest(path: &Path) -> Result<Vec<Shard>> {
    let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    let list = doc.get("shards").and_then(|s| s.as_array()).with_context(|| format!("{}: no `shards` list — not a shard manifest?", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    list.iter()
        .map(|s| {
            let name = s.get("name").and_then(|n| n.as_str()).with_context(|| format!("{}: a shard entry without `name`", path.display()))?;
            let shard = Shard::new(dir.join(name));
            if !shard.path.is_file() {
                bail!("{}: lists {name}, but {} is missing (copy it or re-run sftok-prep shard)", path.display(), shard.path.display());
            }
            Ok(shard)
        })
        .collect()
}

/// Expands `{a..b}` numeric ranges (zero padding kept from `a`) and `{x,y,z}` lists, like
/// webdataset's brace expansion.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let Some(open) = pattern.find('{') else { return Ok(vec![pattern.to_string()]) };
    let close = pattern[open..].find('}').map(|i| open + i).with_context(|| format!("{pattern}: unclosed `{{`"))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let items: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (lo, hi): (u64, u64) = (
            a.parse().with_context(|| format!("{pattern}: `{a}` is not a number"))?,
            b.parse().with_context(|| format!("{pattern}: `{b}` is not a number"))?,
        );
        if lo > hi {
            bail!("{pattern}: range {lo}..{hi} is empty");
        }
        (lo..=hi).map(|i| format!("{i:0width$}", width = a.len())).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let mut out = Vec::new();
    for rest in expand_braces(tail)? {
        for item in &items {
            out.push(format!("{head}{item}{rest}"));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_ranges_with_padding_and_lists() {
        assert_eq!(expand_braces("d/t-{000008..000010}.tar").unwrap(), ["d/t-000008.tar", "d/t-000009.tar", "d/t-000010.tar"]);
        assert_eq!(expand_braces("{a,b}-{1..2}").unwrap(), ["a-1", "a-2", "b-1", "b-2"]);
        assert!(expand_braces("x-{3..1}").is_err());
        assert!(expand_braces("x-{1..2").is_err());
    }

    #[test]
    fn manifest_names_resolve_next_to_it_and_extra_fields_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("train-000000.tar"), b"").unwrap();
        fs::write(dir.path().join("train-000001.tar"), b"").unwrap();
        let m = r#"{"format":"sftok-shards/1","shards":[{"name":"train-000001.tar","count":3,"x":1},{"name":"train-000000.tar"}]}"#;
        fs::write(dir.path().join("manifest.json"), m).unwrap();
        let names: Vec<String> = resolve(&[dir.path().display().to_string()]).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["train-000001.tar", "train-000000.tar"]);
        fs::write(dir.path().join("manifest.json"), r#"{"shards":[{"name":"gone.tar"}]}"#).unwrap();
        let err = format!("{:#}", resolve(&[dir.path().display().to_string()]).unwrap_err());
        assert!(err.contains("gone.tar"), "{err}");
    }
}
