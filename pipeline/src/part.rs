//! `--part K/N`: one of N processes (machines) splitting a job over its items, item i going to
//! part `i mod N + 1`. The same type serves every command that splits (`shard`, `proxy-codes`)
//! and is stored in partial shard manifests as `{"index": K, "of": N}`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Part `index` (1-based) of `of`; `1 ≤ index ≤ of` always holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PartFields")]
pub struct Part {
    index: usize,
    of: usize,
}

/// The stored form, checked on the way in so a hand-edited manifest cannot hold part 0/0.
#[derive(Deserialize)]
struct PartFields {
    index: usize,
    of: usize,
}

impl TryFrom<PartFields> for Part {
    type Error = PartError;

    fn try_from(f: PartFields) -> Result<Part, PartError> {
        Part::new(f.index, f.of)
    }
}

/// Why a `--part` value was refused; the message names the flag with values that work. It
/// does not repeat the value: clap's `invalid value '0/2' for '--part <K/N>'` already does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PartError(String);

impl Part {
    pub fn new(index: usize, of: usize) -> Result<Part, PartError> {
        if of == 0 {
            return Err(PartError("N, the number of parts, must be at least 1 (--part 1/1 is the whole job)".into()));
        }
        if index == 0 || index > of {
            return Err(PartError(format!("part {index}/{of}: K counts from 1 to N, use --part 1/{of} … --part {of}/{of}")));
        }
        Ok(Part { index, of })
    }

    /// 1-based.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn of(&self) -> usize {
        self.of
    }

    /// Whether item `i` (0-based: shard number, …) belongs to this part.
    pub fn contains(&self, i: usize) -> bool {
        i % self.of == self.index - 1
    }
}

impl FromStr for Part {
    type Err = PartError;

    fn from_str(s: &str) -> Result<Part, PartError> {
        let numbers = s.split_once('/').and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)));
        let Some((index, of)) = numbers else {
            return Err(PartError(format!("{s:?} is not K/N: use whole numbers, e.g. --part 2/4 for the second of four parts")));
        };
        Part::new(index, of)
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_parse_and_split_items_round_robin() {
        let p: Part = "2/3".parse().unwrap();
        assert_eq!((p.index(), p.of(), p.to_string()), (2, 3, "2/3".to_string()));
        assert_eq!((0..7).filter(|&i| p.contains(i)).collect::<Vec<_>>(), [1, 4]);
        assert!("1/1".parse::<Part>().unwrap().contains(5));
    }

    #[test]
    fn bad_parts_are_refused_with_the_flag_and_a_fix() {
        let err = |s: &str| s.parse::<Part>().unwrap_err().to_string();
        assert_eq!(err("0/2"), "part 0/2: K counts from 1 to N, use --part 1/2 … --part 2/2");
        assert_eq!(err("3/2"), "part 3/2: K counts from 1 to N, use --part 1/2 … --part 2/2");
        assert!(err("1/0").contains("at least 1 (--part 1/1"), "{}", err("1/0"));
        for bad in ["a/b", "2", "-1/2", ""] {
            assert!(err(bad).starts_with(&format!("{bad:?} is not K/N")) && err(bad).contains("--part 2/4"), "{}", err(bad));
        }
    }

    #[test]
    fn stored_parts_keep_their_json_form_and_are_checked() {
        let p = Part::new(1, 4).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"index":1,"of":4}"#);
        assert_eq!(serde_json::from_str::<Part>(r#"{"index":1,"of":4}"#).unwrap(), p);
        assert!(serde_json::from_str::<Part>(r#"{"index":0,"of":0}"#).is_err());
    }
}
