//! Everything the FID-family metrics need from one image set, accumulated batch by batch:
//! pool3 and spatial statistics (float64, streamed), Inception Score moments, and the pool3
//! features themselves (float32) for precision/recall, which needs all points.

use super::inception_score::{ADM_SPLIT_SIZE, InceptionScore};
use super::stats::RunningStats;
use crate::inception::{FidInception, InputPipeline};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

pub struct FeatureSet {
    pub pool3: RunningStats,
    pub spatial: RunningStats,
    pub inception_score: InceptionScore,
    /// `[B, 2048]` float32 CPU batches, in input order.
    pool3_batches: Vec<Tensor>,
}

impl Default for FeatureSet {
    fn default() -> Self {
        FeatureSet {
            pool3: RunningStats::new(2048),
            spatial: RunningStats::new(2023),
            inception_score: InceptionScore::new(1008, ADM_SPLIT_SIZE),
            pool3_batches: Vec::new(),
        }
    }
}

impl FeatureSet {
    /// Runs `net` on uint8 NHWC images `[B, H, W, 3]` and accumulates the results.
    pub fn add_images(&mut self, net: &FidInception, images_u8_nhwc: &Tensor, pipeline: InputPipeline) -> Result<()> {
        let out = net.features(images_u8_nhwc, pipeline);
        self.pool3.update(&out.pool3)?;
        self.spatial.update(&out.spatial)?;
        // Softmax over all 1008 outputs in the network's dtype (float32 as ADM, or float64).
        self.inception_score.update(&out.logits_unbiased.softmax(1, out.logits_unbiased.kind()))?;
        self.pool3_batches.push(out.pool3.to_device(Device::Cpu).to_kind(Kind::Float));
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.pool3.count()
    }

    /// `[N, 2048]` float32 pool3 features of everything added so far.
    pub fn pool3_features(&self) -> Tensor {
        Tensor::cat(&self.pool3_batches, 0)
    }
}
