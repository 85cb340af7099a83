//! The loader's view of a webdataset sample: its image and class members, read by the one
//! streaming tar reader (`wds::read_samples_filtered`; one sample in memory at a time).

use crate::wds::read_samples_filtered;
use anyhow::Result;
use std::path::Path;

/// The members of one sample that the loader uses.
#[derive(Clone, Debug, Default)]
pub struct TarSample {
    pub key: String,
    /// The first of `jpg`, `jpeg`, `png`, `webp` (webdataset's image extensions).
    pub image: Option<Vec<u8>>,
    /// `cls`: the class index as ASCII.
    pub cls: Option<Vec<u8>>,
}

const IMAGE_EXTS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Calls `f` for every sample of the shard, in file order, with the members training uses (the
/// first image member and `cls`); other members are skipped unread.
pub fn for_each_sample(path: &Path, mut f: impl FnMut(TarSample) -> Result<()>) -> Result<()> {
    let wanted = |ext: &str| {
        let ext = ext.to_ascii_lowercase();
        ext == "cls" || IMAGE_EXTS.contains(&ext.as_str())
    };
    read_samples_filtered(path, wanted, |sample| {
        let mut out = TarSample { key: sample.key, ..Default::default() };
        for (ext, data) in sample.members {
            let ext = ext.to_ascii_lowercase();
            if ext == "cls" {
                out.cls = Some(data);
            } else if out.image.is_none() {
                out.image = Some(data);
            }
        }
        f(out)
    })
}
